"""``edgefleet-sim``: run simulated fleets of real agents."""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edgefleet-sim", description="simulated edgefleet fleets")
    sub = p.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help="run the local demo fleet (what `make demo` runs)")
    demo.add_argument("--devices", type=int, default=3)
    demo.add_argument("--workdir", type=Path, default=Path(".demo"))
    args = p.parse_args(argv)
    if args.cmd == "demo":
        from firmware_sim.demo import run

        run(devices=args.devices, workdir=args.workdir)
    return 0
