"""``edgefleet``: the operator CLI over the controller's HTTP API.

Every command takes ``--url`` and ``--token`` (or ``EDGEFLEET_URL`` /
``EDGEFLEET_TOKEN``) and ``--json`` for machine-readable output. Exit codes:
0 ok, 1 the controller refused (the message says why), 2 usage, 3 controller
unreachable, 4 ``audit verify`` found the chain broken.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Operate an edgefleet controller.", no_args_is_help=True)
models_app = typer.Typer(help="Model registry: push, approve, alias, revoke, lineage.", no_args_is_help=True)
devices_app = typer.Typer(help="Devices: enrol, inventory, assignments, history.", no_args_is_help=True)
cohorts_app = typer.Typer(help="Cohorts: static lists and dynamic filters.", no_args_is_help=True)
audit_app = typer.Typer(help="Audit log: entries, verification, what ran where.", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens (admin).", no_args_is_help=True)
for sub, name in (
    (models_app, "models"),
    (devices_app, "devices"),
    (cohorts_app, "cohorts"),
    (audit_app, "audit"),
    (tokens_app, "tokens"),
):
    app.add_typer(sub, name=name)
console = Console()

DEFAULT_URL = "http://127.0.0.1:8000"
UrlOpt = Annotated[str, typer.Option(envvar="EDGEFLEET_URL", help="controller base URL")]
TokenOpt = Annotated[str, typer.Option(envvar="EDGEFLEET_TOKEN", help="API token", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="print raw JSON")]
ReasonOpt = Annotated[str, typer.Option("--reason", "-r", help="why (recorded in the audit log)")]


def _client(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120)


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
    return r.json() if r.content else None


def _out(data: Any, as_json: bool, table: Table | None = None, text: str = "") -> None:
    if as_json:
        console.print_json(json.dumps(data))
    elif table is not None:
        console.print(table)
    else:
        console.print(text)


# --- models ---------------------------------------------------------------------


@models_app.command("push")
def models_push(bundle: Path, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    """Upload a model bundle (refused unless its golden vectors reproduce on the controller)."""
    mv = _call(url, token, "POST", "/v1/models", content=bundle.read_bytes(), headers={"Content-Type": "application/x-tar"})
    _out(mv, as_json, text=f"registered {mv['name']} v{mv['version']} ({mv['sha256'][:12]})")


@models_app.command("list")
def models_list(url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    rows = _call(url, token, "GET", "/v1/models")
    t = Table("name", "version", "label", "runtime", "sha256", "approved by", "revoked")
    for r in rows:
        t.add_row(
            r["name"],
            str(r["version"]),
            r["label"],
            r["runtime"],
            r["sha256"][:12],
            r["approved_by"] or "-",
            "yes" if r["revoked"] else "",
        )
    _out(rows, as_json, t)


@models_app.command("show")
def models_show(name: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    """Versions, aliases and the version floor of a model."""
    m = _call(url, token, "GET", f"/v1/models/{name}")
    aliases = ", ".join(f"{k}=v{v}" for k, v in sorted(m["aliases"].items())) or "-"
    _out(m, as_json, text=f"{m['name']}: latest v{m['latest']}, floor v{m['floor']}, aliases {aliases}")


@models_app.command("lineage")
def models_lineage(name: str, version: int, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    rows = _call(url, token, "GET", f"/v1/models/{name}/versions/{version}/lineage")
    t = Table("version", "parent", "dataset", "code", "metrics", "registered by", "approved by")
    for r in rows:
        lin = r["lineage"]
        t.add_row(
            str(r["version"]),
            str(r["parent_version"] or "-"),
            str(lin.get("dataset_sha256", "-"))[:12],
            str(lin.get("code_version", "-")),
            json.dumps(lin.get("metrics", {})),
            r["registered_by"],
            r["approved_by"] or "-",
        )
    _out(rows, as_json, t)


@models_app.command("approve")
def models_approve(name: str, version: int, reason: ReasonOpt, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "") -> None:
    """Approve a version for use beyond canary (approver role; not the one who registered it)."""
    _call(url, token, "POST", "/v1/approvals", json={"model": name, "version": version, "reason": reason})
    console.print(f"approved {name} v{version}")


@models_app.command("pending")
def models_pending(url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    """Versions waiting for approval."""
    rows = _call(url, token, "GET", "/v1/approvals")
    t = Table("name", "version", "registered by", "created")
    for r in rows:
        t.add_row(r["name"], str(r["version"]), r["registered_by"], r["created_at"])
    _out(rows, as_json, t)


@models_app.command("alias")
def models_alias(
    name: str, alias: str, version: int, reason: ReasonOpt = "", url: UrlOpt = DEFAULT_URL, token: TokenOpt = ""
) -> None:
    """Point ALIAS (production, candidate, ...) at VERSION."""
    _call(url, token, "PUT", f"/v1/models/{name}/aliases/{alias}", json={"version": version, "reason": reason})
    console.print(f"{name}@{alias} -> v{version}")


@models_app.command("revoke")
def models_revoke(name: str, version: int, reason: ReasonOpt, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "") -> None:
    """Revoke a version; the version floor rises above it."""
    m = _call(url, token, "POST", f"/v1/models/{name}/versions/{version}/revoke", json={"reason": reason})
    console.print(f"revoked {name} v{version}; floor is now v{m['floor']}")


# --- devices --------------------------------------------------------------------


@devices_app.command("add")
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
    _call(url, token, "POST", "/v1/devices", json=body)
    console.print(f"enrolled device {device_id}")


@devices_app.command("update")
def devices_update(
    device_id: str,
    hardware_class: str | None = None,
    region: str | None = None,
    tag: Annotated[list[str] | None, typer.Option(help="repeatable; replaces the tags")] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
) -> None:
    body = {"hardware_class": hardware_class, "region": region, "tags": tag}
    _call(url, token, "PATCH", f"/v1/devices/{device_id}", json={k: v for k, v in body.items() if v is not None})
    console.print(f"updated device {device_id}")


@devices_app.command("list")
def devices_list(url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    rows = _call(url, token, "GET", "/v1/devices")
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
    _out(rows, as_json, t)


@devices_app.command("assign")
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
    _call(url, token, "PUT", f"/v1/devices/{device_id}/desired", json=body)
    console.print(f"assigned {model} v{version} to {device_id} ({role})")


@devices_app.command("history")
def devices_history(device_id: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    """What the device reported running, change by change."""
    rows = _call(url, token, "GET", f"/v1/devices/{device_id}/history")
    t = Table("at", "role", "model", "version", "reason")
    for r in rows:
        t.add_row(r["at"], r["role"], r["model"] or "-", str(r["version"] or "-"), r["reason"])
    _out(rows, as_json, t)


# --- cohorts --------------------------------------------------------------------


@cohorts_app.command("create")
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
) -> None:
    flt = {"hardware_class": hardware_class or [], "region": region or [], "tags": tag or [], "agent_version": agent_version}
    dynamic = any(flt.values())
    body = {"name": name, "description": description, "members": member or [], "filter": flt if dynamic else None}
    c = _call(url, token, "POST", "/v1/cohorts", json=body)
    console.print(f"created cohort {name} ({c['size']} devices now)")


@cohorts_app.command("list")
def cohorts_list(url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    rows = _call(url, token, "GET", "/v1/cohorts")
    t = Table("cohort", "size", "static members", "filter")
    for r in rows:
        t.add_row(r["name"], str(r["size"]), str(len(r["members"])), json.dumps({k: v for k, v in r["filter"].items() if v}))
    _out(rows, as_json, t)


@cohorts_app.command("members")
def cohorts_members(name: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    ids = _call(url, token, "GET", f"/v1/cohorts/{name}/members")
    _out(ids, as_json, text="\n".join(ids))


@cohorts_app.command("delete")
def cohorts_delete(name: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "") -> None:
    _call(url, token, "DELETE", f"/v1/cohorts/{name}")
    console.print(f"deleted cohort {name}")


@cohorts_app.command("assign")
def cohorts_assign(
    name: str,
    model: str,
    version: int,
    role: str = "production",
    reason: ReasonOpt = "",
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
) -> None:
    """Assign MODEL VERSION to every current member of cohort NAME."""
    ids = _call(
        url,
        token,
        "PUT",
        f"/v1/cohorts/{name}/desired",
        json={"model": model, "version": version, "role": role, "reason": reason},
    )
    console.print(f"assigned {model} v{version} ({role}) to {len(ids)} devices of {name}")


# --- audit ------------------------------------------------------------------------


@audit_app.command("log")
def audit_log(
    subject: Annotated[str | None, typer.Option(help="e.g. device:pi-1, model:digits:3, cohort:eu")] = None,
    action: str | None = None,
    after: int = 0,
    limit: int = 100,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    params: dict[str, Any] = {"after": after, "limit": limit}
    params.update({k: v for k, v in (("subject", subject), ("action", action)) if v is not None})
    rows = _call(url, token, "GET", "/v1/audit", params=params)
    t = Table("seq", "at", "actor", "action", "subject", "reason")
    for r in rows:
        t.add_row(str(r["seq"]), r["at"], r["actor"], r["action"], r["subject"], r["reason"])
    _out(rows, as_json, t)


@audit_app.command("verify")
def audit_verify(
    expect_head: Annotated[
        str | None, typer.Option(help="a head hash noted earlier: fail if the chain no longer contains it as entry --expect-seq")
    ] = None,
    expect_seq: Annotated[int | None, typer.Option(help="the entry number of --expect-head")] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Recompute the audit hash chain; exit 4 if any entry was edited or deleted."""
    v = _call(url, token, "GET", "/v1/audit/verify")
    problems = list(v["problems"])
    if expect_head is not None:
        seq = expect_seq or v["head_seq"]
        rows = _call(url, token, "GET", "/v1/audit", params={"after": max(seq - 1, 0), "limit": 1})
        if not rows or rows[0]["seq"] != seq or rows[0]["hash"] != expect_head:
            problems.append(f"entry {seq} does not have the expected hash {expect_head[:16]}… (chain rewritten?)")
    if as_json:
        console.print_json(json.dumps({**v, "ok": not problems, "problems": problems}))
    elif problems:
        console.print(f"[red]audit chain BROKEN ({v['entries']} entries):[/red]")
        for p in problems:
            console.print(f"  - {p}")
    else:
        console.print(f"audit chain ok: {v['entries']} entries, head {v['head_seq']} {v['head_hash']}")
    if problems:
        raise typer.Exit(4)


@audit_app.command("state")
def audit_state(
    device: Annotated[str | None, typer.Option(help="device id")] = None,
    cohort: Annotated[str | None, typer.Option(help="cohort name")] = None,
    at: Annotated[str | None, typer.Option(help="ISO 8601 time (default: now)")] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """What ran on a device or cohort at a time, since when, and who decided it."""
    when = at or datetime.now(timezone.utc).isoformat()
    params = {k: v for k, v in (("device", device), ("cohort", cohort), ("at", when)) if v is not None}
    s = _call(url, token, "GET", "/v1/audit/state", params=params)
    t = Table("device", "role", "running", "since", "desired", "decided by", "why", "audit #")
    for r in s["devices"]:
        t.add_row(
            r["device_id"],
            r["role"],
            f"{r['model']} v{r['version']}" if r["model"] else "-",
            r["running_since"] or "-",
            f"{r['desired_model']} v{r['desired_version']}" if r["desired_model"] else "-",
            r["decided_by"] or "-",
            r["decision_reason"] or "",
            str(r["decision_audit_seq"] or "-"),
        )
    _out(s, as_json, t)


# --- tokens -----------------------------------------------------------------------


@tokens_app.command("create")
def tokens_create(
    principal: str,
    role: Annotated[str, typer.Option(help="viewer | operator | approver | admin")],
    label: str = "",
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Create an API token; the secret is printed once and stored only as a hash."""
    r = _call(url, token, "POST", "/v1/tokens", json={"principal": principal, "role": role, "label": label})
    _out(r, as_json, text=f"token {r['id']} for {principal} ({role}): {r['token']}\nstore it now; it cannot be shown again")


@tokens_app.command("list")
def tokens_list(url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    rows = _call(url, token, "GET", "/v1/tokens")
    t = Table("id", "principal", "role", "label", "created by", "revoked")
    for r in rows:
        t.add_row(str(r["id"]), r["principal"], r["role"], r["label"], r["created_by"], r["revoked_at"] or "")
    _out(rows, as_json, t)


@tokens_app.command("revoke")
def tokens_revoke(token_id: int, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "") -> None:
    _call(url, token, "DELETE", f"/v1/tokens/{token_id}")
    console.print(f"revoked token {token_id}")


@app.command("whoami")
def whoami(url: UrlOpt = DEFAULT_URL, token: TokenOpt = "") -> None:
    me = _call(url, token, "GET", "/v1/whoami")
    console.print(f"{me['principal']} ({me['role']})")


@app.command("telemetry")
def telemetry(
    model: str,
    version: int | None = None,
    role: str | None = None,
    cohort: str = "*",
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Aggregated telemetry windows for a model (fleet-wide or per cohort)."""
    params: dict[str, Any] = {"model": model, "cohort": cohort}
    params.update({k: v for k, v in (("version", version), ("role", role)) if v is not None})
    rows = _call(url, token, "GET", "/v1/telemetry", params=params)
    t = Table("window", "version", "role", "devices·windows", "inferences", "errors", "p50 ms", "p95 ms", "p99 ms")
    for r in rows:
        t.add_row(
            datetime.fromtimestamp(r["window_start"], timezone.utc).isoformat(),
            str(r["version"]),
            r["role"],
            str(r["windows"]),
            str(r["count"]),
            str(r["errors"]),
            *(f"{r[k]:.3g}" if r[k] is not None else "-" for k in ("p50_ms", "p95_ms", "p99_ms")),
        )
    _out(rows, as_json, t)


def main() -> None:
    app()
