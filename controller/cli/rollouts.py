"""``edgefleet rollouts ...``: staged rollouts and their controls."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from controller.cli.common import DEFAULT_URL, CliError, JsonOpt, ReasonOpt, TokenOpt, UrlOpt, call, call_pages, json_arg, out

app = typer.Typer(help="Rollouts: staged canaries with automatic analysis and rollback.", no_args_is_help=True)


def _line(r: dict[str, Any]) -> str:
    waiting = f" (waiting: {r['waiting']})" if r["waiting"] else ""
    return (
        f"rollout {r['id']}: {r['model']} v{r['baseline_version']} -> v{r['candidate_version']} on {r['cohort']}, "
        f"{r['state']}{waiting}, stage {r['stage']}/{len(r['stages'])} ({r['stage_kind']} {r['stage_share']:.0%})"
    )


@app.command("create")
def rollouts_create(
    cohort: str,
    model: str,
    version: int,
    baseline: Annotated[int | None, typer.Option(help="baseline version (default: what the cohort runs)")] = None,
    plan: Annotated[str, typer.Option(help="JSON (inline, @FILE or a path): {'stages': [...], 'thresholds': {...}}")] = "",
    reason: ReasonOpt = "",
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Roll MODEL VERSION out to COHORT in stages (default: shadow 5%, then 1%, 5%, 25%, 50%, 100%)."""
    body: dict[str, Any] = {"cohort": cohort, "model": model, "version": version, "baseline_version": baseline, "reason": reason}
    if plan:
        p = json_arg(plan, "--plan")
        if not isinstance(p, dict) or not set(p) <= {"stages", "thresholds"}:
            raise CliError("--plan: expected a JSON object with 'stages' and/or 'thresholds'", "input")
        body |= p
    r = call(url, token, "POST", "/v1/rollouts", json=body)
    out(r, as_json, text=_line(r))


@app.command("list")
def rollouts_list(
    state: Annotated[str, typer.Option(help="RUNNING | PAUSED | HALTED | COMPLETED | ROLLED_BACK")] = "",
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    rows = call_pages(url, token, "/v1/rollouts", params={"state": state} if state else None)
    t = Table("id", "cohort", "model", "baseline", "candidate", "state", "stage", "reason")
    for r in rows:
        stage = f"{r['stage']}/{len(r['stages'])} {r['stage_kind']} {r['stage_share']:.0%}"
        t.add_row(str(r["id"]), r["cohort"], r["model"], str(r["baseline_version"]), str(r["candidate_version"]),
                  r["state"] + (f" ({r['waiting']})" if r["waiting"] else ""), stage, r["reason"][:60])  # fmt: skip
    out(rows, as_json, t)


@app.command("show")
def rollouts_show(rollout_id: int, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    """The rollout, the last analysis and every decision with its reason."""
    r = call(url, token, "GET", f"/v1/rollouts/{rollout_id}")
    if as_json:
        out(r, True)
        return
    lines = [_line(r)]
    if r["reason"]:
        lines.append(f"  reason: {r['reason']}")
    lines.append(f"  devices: {json.dumps(r['devices'])}")
    last = r.get("last_analysis") or {}
    lines += [f"  {c['name']}: {c['outcome']} - {c['reason']}" for c in last.get("checks", [])]
    out(r, False, text="\n".join(lines))
    shadow = next((c for c in last.get("checks", []) if c["name"] == "shadow_agreement"), None)
    if shadow is not None:
        _shadow(shadow.get("figures") or {})
    t = Table("at", "stage", "actor", "action", "verdict", "reason")
    for d in r["decisions"]:
        t.add_row(d["at"][:19], str(d["stage"]), d["actor"], d["action"], d["verdict"], d["reason"][:80])
    out(r, False, t)


def _shadow(f: dict[str, Any]) -> None:
    """The shadow stage's comparison: coverage, then the confusion matrix (rows: production's class)."""
    if "compared" not in f:
        return
    observed = f.get("observed_rate")
    text = (
        f"  shadow comparisons: {f['compared']} compared, {f['dropped']} dropped ({f['dropped_share']:.1%} of those sampled, "
        f"queue full), {f['sampled_out']} sampled out; sample rate {f['sample_rate']:g}"
        + (f", observed {observed:.1%}" if observed is not None else "")
    )
    out(f, False, text=text)
    cm = f.get("confusion") or []
    if not cm:
        return
    used = [j for j in range(len(cm)) if any(row[j] for row in cm) or any(cm[j])]
    title = "shadow confusion matrix (rows: production's class, columns: the candidate's)"
    t = Table("", *(str(j) for j in used), "agree", title=title, box=box.SIMPLE, pad_edge=False)
    for i in used:
        total = sum(cm[i])
        t.add_row(str(i), *(str(cm[i][j]) for j in used), f"{cm[i][i] / total:.1%}" if total else "-")
    out(f, False, t)


def _control(action: str, rollout_id: int, reason: str, url: str, token: str, as_json: bool) -> None:
    r = call(url, token, "POST", f"/v1/rollouts/{rollout_id}/{action}", json={"reason": reason})
    out(r, as_json, text=_line(r))


@app.command("pause")
def rollouts_pause(
    rollout_id: int, reason: ReasonOpt = "", url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False
) -> None:
    """No further stage until resumed (failures still roll back)."""
    _control("pause", rollout_id, reason, url, token, as_json)


@app.command("resume")
def rollouts_resume(
    rollout_id: int, reason: ReasonOpt = "", url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False
) -> None:
    _control("resume", rollout_id, reason, url, token, as_json)


@app.command("promote")
def rollouts_promote(
    rollout_id: int, reason: ReasonOpt = "", url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False
) -> None:
    """Go to the next stage now (an approval the stage needs is still required)."""
    _control("promote", rollout_id, reason, url, token, as_json)


@app.command("abort")
def rollouts_abort(
    rollout_id: int, reason: ReasonOpt = "", url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False
) -> None:
    """Put every device of the rollout back on the baseline."""
    _control("abort", rollout_id, reason, url, token, as_json)


@app.command("rebase")
def rollouts_rebase(
    rollout_id: int,
    version: int,
    reason: ReasonOpt = "",
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Name VERSION the baseline a failure rolls back to; a HALTED rollout (revoked baseline) rolls back to it now."""
    r = call(url, token, "POST", f"/v1/rollouts/{rollout_id}/baseline", json={"version": version, "reason": reason})
    out(r, as_json, text=_line(r))
