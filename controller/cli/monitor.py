"""``edgefleet monitor drift|accuracy|slo|alerts``: what controller/monitoring/ sees, as tables or JSON."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Annotated, Any

import typer
from rich.table import Table

from controller.cli.common import DEFAULT_URL, JsonOpt, TokenOpt, UrlOpt, call, call_pages, console, out, say

app = typer.Typer(help="Drift, accuracy (measured and estimated), SLOs and alerts.", no_args_is_help=True)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="model name")]
CohortOpt = Annotated[str, typer.Option("--cohort", "-c", help="cohort, or * for the whole fleet")]
HoursOpt = Annotated[float, typer.Option("--hours", help="look back this many hours")]


def _t(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M")


def _f(v: float | None, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


@app.command()
def drift(
    model: ModelOpt,
    cohort: CohortOpt = "*",
    hours: HoursOpt = 1.0,
    version: Annotated[int | None, typer.Option(help="one version only")] = None,
    all_features: Annotated[bool, typer.Option("--all", help="list every feature, not only drifted ones")] = False,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Input and prediction drift per model version against the bundle's reference."""
    params: dict[str, Any] = {"model": model, "cohort": cohort, "since": int(time.time() - hours * 3600)}
    if version is not None:
        params["version"] = version
    rows = call_pages(url, token, "/v1/monitoring/drift", params)
    if as_json:
        out(rows, True)
        return
    if not rows:
        say(f"no telemetry for {model} in {cohort} in the last {hours:g} h")
    for r in rows:
        verdict = "DRIFT" if r["dataset_drift"] else "no drift"
        say(
            f"{model} v{r['version']} in {cohort}, {_t(r['since'])}..{_t(r['until'])} UTC, "
            f"{r['device_windows']} device windows ({r['excluded_windows']} windows excluded for data quality): "
            f"{verdict}, {r['drifted_features']} of {len(r['features'])} features ({r['drift_share']:.0%})"
        )
        t = Table("feature", "n", "PSI", "PSI limit", "JS", "JS limit", "Wasserstein/σ", "out of range", "verdict")
        for f in sorted(r["features"], key=lambda f: -f["psi"]):
            if all_features or f["drifted"]:
                t.add_row(
                    f["name"], str(f["n_cur"]), _f(f["psi"]), _f(f["psi_threshold"]), _f(f["js"]), _f(f["js_threshold"]),
                    _f(f["wasserstein"]), _f(f["out_of_range"], ".1%"), f["verdict"],
                )  # fmt: skip
        p = r["predictions"]
        if p is not None:
            t.add_row("(predictions)", str(p["n_cur"]), _f(p["psi"]), "", _f(p["js"]), "",
                      f"χ² p={_f(p['chi2_p'], '.2g')}", "", p["verdict"])  # fmt: skip
        console.print(t)


@app.command()
def accuracy(
    model: ModelOpt,
    cohort: CohortOpt = "*",
    hours: HoursOpt = 24.0,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Measured accuracy per prediction window (late labels included) beside the confidence-based estimate."""
    params = {"model": model, "cohort": cohort, "since": int(time.time() - hours * 3600)}
    r = call(url, token, "GET", "/v1/monitoring/accuracy", params=params)
    t = Table("window", "version", "predictions", "labels", "accuracy", "estimated")
    for w in r["windows"]:
        t.add_row(_t(w["window_start"]), str(w["version"]), str(w["predictions"]), str(w["labels"]),
                  _f(w["accuracy"]), _f(w["estimated"]))  # fmt: skip
    t.add_row("total", "", str(r["predictions"]), str(r["labels"]), _f(r["accuracy"]), _f(r["estimated"]))
    out(r, as_json, t)


@app.command()
def slo(
    model: Annotated[str | None, typer.Option("--model", "-m", help="model name")] = None,
    cohort: Annotated[str | None, typer.Option("--cohort", "-c", help="cohort")] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Objectives and their burn rates now."""
    params = {k: v for k, v in (("model", model), ("cohort", cohort)) if v is not None}
    rows = call_pages(url, token, "/v1/monitoring/slos", params)
    t = Table("slo", "kind", "model", "cohort", "target", "burn (long/short, limit)", "state")
    for r in rows:
        burns = ", ".join(
            f"{_f(x['long_burn'], '.1f')}/{_f(x['short_burn'], '.1f')} >{x['rule']['factor']:g}" for x in r["evidence"]["rules"]
        )
        state = f"FIRING ({r['severity']})" if r["firing"] else "ok"
        t.add_row(r["name"], r["kind"], r["model"], r["cohort"], f"{r['target']:.4g}", burns, state)
    out(rows, as_json, t)


@app.command()
def alerts(
    state: Annotated[str | None, typer.Option(help="firing or resolved")] = "firing",
    model: Annotated[str | None, typer.Option("--model", "-m", help="model name")] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Monitoring alerts, newest first."""
    params = {k: v for k, v in (("state", state), ("model", model)) if v is not None}
    rows = call_pages(url, token, "/v1/monitoring/alerts", params)
    t = Table("opened", "kind", "severity", "state", "key", "summary")
    for r in rows:
        t.add_row(_t(r["opened_at"]), r["kind"], r["severity"], r["state"], r["key"], r["summary"])
    out(rows, as_json, t)
