"""``edgefleet devices ...``: devices: enrol, inventory, assignments, history."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from controller.cli.common import DEFAULT_URL, JsonOpt, ReasonOpt, TokenOpt, UrlOpt, call, call_pages, out, resolve_version

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
    as_json: JsonOpt = False,
) -> None:
    """Enrol a device."""
    body = {"id": device_id, "arch": arch, "hardware_class": hardware_class, "region": region, "tags": tag or []}
    d = call(url, token, "POST", "/v1/devices", json=body)
    out(d, as_json, text=f"enrolled device {device_id}")


@app.command("update")
def devices_update(
    device_id: str,
    hardware_class: str | None = None,
    region: str | None = None,
    tag: Annotated[list[str] | None, typer.Option(help="repeatable; replaces the tags")] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Change a device's inventory fields (used by cohort filters)."""
    body = {"hardware_class": hardware_class, "region": region, "tags": tag}
    d = call(url, token, "PATCH", f"/v1/devices/{device_id}", json={k: v for k, v in body.items() if v is not None})
    out(d, as_json, text=f"updated device {device_id}")


@app.command("list")
def devices_list(
    region: str | None = None,
    hardware_class: str | None = None,
    online: Annotated[bool | None, typer.Option("--online/--offline", help="only online (or offline) devices")] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Every device (paged through), what it should run, what it runs, and why not when they differ."""
    params = {k: v for k, v in (("region", region), ("hardware_class", hardware_class), ("online", online)) if v is not None}
    rows = call_pages(url, token, "/v1/devices", params)
    t = Table("device", "class", "region", "online", "agent", "desired (production)", "actual (production)", "why", "last seen")
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
            r.get("why") or "",
            str(r["last_seen"] or "-"),
        )
    out(rows, as_json, t)


@app.command("assign")
def devices_assign(
    device_id: str,
    model: str,
    version: Annotated[str, typer.Argument(help="a version number or an alias (production, candidate, ...)")],
    role: str = "production",
    reason: ReasonOpt = "",
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Assign MODEL VERSION to a device (signed desired state)."""
    v = resolve_version(url, token, model, version)
    body = {"model": model, "version": v, "role": role, "reason": reason}
    d = call(url, token, "PUT", f"/v1/devices/{device_id}/desired", json=body)
    out(d, as_json, text=f"assigned {model} v{v} to {device_id} ({role})")


@app.command("history")
def devices_history(device_id: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    """What the device reported running, change by change."""
    rows = call_pages(url, token, f"/v1/devices/{device_id}/history")
    t = Table("at", "role", "model", "version", "reason")
    for r in rows:
        t.add_row(r["at"], r["role"], r["model"] or "-", str(r["version"] or "-"), r["reason"])
    out(rows, as_json, t)


@app.command("events")
def devices_events(
    device_id: str,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="newest N events")] = 50,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """What the device reported: OTA transitions, rollbacks and rejections with their reasons, newest first."""
    rows = call(url, token, "GET", f"/v1/devices/{device_id}/events", params={"limit": limit})
    t = Table("received", "seq", "kind", "severity", "message")
    for r in rows:
        t.add_row(str(r["received_at"]), str(r["seq"]), r["kind"], r["severity"], r["message"])
    out(rows, as_json, t)
