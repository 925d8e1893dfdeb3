"""``edgefleet models ...``: model registry: push, approve, alias, revoke, lineage."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from controller.cli.common import (
    DEFAULT_URL,
    JsonOpt,
    ReasonOpt,
    TokenOpt,
    UrlOpt,
    call,
    call_pages,
    out,
    read_file,
    resolve_version,
)

app = typer.Typer(help="Model registry: push, approve, alias, revoke, lineage.", no_args_is_help=True)


@app.command("push")
def models_push(bundle: Path, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    """Upload a model bundle (refused unless its golden vectors reproduce on the controller)."""
    data = read_file(bundle, "bundle")
    mv = call(url, token, "POST", "/v1/models", content=data, headers={"Content-Type": "application/x-tar"})
    out(mv, as_json, text=f"registered {mv['name']} v{mv['version']} ({mv['sha256'][:12]})")


@app.command("list")
def models_list(url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    rows = call_pages(url, token, "/v1/models")
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
    out(rows, as_json, t)


@app.command("show")
def models_show(name: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    """Versions, aliases and the version floor of a model."""
    m = call(url, token, "GET", f"/v1/models/{name}")
    aliases = ", ".join(f"{k}=v{v}" for k, v in sorted(m["aliases"].items())) or "-"
    out(m, as_json, text=f"{m['name']}: latest v{m['latest']}, floor v{m['floor']}, aliases {aliases}")


@app.command("lineage")
def models_lineage(name: str, version: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    """VERSION and its registered ancestors (VERSION may be an alias such as production)."""
    v = resolve_version(url, token, name, version)
    rows = call_pages(url, token, f"/v1/models/{name}/versions/{v}/lineage")
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
    out(rows, as_json, t)


@app.command("approve")
def models_approve(
    name: str, version: str, reason: ReasonOpt, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False
) -> None:
    """Approve a version for use beyond canary (approver role; not the one who registered it)."""
    v = resolve_version(url, token, name, version)
    mv = call(url, token, "POST", "/v1/approvals", json={"model": name, "version": v, "reason": reason})
    out(mv, as_json, text=f"approved {name} v{v}")


@app.command("pending")
def models_pending(url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    """Versions waiting for approval; a version the pipeline made shows its evaluation (``--json``: every slice)."""
    rows = call_pages(url, token, "/v1/approvals")
    t = Table("name", "version", "registered by", "created", "evidence")
    for r in rows:
        ev = r.get("evidence") or {}
        verdict = (ev.get("verdict") or {}).get("reasons") or []
        evidence = f"pipeline run {ev.get('pipeline_run')}: {'; '.join(verdict)}" if ev else "-"
        t.add_row(r["name"], str(r["version"]), r["registered_by"], r["created_at"], evidence[:160])
    out(rows, as_json, t)


@app.command("alias")
def models_alias(
    name: str,
    alias: str,
    version: str,
    reason: ReasonOpt = "",
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Point ALIAS (production, candidate, ...) at VERSION (a number or another alias)."""
    v = resolve_version(url, token, name, version)
    r = call(url, token, "PUT", f"/v1/models/{name}/aliases/{alias}", json={"version": v, "reason": reason})
    out(r, as_json, text=f"{name}@{alias} -> v{v}")


@app.command("revoke")
def models_revoke(
    name: str, version: str, reason: ReasonOpt, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False
) -> None:
    """Revoke a version: devices refuse it from now on; older versions stay installable (ADR 0073)."""
    v = resolve_version(url, token, name, version)
    m = call(url, token, "POST", f"/v1/models/{name}/versions/{v}/revoke", json={"reason": reason})
    out(m, as_json, text=f"revoked {name} v{v}; floor is now v{m['floor']}")
