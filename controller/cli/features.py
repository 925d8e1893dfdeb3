"""``edgefleet features ...``: batch-feature values per device, cohort or fleet, with validity times."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from controller.cli.common import DEFAULT_URL, CliError, JsonOpt, ReasonOpt, TokenOpt, UrlOpt, call, call_pages, out

app = typer.Typer(
    help="Batch features: values per device, cohort or fleet, delivered in the signed desired state.", no_args_is_help=True
)


def _scope(device: str | None, cohort: str | None, fleet: bool) -> str:
    given = [
        s for s in (f"device:{device}" if device else "", f"cohort:{cohort}" if cohort else "", "fleet" if fleet else "") if s
    ]
    if len(given) != 1:
        raise CliError("give exactly one of --device, --cohort or --fleet", "usage")
    return given[0]


@app.command("set")
def features_set(
    name: Annotated[str, typer.Argument(help="the batch feature, as the bundle's feature spec names it (e.g. dark_level)")],
    value: Annotated[float, typer.Argument(help="its value")],
    device: Annotated[str | None, typer.Option(help="for this device")] = None,
    cohort: Annotated[str | None, typer.Option(help="for every device of this cohort")] = None,
    fleet: Annotated[bool, typer.Option("--fleet", help="for every device")] = False,
    valid_from: Annotated[
        str | None, typer.Option("--from", help="ISO 8601 time it takes effect (default now; not in the past)")
    ] = None,
    valid_to: Annotated[str | None, typer.Option("--to", help="ISO 8601 time it ends (default: until a newer value)")] = None,
    reason: ReasonOpt = "",
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Set NAME to VALUE for a device, a cohort or the fleet; devices get it in their signed desired state."""
    body: dict[str, Any] = {"name": name, "value": value, "scope": _scope(device, cohort, fleet), "reason": reason}
    if valid_from:
        body["valid_from"] = valid_from
    if valid_to:
        body["valid_to"] = valid_to
    r = call(url, token, "POST", "/v1/features", json=body)
    until = f" until {r['valid_to']}" if r["valid_to"] else ""
    out(r, as_json, text=f"set {name} = {value:g} for {r['scope']} from {r['valid_from']}{until} ({r['delivered_to']} devices)")


@app.command("list")
def features_list(
    name: Annotated[str | None, typer.Option(help="only this feature")] = None,
    scope: Annotated[str | None, typer.Option(help="only this scope: device:<id>, cohort:<name> or fleet")] = None,
    at: Annotated[str | None, typer.Option(help="only values in force at this ISO 8601 time")] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Values set, newest first (the history training joins point-in-time)."""
    params = {k: v for k, v in (("name", name), ("scope", scope), ("at", at)) if v}
    rows = call_pages(url, token, "/v1/features", params=params)
    t = Table("id", "name", "scope", "value", "from", "to", "set by", "reason")
    for r in rows:
        t.add_row(
            str(r["id"]),
            r["name"],
            r["scope"],
            f"{r['value']:g}",
            r["valid_from"],
            r["valid_to"] or "-",
            r["set_by"],
            r["reason"],
        )
    out(rows, as_json, t)


@app.command("end")
def features_end(
    value_id: Annotated[int, typer.Argument(help="the value's id (features list)")],
    at: Annotated[str | None, typer.Option(help="ISO 8601 time it ends (default now; not in the past)")] = None,
    reason: ReasonOpt = "",
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """End a value: from then on the next one by the lookup rules is in force (a device's own value: its cohort's)."""
    body: dict[str, Any] = {"reason": reason, **({"at": at} if at else {})}
    r = call(url, token, "POST", f"/v1/features/{value_id}/end", json=body)
    out(r, as_json, text=f"{r['name']} = {r['value']:g} for {r['scope']} ends {r['valid_to']} ({r['delivered_to']} devices)")
