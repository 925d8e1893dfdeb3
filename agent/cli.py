"""``edgefleet-agent``: run the device agent, or check its configuration."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent import __version__, logs
from agent.config import AgentConfig, ConfigError, load_config

DEFAULT_CONFIG = Path("/etc/edgefleet/agent.toml")


def main(argv: list[str] | None = None) -> int:
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
    p.add_argument("--enrol", metavar="TOKEN", help="enrol this device with a one-time token, then exit")
    p.add_argument("--controller", metavar="URL", help="controller URL for --enrol (default: [identity] controller_url)")
    p.add_argument("--version", action="version", version=f"edgefleet-agent {__version__}")
    args = p.parse_args(argv)
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
        agent = Agent(cfg)
    except IdentityError as exc:  # e.g. not enrolled yet, or a key others can read
        print(f"edgefleet-agent: {exc}", file=sys.stderr)
        return 2
    agent.run_forever()
    return 0


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
