"""``edgefleet pipeline ...``: the retraining policy's decisions, runs, and a manual trigger."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Annotated, Any

import typer
from rich.table import Table

from controller.cli.common import DEFAULT_URL, JsonOpt, TokenOpt, UrlOpt, call, call_pages, out

app = typer.Typer(help="Retraining: the policy's decisions, pipeline runs, manual triggers.", no_args_is_help=True)
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="model name")]


def _t(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _line(r: dict[str, Any]) -> str:
    v = f" -> v{r['version']}" if r["version"] else ""
    head = f"run {r['id']}: {r['model']} (from v{r['parent_version']}{v}) for {r['cohort']}"
    return f"{head}, {r['trigger']}, {r['state']}: {r['reason']}"


@app.command("policy")
def policy(url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    """The retraining policy in force (EDGEFLEET_PIPELINE_* settings)."""
    p = call(url, token, "GET", "/v1/pipeline/policy")
    state = "enabled" if p["enabled"] else "disabled (EDGEFLEET_PIPELINE_ENABLED=false; manual runs still work)"
    lines = [f"retraining policy {state}, every {p['interval_s']:g} s, runner {p['runner']}"]
    lines += [
        f"  {k}: {v}"
        for k, v in {**p["policy"], "window_s": p["window_s"], "min_device_samples": p["min_device_samples"]}.items()
    ]
    out(p, as_json, text="\n".join(lines))


@app.command("decisions")
def decisions(
    model: Annotated[str, typer.Option("--model", "-m", help="only this model")] = "",
    cohort: Annotated[str, typer.Option("--cohort", "-c", help="only this cohort")] = "",
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Every decision to retrain or not, newest first, with the reason (``--json`` for the evidence)."""
    params = {k: v for k, v in {"model": model, "cohort": cohort}.items() if v}
    rows = call_pages(url, token, "/v1/pipeline/decisions", params or None)
    t = Table("at (UTC)", "model", "cohort", "decision", "trigger", "run", "reason")
    for d in rows:
        t.add_row(_t(d["at"]), d["model"], d["cohort"], d["decision"], d["trigger"], str(d["run_id"] or ""), d["reason"][:120])
    out(rows, as_json, t)


@app.command("runs")
def runs(
    model: Annotated[str, typer.Option("--model", "-m", help="only this model")] = "",
    state: Annotated[
        str, typer.Option(help="running | refused | not_blessed | failed | registered | approved | rolled_out")
    ] = "",
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    params = {k: v for k, v in {"model": model, "state": state}.items() if v}
    rows = call_pages(url, token, "/v1/pipeline/runs", params or None)
    t = Table("id", "model", "cohort", "trigger", "state", "from", "version", "started (UTC)", "reason")
    for r in rows:
        t.add_row(str(r["id"]), r["model"], r["cohort"], r["trigger"], r["state"], str(r["parent_version"] or ""),
                  str(r["version"] or ""), _t(r["started_at"]), r["reason"][:80])  # fmt: skip
    out(rows, as_json, t)


@app.command("show")
def show(run_id: int, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    """A run: quality gate, evaluation per slice, lineage and its progress."""
    r = call(url, token, "GET", f"/v1/pipeline/runs/{run_id}")
    if as_json:
        out(r, True)
        return
    res = r.get("result") or {}
    lines = [_line(r)]
    if res.get("dataset_sha256"):
        lines.append(f"  dataset {res['dataset_sha256']}")
    gate = res.get("gate") or {}
    if gate:
        lines.append(f"  quality gate: {'passed' if gate.get('passed') else 'refused'} {gate.get('stats', {})}")
    if res.get("metrics"):
        lines.append(f"  metrics: {res['metrics']}")
    lines += [f"  | {p}" for p in r.get("progress", [])[-10:]]
    out(r, False, text="\n".join(lines))
    slices = (res.get("evaluation") or {}).get("slices", [])
    if slices:
        t = Table("set", "slice", "n", "candidate", "incumbent", "delta", "judged")
        for s in slices:
            inc = "-" if s["incumbent"] is None else f"{s['incumbent']:.2%}"
            delta = "-" if s["delta"] is None else f"{s['delta'] * 100:+.2f} pts"
            t.add_row(s["set"], s["slice"], str(s["n"]), f"{s['candidate']:.2%}", inc, delta, "yes" if s["judged"] else "no")
        out(r, False, t)


@app.command("run")
def run(
    model: ModelOpt,
    reason: Annotated[str, typer.Option("--reason", "-r", help="why (recorded with the decision)")],
    cohort: Annotated[str, typer.Option("--cohort", "-c", help="the cohort it is for; * for the whole fleet")] = "*",
    wait: Annotated[bool, typer.Option("--wait", help="follow the run until it finishes, printing its progress")] = False,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Ask for a retraining run now; the policy still applies (one at a time, cooldown) and says why not."""
    r = call(url, token, "POST", "/v1/pipeline/runs", json={"model": model, "cohort": cohort, "reason": reason})
    seen = 0
    while wait and r["state"] == "running":
        time.sleep(2)
        r = call(url, token, "GET", f"/v1/pipeline/runs/{r['id']}")
        if not as_json:
            for line in r.get("progress", [])[seen:]:
                out(r, False, text=f"  | {line}")
            seen = len(r.get("progress", []))
    out(r, as_json, text=_line(r))
