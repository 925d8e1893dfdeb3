"""``edgefleet-agent``: run the device agent, or check its configuration."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from agent import __version__, logs
from agent.config import AgentConfig, ConfigError, load_config

if TYPE_CHECKING:
    from agent.ota.updater import Checkpoint

DEFAULT_CONFIG = Path("/etc/edgefleet/agent.toml")
log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgefleet-agent", description="edgefleet device agent")
    p.add_argument(
        "command",
        nargs="?",
        choices=("run", "status"),
        default="run",
        help="run the agent (default), or ask the running one for its status",
    )
    p.add_argument("--json", action="store_true", help="status: print JSON")
    p.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG, help=f"TOML config (default {DEFAULT_CONFIG})")
    p.add_argument("--check-config", action="store_true", help="validate the config file and exit")
    p.add_argument(
        "--enrol",
        metavar="TOKEN",
        help="enrol this device with a one-time token, then exit (--enrol=TOKEN for one starting with -)",
    )
    p.add_argument("--controller", metavar="URL", help="controller URL for --enrol (default: [identity] controller_url)")
    p.add_argument("--version", action="version", version=f"edgefleet-agent {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"edgefleet-agent: {exc}", file=sys.stderr)
        return 2
    if args.enrol:
        return _enrol(cfg, args.enrol, args.controller)
    if args.command == "status":
        from agent import status

        return status.main(cfg.socket_path, args.json)
    if args.check_config:
        print(f"{args.config}: OK (device {cfg.device_id}, broker {cfg.broker.host}:{cfg.broker.port})")
        return 0
    from agent.memory import limit_malloc_arenas

    limit_malloc_arenas()  # before any thread starts
    logs.setup(cfg.log_level, cfg.device_id, cfg.log_format)
    from agent.daemon import Agent
    from agent.identity import IdentityError

    try:
        agent = Agent(cfg, checkpoint=test_checkpoint(cfg, os.environ))
    except IdentityError as exc:  # e.g. not enrolled yet, or a key others can read
        print(f"edgefleet-agent: {exc}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.request_stop())
    _stack_dumps()
    agent.run_until_stopped()
    return 0


def _stack_dumps() -> None:
    """A crash in native code (a runtime's library) prints every thread's Python stack to stderr, and
    ``kill -USR1 <agent>`` prints them without stopping the agent: what a hung agent is doing."""
    faulthandler.enable(all_threads=True)
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)


def test_checkpoint(cfg: AgentConfig, environ: Mapping[str, str]) -> Checkpoint | None:
    """The crash tests' pause hook: only when its environment variable is set and the config says
    ``development = true`` (it logs a warning then); set on any other agent, it is refused with an error."""
    from agent.ota import testhook

    want = environ.get(testhook.ENV)
    if not want:
        return None
    if not cfg.development:
        log.error(
            "%s=%s is set but this agent is not a development agent (development = true in its "
            "config): the test pause hook is refused and updates run normally; remove the variable",
            testhook.ENV,
            want,
        )
        return None
    return testhook.from_env(cfg.data_dir, dict(environ))


def _enrol(cfg: AgentConfig, token: str, url: str | None) -> int:
    from agent.identity import IdentityError, IdentityPaths, enrol

    if cfg.identity is None:
        print("edgefleet-agent: add an [identity] table to the config to enrol", file=sys.stderr)
        return 2
    url = url or cfg.identity.controller_url
    if not url:
        print("edgefleet-agent: no controller URL: pass --controller or set [identity] controller_url", file=sys.stderr)
        return 2
    try:
        expiry = enrol(url, token, cfg.device_id, IdentityPaths(cfg.identity.directory), cafile=cfg.identity.controller_ca_file)
    except IdentityError as exc:
        print(f"edgefleet-agent: enrolment failed: {exc}", file=sys.stderr)
        return 1
    print(f"enrolled {cfg.device_id}; certificate valid until {expiry.isoformat()}")
    return 0
