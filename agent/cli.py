"""``edgefleet-agent``: run the device agent, or check its configuration."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from agent import __version__
from agent.config import ConfigError, load_config

DEFAULT_CONFIG = Path("/etc/edgefleet/agent.toml")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edgefleet-agent", description="edgefleet device agent")
    p.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG, help=f"TOML config (default {DEFAULT_CONFIG})")
    p.add_argument("--check-config", action="store_true", help="validate the config file and exit")
    p.add_argument("--version", action="version", version=f"edgefleet-agent {__version__}")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"edgefleet-agent: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"{args.config}: OK (device {cfg.device_id}, broker {cfg.broker.host}:{cfg.broker.port})")
        return 0
    logging.basicConfig(level=cfg.log_level, format=f"%(asctime)s %(levelname)s [{cfg.device_id}] %(name)s: %(message)s")
    from agent.daemon import Agent

    Agent(cfg).run_forever()
    return 0
