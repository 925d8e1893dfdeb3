"""``edgefleet``: the operator CLI over the controller's HTTP API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Operate an edgefleet controller.", no_args_is_help=True)
models_app = typer.Typer(help="Model registry.", no_args_is_help=True)
devices_app = typer.Typer(help="Devices and their assignments.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(devices_app, name="devices")
console = Console()

UrlOpt = Annotated[str, typer.Option(envvar="EDGEFLEET_URL", help="controller base URL")]
TokenOpt = Annotated[str, typer.Option(envvar="EDGEFLEET_TOKEN", help="API token")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print raw JSON")]


def _client(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _call(url: str, token: str, method: str, path: str, **kw: Any) -> Any:
    try:
        with _client(url, token) as c:
            r = c.request(method, path, **kw)
    except httpx.HTTPError as exc:
        console.print(f"[red]cannot reach controller at {url}: {exc}[/red]")
        raise typer.Exit(3) from None
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        console.print(f"[red]error {r.status_code}: {detail}[/red]")
        raise typer.Exit(1)
    return r.json()


@models_app.command("push")
def models_push(bundle: Path, url: UrlOpt = "http://127.0.0.1:8000", token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    """Upload a model bundle to the registry."""
    mv = _call(url, token, "POST", "/v1/models", content=bundle.read_bytes(), headers={"Content-Type": "application/x-tar"})
    console.print_json(json.dumps(mv)) if as_json else console.print(
        f"registered {mv['name']} v{mv['version']} ({mv['sha256'][:12]})"
    )


@models_app.command("list")
def models_list(url: UrlOpt = "http://127.0.0.1:8000", token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    rows = _call(url, token, "GET", "/v1/models")
    if as_json:
        console.print_json(json.dumps(rows))
        return
    t = Table("name", "version", "label", "runtime", "sha256", "bytes")
    for r in rows:
        t.add_row(r["name"], str(r["version"]), r["label"], r["runtime"], r["sha256"][:12], str(r["length"]))
    console.print(t)


@devices_app.command("add")
def devices_add(device_id: str, arch: str = "", url: UrlOpt = "http://127.0.0.1:8000", token: TokenOpt = "") -> None:
    """Register a device."""
    _call(url, token, "POST", "/v1/devices", json={"id": device_id, "arch": arch})
    console.print(f"registered device {device_id}")


@devices_app.command("list")
def devices_list(url: UrlOpt = "http://127.0.0.1:8000", token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    rows = _call(url, token, "GET", "/v1/devices")
    if as_json:
        console.print_json(json.dumps(rows))
        return
    t = Table("device", "online", "desired (production)", "actual (production)", "last seen")
    for r in rows:
        d, a = r["desired"].get("production"), r["actual"].get("production")
        t.add_row(
            r["id"],
            "yes" if r["online"] else "no",
            f"{d['model']} v{d['version']}" if d else "-",
            f"{a['model']} v{a['version']}" if a else "-",
            str(r["last_seen"] or "-"),
        )
    console.print(t)


@devices_app.command("assign")
def devices_assign(
    device_id: str,
    model: str,
    version: int,
    role: str = "production",
    url: UrlOpt = "http://127.0.0.1:8000",
    token: TokenOpt = "",
) -> None:
    """Assign MODEL VERSION to a device (signed desired state)."""
    _call(url, token, "PUT", f"/v1/devices/{device_id}/desired", json={"model": model, "version": version, "role": role})
    console.print(f"assigned {model} v{version} to {device_id} ({role})")


def main() -> None:
    app()
