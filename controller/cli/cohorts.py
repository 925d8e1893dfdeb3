"""``edgefleet cohorts ...``: cohorts: static lists and dynamic filters."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from controller.cli.common import DEFAULT_URL, JsonOpt, ReasonOpt, TokenOpt, UrlOpt, call, call_pages, out, resolve_version

app = typer.Typer(help="Cohorts: static lists and dynamic filters.", no_args_is_help=True)


@app.command("create")
def cohorts_create(
    name: str,
    member: Annotated[list[str] | None, typer.Option(help="static member (repeatable)")] = None,
    hardware_class: Annotated[list[str] | None, typer.Option(help="dynamic: any of (repeatable)")] = None,
    region: Annotated[list[str] | None, typer.Option(help="dynamic: any of (repeatable)")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="dynamic: all of (repeatable)")] = None,
    agent_version: Annotated[str, typer.Option(help="dynamic: e.g. '>=0.2.0'")] = "",
    description: str = "",
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Create a cohort: static members, or a dynamic filter (hardware class, region, tags, agent version)."""
    flt = {"hardware_class": hardware_class or [], "region": region or [], "tags": tag or [], "agent_version": agent_version}
    dynamic = any(flt.values())
    body = {"name": name, "description": description, "members": member or [], "filter": flt if dynamic else None}
    c = call(url, token, "POST", "/v1/cohorts", json=body)
    out(c, as_json, text=f"created cohort {name} ({c['size']} devices now)")


@app.command("list")
def cohorts_list(url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    rows = call_pages(url, token, "/v1/cohorts")
    t = Table("cohort", "size", "static members", "filter")
    for r in rows:
        t.add_row(r["name"], str(r["size"]), str(len(r["members"])), json.dumps({k: v for k, v in r["filter"].items() if v}))
    out(rows, as_json, t)


@app.command("members")
def cohorts_members(name: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    ids = call_pages(url, token, f"/v1/cohorts/{name}/members")
    out(ids, as_json, text="\n".join(ids))


@app.command("delete")
def cohorts_delete(name: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    r = call(url, token, "DELETE", f"/v1/cohorts/{name}")
    out(r if r is not None else {"deleted": name}, as_json, text=f"deleted cohort {name}")


@app.command("assign")
def cohorts_assign(
    name: str,
    model: str,
    version: Annotated[str, typer.Argument(help="a version number or an alias (production, candidate, ...)")],
    role: str = "production",
    reason: ReasonOpt = "",
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Assign MODEL VERSION to every current member of cohort NAME."""
    v = resolve_version(url, token, model, version)
    ids = call(
        url,
        token,
        "PUT",
        f"/v1/cohorts/{name}/desired",
        json={"model": model, "version": v, "role": role, "reason": reason},
    )
    out(ids, as_json, text=f"assigned {model} v{v} ({role}) to {len(ids)} devices of {name}")
