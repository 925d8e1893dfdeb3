"""What every CLI command shares: options, the HTTP call, output and errors."""

from __future__ import annotations

import json
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

console = Console()

DEFAULT_URL = "http://127.0.0.1:8000"
UrlOpt = Annotated[str, typer.Option(envvar="EDGEFLEET_URL", help="controller base URL")]
TokenOpt = Annotated[str, typer.Option(envvar="EDGEFLEET_TOKEN", help="API token", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="print raw JSON")]
ReasonOpt = Annotated[str, typer.Option("--reason", "-r", help="why (recorded in the audit log)")]


def client(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120)


def call(url: str, token: str, method: str, path: str, **kw: Any) -> Any:
    try:
        with client(url, token) as c:
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
    return r.json() if r.content else None


def out(data: Any, as_json: bool, table: Table | None = None, text: str = "") -> None:
    if as_json:
        console.print_json(json.dumps(data))
    elif table is not None:
        console.print(table)
    else:
        console.print(text)
