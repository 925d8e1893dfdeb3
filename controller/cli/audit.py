"""``edgefleet audit ...``: audit log: entries, verification, what ran where."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

import typer
from rich.table import Table

from controller.cli.common import DEFAULT_URL, JsonOpt, TokenOpt, UrlOpt, call, out, say

app = typer.Typer(help="Audit log: entries, verification, what ran where.", no_args_is_help=True)


@app.command("log")
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
    rows = call(url, token, "GET", "/v1/audit", params=params)
    t = Table("seq", "at", "actor", "action", "subject", "reason")
    for r in rows:
        t.add_row(str(r["seq"]), r["at"], r["actor"], r["action"], r["subject"], r["reason"])
    out(rows, as_json, t)


@app.command("verify")
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
    v = call(url, token, "GET", "/v1/audit/verify")
    problems = list(v["problems"])
    if expect_head is not None:
        seq = expect_seq or v["head_seq"]
        rows = call(url, token, "GET", "/v1/audit", params={"after": max(seq - 1, 0), "limit": 1})
        if not rows or rows[0]["seq"] != seq or rows[0]["hash"] != expect_head:
            problems.append(f"entry {seq} does not have the expected hash {expect_head[:16]}… (chain rewritten?)")
    if as_json:
        out({**v, "ok": not problems, "problems": problems}, True)
    elif problems:
        say(f"audit chain BROKEN ({v['entries']} entries):", style="red")
        for p in problems:
            say(f"  - {p}")
    else:
        say(f"audit chain ok: {v['entries']} entries, head {v['head_seq']} {v['head_hash']}")
    if problems:
        raise typer.Exit(4)


@app.command("state")
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
    s = call(url, token, "GET", "/v1/audit/state", params=params)
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
    out(s, as_json, t)
