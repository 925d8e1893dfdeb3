"""What every CLI command shares: options, the HTTP call, output and errors.

Output: results on stdout (a table, a line, or JSON with ``--json``); errors as
one line on stderr, ``edgefleet: error: what failed; what to do``, and with
``--json`` also ``{"error": {...}}`` on stdout. Text from the controller is
printed as it is: rich markup in it is never interpreted. ``--debug``
(anywhere on the line, or ``EDGEFLEET_DEBUG=1``) adds the traceback.

Exit codes (``EXIT``): 0 ok, 1 the controller refused the request, 2 usage,
3 the controller could not be reached or did not answer like an edgefleet
controller, 4 ``audit verify`` found the chain broken, 5 a local file or
input is unusable, 70 an internal error of the CLI.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table
from typer._click import exceptions as click  # typer vendors click; its exceptions are these
from typer.core import TyperGroup

# markup/emoji off: device ids, reasons and messages from the controller are data, not rich markup
console = Console(markup=False, emoji=False, highlight=False, soft_wrap=True)

DEFAULT_URL = "http://127.0.0.1:8000"
UrlOpt = Annotated[str, typer.Option(envvar="EDGEFLEET_URL", help="controller base URL")]
TokenOpt = Annotated[str, typer.Option(envvar="EDGEFLEET_TOKEN", help="API token", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help='print JSON (errors too, as {"error": ...})')]
ReasonOpt = Annotated[str, typer.Option("--reason", "-r", help="why (recorded in the audit log)")]

EXIT = {"ok": 0, "refused": 1, "usage": 2, "unreachable": 3, "audit_broken": 4, "input": 5, "internal": 70}
PAGE = 1000  # items asked per request when a command pages through a list


class CliError(Exception):
    """A failure to report as one line: ``kind`` picks the exit code (see ``EXIT``)."""

    def __init__(self, message: str, kind: str = "refused", *, status: int | None = None, problem: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.status = status
        self.problem = problem

    @property
    def code(self) -> int:
        return EXIT[self.kind]

    def as_json(self) -> dict[str, Any]:
        err: dict[str, Any] = {"kind": self.kind, "exit_code": self.code, "message": self.message}
        if self.status is not None:
            err["status"] = self.status
        if self.problem is not None:
            err["problem"] = self.problem
        return {"error": err}


def client(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120)


def _send(url: str, token: str, method: str, path: str, **kw: Any) -> httpx.Response:
    if not url.startswith(("http://", "https://")):
        raise CliError(f"controller URL {url!r} must start with http:// or https://; check --url or EDGEFLEET_URL", "usage")
    try:
        with client(url, token) as c:
            return c.request(method, path, **kw)
    except httpx.TimeoutException:
        raise CliError(f"the controller at {url} did not answer in time; is it overloaded?", "unreachable") from None
    except httpx.HTTPError as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CliError(f"cannot reach the controller at {url} ({why}); check --url or EDGEFLEET_URL", "unreachable") from exc


def _json(r: httpx.Response, url: str) -> Any:
    if not r.content:
        return None
    try:
        return r.json()
    except ValueError:
        kind = r.headers.get("content-type", "unknown").split(";")[0]
        raise CliError(
            f"{url} answered {r.request.method} {r.request.url.path} with {kind}, not JSON (HTTP {r.status_code}); "
            "is --url the controller's base URL?",
            "unreachable",
            status=r.status_code,
        ) from None


def refusal(r: httpx.Response, url: str, token: str) -> CliError:
    """An error answer as one sentence: the problem's ``detail``, 422 fields as ``field: problem``."""
    try:
        body = r.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "detail" not in body:
        return CliError(
            f"{url} answered HTTP {r.status_code} without an edgefleet error body; is --url the controller's base URL?",
            "unreachable",
            status=r.status_code,
        )
    detail = body["detail"]
    if isinstance(body.get("errors"), list) and body["errors"]:
        detail = "; ".join(f"{e.get('field', '?')}: {e.get('problem', '?')}" for e in body["errors"] if isinstance(e, dict))
    elif not isinstance(detail, str):  # a controller older than problem+json: FastAPI's list of errors
        detail = "; ".join(_loc(e) for e in detail) if isinstance(detail, list) else json.dumps(detail)
    hint = ""
    if r.status_code == 401:
        hint = "; pass --token or set EDGEFLEET_TOKEN" if not token else "; check the token (edgefleet whoami)"
    kind = "unreachable" if r.status_code >= 500 else "refused"
    return CliError(f"{detail} (HTTP {r.status_code}){hint}", kind, status=r.status_code, problem=body)


def _loc(e: Any) -> str:
    if not isinstance(e, dict):
        return str(e)
    loc = [str(x) for x in e.get("loc", []) if x not in ("body", "query", "path")]
    return f"{'.'.join(loc) or 'request'}: {e.get('msg', '?')}"


def call(url: str, token: str, method: str, path: str, **kw: Any) -> Any:
    r = _send(url, token, method, path, **kw)
    if r.status_code >= 400:
        raise refusal(r, url, token)
    return _json(r, url)


def call_pages(url: str, token: str, path: str, params: dict[str, Any] | None = None) -> list[Any]:
    """GET every page of a list, following the ``Link: rel="next"`` header, and check ``X-Total-Count``."""
    items: list[Any] = []
    for page in _pages(url, token, path, {"limit": PAGE, **(params or {})}):
        items.extend(page)
    return items


def _pages(url: str, token: str, path: str, params: dict[str, Any]) -> Iterator[list[Any]]:
    target: str | None = path
    query: dict[str, Any] | None = params
    while target is not None:
        r = _send(url, token, "GET", target, params=query)
        if r.status_code >= 400:
            raise refusal(r, url, token)
        body = _json(r, url)
        if not isinstance(body, list):
            raise CliError(
                f"{url} answered GET {path} with something other than a list; is it an edgefleet controller?", "unreachable"
            )
        yield body
        target, query = r.links.get("next", {}).get("url"), None


def wants_json(argv: Sequence[str]) -> bool:
    return "--json" in argv


def out(data: Any, as_json: bool, table: Table | None = None, text: str = "") -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    elif table is not None:
        console.print(table)
    else:
        console.print(text)


def say(message: str, style: str | None = None) -> None:
    """One line of plain text on stdout (never parsed as markup)."""
    console.print(message, style=style)


def report(err: CliError, as_json: bool, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    sys.stderr.write(f"edgefleet: error: {' '.join(err.message.split())}\n")
    if as_json:
        sys.stdout.write(json.dumps(err.as_json(), default=str) + "\n")
    return err.code


class Group(TyperGroup):
    """The root command: runs a command and turns every failure into one stderr line and an exit code."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv or os.environ.get("EDGEFLEET_DEBUG", "") not in ("", "0")
        argv = [a for a in argv if a != "--debug"]
        as_json = wants_json(argv)
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except CliError as err:
            code = report(err, as_json, debug)
        except click.NoArgsIsHelpError:  # typer printed the help already
            code = 0
        except click.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            code = report(CliError(f"{exc.format_message()}{where}", "usage"), as_json, debug)
        except click.ClickException as exc:
            code = report(CliError(exc.format_message(), "input"), as_json, debug)
        except typer.Abort:
            code = report(CliError("aborted", "usage"), as_json, debug)
        except Exception as exc:
            msg = f"internal error: {type(exc).__name__}: {exc}; run again with --debug and report it"
            code = report(CliError(msg, "internal"), as_json, debug)
        if standalone_mode:
            sys.exit(code)
        return code


def read_file(path: Path, what: str = "file") -> bytes:
    """A local file's bytes, or a CliError saying what is wrong with the path."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CliError(f"{what} {str(path)!r} does not exist", "input") from None
    except IsADirectoryError:
        raise CliError(f"{what} {str(path)!r} is a directory; give the file itself", "input") from None
    except PermissionError:
        raise CliError(f"cannot read {what} {str(path)!r}: permission denied", "input") from None
    except OSError as exc:
        raise CliError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}", "input") from None


def json_arg(value: str, what: str) -> Any:
    """Inline JSON, or ``@FILE`` / a path to a JSON file."""
    text = value
    if value.startswith("@") or not value.lstrip().startswith(("{", "[")):
        text = read_file(Path(value.removeprefix("@")), what).decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CliError(f"{what} is not valid JSON: {exc}", "input") from None


def resolve_version(url: str, token: str, model: str, version: str) -> int:
    """A version number, or an alias (production, candidate, ...) resolved by the controller."""
    if version.isdigit():
        return int(version)
    return int(call(url, token, "GET", f"/v1/models/{model}/aliases/{version}")["version"])
