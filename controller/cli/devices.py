"""``edgefleet devices ...``: devices: enrol, inventory, assignments, history."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from controller.cli.common import DEFAULT_URL, JsonOpt, ReasonOpt, TokenOpt, UrlOpt, call, console, out

app = typer.Typer(help="Devices: enrol, inventory, assignments, history.", no_args_is_help=True)


@app.command("add")
def devices_add(
    device_id: str,
    arch: str = "",
    hardware_class: str = "",
    region: str = "",
    tag: Annotated[list[str] | None, typer.Option(help="repeatable")] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
) -> None:
    """Enrol a device."""
    body = {"id": device_id, "arch": arch, "hardware_class": hardware_class, "region": region, "tags": tag or []}
    call(url, token, "POST", "/v1/devices", json=body)
    console.print(f"enrolled device {device_id}")


@app.command("update")
def devices_update(
    device_id: str,
    hardware_class: str | None = None,
    region: str | None = None,
    tag: Annotated[list[str] | None, typer.Option(help="repeatable; replaces the tags")] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
) -> None:
    body = {"hardware_class": hardware_class, "region": region, "tags": tag}
    call(url, token, "PATCH", f"/v1/devices/{device_id}", json={k: v for k, v in body.items() if v is not None})
    console.print(f"updated device {device_id}")


@app.command("list")
def devices_list(url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    rows = call(url, token, "GET", "/v1/devices")
    t = Table("device", "class", "region", "online", "agent", "desired (production)", "actual (production)", "last seen")
    for r in rows:
        d, a = r["desired"].get("production"), r["actual"].get("production")
        t.add_row(
            r["id"],
            r["hardware_class"] or "-",
            r["region"] or "-",
            "yes" if r["online"] else "no",
            r["agent_version"] or "-",
            f"{d['model']} v{d['version']}" if d else "-",
            f"{a['model']} v{a['version']}" if a else "-",
            str(r["last_seen"] or "-"),
        )
    out(rows, as_json, t)


@app.command("assign")
def devices_assign(
    device_id: str,
    model: str,
    version: int,
    role: str = "production",
    reason: ReasonOpt = "",
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
) -> None:
    """Assign MODEL VERSION to a device (signed desired state)."""
    body = {"model": model, "version": version, "role": role, "reason": reason}
    call(url, token, "PUT", f"/v1/devices/{device_id}/desired", json=body)
    console.print(f"assigned {model} v{version} to {device_id} ({role})")


@app.command("history")
def devices_history(device_id: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    """What the device reported running, change by change."""
    rows = call(url, token, "GET", f"/v1/devices/{device_id}/history")
    t = Table("at", "role", "model", "version", "reason")
    for r in rows:
        t.add_row(r["at"], r["role"], r["model"] or "-", str(r["version"] or "-"), r["reason"])
    out(rows, as_json, t)
