"""``edgefleet experiments ...``: A/B tests and on-device bandits."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from controller.cli.common import DEFAULT_URL, JsonOpt, ReasonOpt, TokenOpt, UrlOpt, call, call_pages, console, out

app = typer.Typer(help="Experiments: A/B tests with always-valid intervals, and bandits on the device.", no_args_is_help=True)


def _arm(spec: str) -> dict[str, Any]:
    """NAME=VERSION[:SHARE] -> an arm."""
    try:
        name, rest = spec.split("=", 1)
        version, _, share = rest.partition(":")
        return {"name": name, "version": int(version), "share": float(share) if share else 1.0}
    except ValueError:
        raise typer.BadParameter(f"arm {spec!r}: expected NAME=VERSION or NAME=VERSION:SHARE, e.g. b=4:0.5") from None


@app.command("create")
def experiments_create(
    name: str,
    cohort: Annotated[str, typer.Option(help="the cohort whose devices take part")],
    model: Annotated[str, typer.Option(help="model name; arms are versions of it")],
    arm: Annotated[list[str], typer.Option(help="NAME=VERSION[:SHARE] (repeatable; the first is the control)")],
    kind: Annotated[str, typer.Option(help="ab | bandit")] = "ab",
    metric: Annotated[str, typer.Option(help="primary metric: accuracy | error_rate | latency_ms")] = "accuracy",
    guardrail: Annotated[list[str] | None, typer.Option(help="guardrail metric (repeatable)")] = None,
    alpha: float = 0.05,
    tau: Annotated[float | None, typer.Option(help="effect size the test is tuned for (metric's unit)")] = None,
    min_devices: int = 5,
    floor: Annotated[float, typer.Option(help="bandit: minimum weight per arm")] = 0.05,
    no_promote: Annotated[bool, typer.Option("--no-promote", help="decide but do not promote automatically")] = False,
    reason: ReasonOpt = "",
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    body = {
        "name": name, "cohort": cohort, "model": model, "arms": [_arm(a) for a in arm], "kind": kind,
        "primary_metric": metric, "guardrails": guardrail or [], "alpha": alpha, "tau": tau,
        "min_devices": min_devices, "floor": floor, "auto_promote": not no_promote, "reason": reason,
    }  # fmt: skip
    e = call(url, token, "POST", "/v1/experiments", json=body)
    out(e, as_json, text=f"experiment {e['id']} ({e['kind']}) running on cohort {e['cohort']}")


@app.command("list")
def experiments_list(url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    rows = call_pages(url, token, "/v1/experiments")
    t = Table("id", "name", "kind", "cohort", "state", "arms", "decision")
    for r in rows:
        arms = ", ".join(f"{a['name']}=v{a['version']}" for a in r["arms"])
        t.add_row(str(r["id"]), r["name"], r["kind"], r["cohort"], r["state"], arms, _decision(r))
    out(rows, as_json, t)


def _decision(e: dict[str, Any]) -> str:
    ev = e["decision"] or e["evaluation"] or {}
    d = ev.get("decision", "")
    return f"{d} {ev.get('arm') or ''}".strip() + (f" (promoted {ev['promoted']})" if ev.get("promoted") else "")


def _fmt(x: Any, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


@app.command("show")
def experiments_show(experiment_id: int, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    """Arms, always-valid intervals, the SRM check and the decision."""
    e = call(url, token, "GET", f"/v1/experiments/{experiment_id}")
    if as_json:
        out(e, True)
        return
    ev = e["decision"] or e["evaluation"] or {}
    console.print(
        f"experiment {e['id']} {e['name']}: {e['kind']} on cohort {e['cohort']}, model {e['model']}, "
        f"state {e['state']}, {e['looks']} looks, alpha {e['alpha']}, primary {e['primary_metric']}"
    )
    srm = ev.get("srm", {})
    obs = srm.get("observed", [])
    arms = Table(
        "arm",
        "version",
        "share",
        "weight",
        "devices reporting",
        *[f"{m}" for m in (ev.get("estimates") or {}).get(e["control"], {})],
    )
    for i, a in enumerate(e["arms"]):
        est = (ev.get("estimates") or {}).get(a["name"], {})
        cells = [_fmt((m or {}).get("mean")) for m in est.values()]
        weight = _fmt(e["weights"].get(a["name"])) if e["weights"] else "-"
        seen = str(obs[i]) if i < len(obs) else "-"
        arms.add_row(
            a["name"] + (" (control)" if a["name"] == e["control"] else ""),
            str(a["version"]),
            _fmt(a["share"]),
            weight,
            seen,
            *cells,
        )
    console.print(arms)
    comps = Table(
        "arm vs control", "metric", "difference", f"always-valid {1 - e['alpha']:.0%} interval", "p (always valid)", "verdict"
    )
    for c in ev.get("comparisons", []):
        d = c.get("difference") or {}
        interval = f"[{_fmt(d.get('low'))}, {_fmt(d.get('high'))}]" if d else "-"
        comps.add_row(c["arm"], c["metric"], _fmt(d.get("diff")), interval, _fmt(d.get("p_value"), 3), c["verdict"])
    console.print(comps)
    if srm:
        verdict = "MISMATCH: decisions blocked" if srm.get("mismatch") else "ok"
        console.print(
            f"SRM check: devices reporting {srm.get('observed')} vs expected {srm.get('expected')}, "
            f"chi2 {_fmt(srm.get('chi2'))}, p {_fmt(srm.get('p_value'), 3)} (threshold {srm.get('threshold')}): {verdict}"
        )
    console.print(
        f"decision: {_decision(e) or 'none yet'}" + (f" — {'; '.join(ev.get('reasons', []))}" if ev.get("reasons") else "")
    )


def _act(experiment_id: int, action: str, arm: str, reason: str, url: str, token: str, as_json: bool) -> None:
    e = call(
        url, token, "POST", f"/v1/experiments/{experiment_id}/actions", json={"action": action, "arm": arm, "reason": reason}
    )
    out(e, as_json, text=f"experiment {e['id']}: {e['state']}")


@app.command("stop")
def experiments_stop(
    experiment_id: int,
    promote: Annotated[str, typer.Option(help="make this arm production on the experiment's devices")] = "",
    reason: ReasonOpt = "",
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    _act(experiment_id, "promote" if promote else "stop", promote, reason, url, token, as_json)


@app.command("pause")
def experiments_pause(experiment_id: int, reason: ReasonOpt = "", url: UrlOpt = DEFAULT_URL, token: TokenOpt = "") -> None:
    _act(experiment_id, "pause", "", reason, url, token, False)


@app.command("resume")
def experiments_resume(experiment_id: int, reason: ReasonOpt = "", url: UrlOpt = DEFAULT_URL, token: TokenOpt = "") -> None:
    _act(experiment_id, "resume", "", reason, url, token, False)
