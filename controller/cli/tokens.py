"""``edgefleet tokens ...``: API tokens (admin)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from controller.cli.common import DEFAULT_URL, JsonOpt, TokenOpt, UrlOpt, call, call_pages, out

app = typer.Typer(help="API tokens (admin).", no_args_is_help=True)


@app.command("create")
def tokens_create(
    principal: str,
    role: Annotated[str, typer.Option(help="metrics (scrape /metrics only) | viewer | operator | approver | admin")],
    label: str = "",
    expires_in_days: Annotated[float | None, typer.Option(help="the token stops working after this many days")] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Create an API token; the secret is printed once and stored only as a hash."""
    body: dict[str, object] = {"principal": principal, "role": role, "label": label}
    if expires_in_days is not None:
        body["ttl_s"] = int(expires_in_days * 86400)
    r = call(url, token, "POST", "/v1/tokens", json=body)
    out(r, as_json, text=f"token {r['id']} for {principal} ({role}): {r['token']}\nstore it now; it cannot be shown again")


@app.command("list")
def tokens_list(url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    rows = call_pages(url, token, "/v1/tokens")
    t = Table("id", "principal", "role", "label", "created by", "expires", "revoked")
    for r in rows:
        t.add_row(
            str(r["id"]), r["principal"], r["role"], r["label"], r["created_by"], r.get("expires_at") or "", r["revoked_at"] or ""
        )
    out(rows, as_json, t)


@app.command("revoke")
def tokens_revoke(token_id: int, url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    r = call(url, token, "DELETE", f"/v1/tokens/{token_id}")
    out(r, as_json, text=f"revoked token {token_id}")


def whoami(url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    """Who the token belongs to and its role."""
    me = call(url, token, "GET", "/v1/whoami")
    out(me, as_json, text=f"{me['principal']} ({me['role']})")
