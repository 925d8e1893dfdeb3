"""``edgefleet models ...``: model registry: push, approve, alias, revoke, lineage."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from controller.cli.common import DEFAULT_URL, JsonOpt, ReasonOpt, TokenOpt, UrlOpt, call, console, out

app = typer.Typer(help="Model registry: push, approve, alias, revoke, lineage.", no_args_is_help=True)


@app.command("push")
def models_push(bundle: Path, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    """Upload a model bundle (refused unless its golden vectors reproduce on the controller)."""
    mv = call(url, token, "POST", "/v1/models", content=bundle.read_bytes(), headers={"Content-Type": "application/x-tar"})
    out(mv, as_json, text=f"registered {mv['name']} v{mv['version']} ({mv['sha256'][:12]})")


@app.command("list")
def models_list(url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    rows = call(url, token, "GET", "/v1/models")
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
def models_lineage(name: str, version: int, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    rows = call(url, token, "GET", f"/v1/models/{name}/versions/{version}/lineage")
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
def models_approve(name: str, version: int, reason: ReasonOpt, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "") -> None:
    """Approve a version for use beyond canary (approver role; not the one who registered it)."""
    call(url, token, "POST", "/v1/approvals", json={"model": name, "version": version, "reason": reason})
    console.print(f"approved {name} v{version}")


@app.command("pending")
def models_pending(url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    """Versions waiting for approval."""
    rows = call(url, token, "GET", "/v1/approvals")
    t = Table("name", "version", "registered by", "created")
    for r in rows:
        t.add_row(r["name"], str(r["version"]), r["registered_by"], r["created_at"])
    out(rows, as_json, t)


@app.command("alias")
def models_alias(
    name: str, alias: str, version: int, reason: ReasonOpt = "", url: UrlOpt = DEFAULT_URL, token: TokenOpt = ""
) -> None:
    """Point ALIAS (production, candidate, ...) at VERSION."""
    call(url, token, "PUT", f"/v1/models/{name}/aliases/{alias}", json={"version": version, "reason": reason})
    console.print(f"{name}@{alias} -> v{version}")


@app.command("revoke")
def models_revoke(name: str, version: int, reason: ReasonOpt, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "") -> None:
    """Revoke a version; the version floor rises above it."""
    m = call(url, token, "POST", f"/v1/models/{name}/versions/{version}/revoke", json={"reason": reason})
    console.print(f"revoked {name} v{version}; floor is now v{m['floor']}")
