"""``edgefleet release ...``: sign pending targets changes with an offline release key.

Run on the machine that holds the key share; the key never leaves it, only the
signature is sent. The change is published to devices when root's threshold of
release keys has signed it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Targets

from controller.cli.common import DEFAULT_URL, CliError, JsonOpt, TokenOpt, UrlOpt, call, out
from shared.errors import SignatureError
from shared.signing import load_private_key_file

app = typer.Typer(help="Offline release signatures (TUF targets).", no_args_is_help=True)


def _describe(p: dict[str, Any]) -> str:
    lines = [f"pending targets version {p['version']}: {len(p['signed_by'])} of {p['threshold']} signatures"]
    lines += [f"  - {c}" for c in p["changes"]]
    return "\n".join(lines)


@app.command("pending")
def release_pending(url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    """Show the targets change waiting for release signatures."""
    p = call(url, token, "GET", "/v1/tuf/pending")
    out(p, as_json, text=_describe(p))


@app.command("status")
def release_status(url: UrlOpt = DEFAULT_URL, token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    """Expiry of the published TUF metadata; with offline release keys, warns while targets near expiry."""
    st = call(url, token, "GET", "/v1/tuf/status")
    lines = [f"release signing: {st['release_signing']}"]
    for role, r in st["roles"].items():
        lines.append(f"  {role:<9} v{r['version']:<5} expires {r['expires_at']} ({r['expires_in_s'] / 86400:.1f} days)")
    if st["pending_version"] is not None:
        lines.append(f"pending targets version {st['pending_version']} waits for release signatures")
    if st["targets_warning"]:
        lines.append(f"WARNING: {st['targets_warning']}")
    out(st, as_json, text="\n".join(lines))


@app.command("sign")
def release_sign(
    key: Annotated[Path, typer.Option(help="this holder's release key (PEM, Ed25519)", exists=True, dir_okay=False)],
    version: Annotated[int | None, typer.Option(help="sign only this pending version (as reviewed)")] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Sign the pending targets change with ``--key`` and send the signature."""
    p = call(url, token, "GET", "/v1/tuf/pending")
    if version is not None and p["version"] != version:
        raise CliError(f"the pending version is {p['version']}, not {version}; review it again (edgefleet release pending)")
    md = Metadata[Targets].from_dict(dict(p["targets"]))
    if md.signed.version != p["version"]:
        raise CliError(f"pending metadata says version {md.signed.version}, expected {p['version']}")
    try:
        signer = CryptoSigner(load_private_key_file(key))
    except (ValueError, SignatureError) as exc:
        raise CliError(f"{key}: not an Ed25519 release key ({exc})", "input") from None
    sig = md.sign(signer, append=True)
    r = call(
        url, token, "POST", "/v1/tuf/pending/signatures", json={"version": p["version"], "keyid": sig.keyid, "sig": sig.signature}
    )
    text = _describe(r) + ("\npublished: devices can install it now" if r["published"] else "")
    out(r, as_json, text=f"signed with {sig.keyid[:16]}\n{text}")
