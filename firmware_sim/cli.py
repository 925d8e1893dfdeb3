"""``edgefleet-sim``: run simulated fleets of real agents: scenarios, the demo."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edgefleet-sim", description="simulated edgefleet fleets")
    sub = p.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help="run the local demo (what `make demo` runs)")
    demo.add_argument("--devices", type=int, default=50)
    demo.add_argument("--workdir", type=Path, default=Path(".demo"))
    demo.add_argument("--no-wait", action="store_true", help="end when the story is told instead of running until Ctrl-C")
    demo.add_argument("--no-live", action="store_true", help="plain log lines instead of the live terminal view")
    run = sub.add_parser("run", help="play a scenario file (a path, or a name under firmware_sim/scenarios/)")
    run.add_argument("scenario")
    run.add_argument("--workdir", type=Path, default=None, help="where the stack and devices live (default: a temp dir)")
    run.add_argument("--keep", action="store_true", help="keep the work directory even when every check passes")
    sub.add_parser("list", help="list the scenarios that ship with edgefleet")
    args = p.parse_args(argv)
    if args.cmd == "demo":
        from firmware_sim.demo import run as run_demo

        return run_demo(devices=args.devices, workdir=args.workdir, wait=not args.no_wait, live=not args.no_live)
    if args.cmd == "list":
        from firmware_sim.scenario import SCENARIO_DIR, load

        for f in sorted(SCENARIO_DIR.glob("*.*ml")):
            sc = load(str(f))
            print(f"{f.stem:28} {sc.devices:5} devices  {sc.description}")
        return 0
    return _run(args.scenario, args.workdir, args.keep)


def _run(name: str, workdir: Path | None, keep: bool) -> int:
    from firmware_sim.play import play
    from firmware_sim.scenario import ScenarioError, load

    try:
        sc = load(name)
    except ScenarioError as exc:
        print(f"edgefleet-sim: {exc}", file=sys.stderr)
        return 2
    work = workdir or Path(tempfile.mkdtemp(prefix=f"edgefleet-sim-{sc.name}-"))
    print(f"scenario {sc.name}: {sc.devices} devices; {sc.description}", flush=True)
    results = play(sc, work, say=lambda m: print(m, flush=True), keep=keep)
    print(f"\nchecks ({sc.name}):")
    for r in results:
        print(f"  {'PASS' if r.ok else 'FAIL'}  {r.name}: {r.detail}")
    failed = [r for r in results if not r.ok]
    if failed or keep:
        print(f"work directory kept: {work}")
    print(f"{len(results) - len(failed)}/{len(results)} checks passed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
