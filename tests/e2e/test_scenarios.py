"""Scenarios end to end: the real controller, Mosquitto and fleet processes of real agents, with faults.

Each runs a small shipped scenario file and requires every printed check to pass;
one scenario whose check cannot hold shows that ``edgefleet-sim run`` fails then.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_sim.play import play
from firmware_sim.procs import REPO
from firmware_sim.scenario import Scenario, Step, load

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def untimed(sc: Scenario) -> Scenario:
    """The scenario with its timing claims left to the printout (speed is for scripts/bench.py, not tests)."""

    def strip(step: Step) -> Step:
        if step.action == "check" and step.args[0] == "rollout_rolled_back":
            return dataclasses.replace(step, args=("rollout_rolled_back", None))
        return step

    return dataclasses.replace(sc, timeline=[strip(s) for s in sc.timeline])


@pytest.mark.parametrize("name", ["rollout-rollback", "power-loss", "partition-flapping", "broker-hang", "experiment-ab"])
def test_shipped_scenario_passes_its_checks(name: str, tmp_path: Path) -> None:
    sc = untimed(load(name))
    lines: list[str] = []
    results = play(sc, tmp_path / name, say=lines.append, keep=True)
    report = "\n".join([*lines, *(f"{'PASS' if r.ok else 'FAIL'} {r.name}: {r.detail}" for r in results)])
    assert results, report
    assert all(r.ok for r in results), report
    names = {r.name.split(" ")[0] for r in results}
    assert {n for n, _ in sc.checks} <= names


def test_a_check_that_does_not_hold_fails_the_run(tmp_path: Path) -> None:
    scenario = tmp_path / "impossible.yaml"
    scenario.write_text(
        "name: impossible\n"
        "models: [{version: 1, epochs: 60}]\n"
        "fleet: [{group: main, devices: 2}]\n"
        "timeline: [{at: 0, assign: 1}, {at: 0, wait: {all_on: 1, timeout_s: 120}}]\n"
        "settle_s: 0\n"
        "checks: [verified_model, {all_on: 7}]\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "firmware_sim.cli", "run", str(scenario), "--workdir", str(tmp_path / "w")],
        capture_output=True, text=True, cwd=REPO, timeout=280,
    )  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    assert "PASS  verified_model" in r.stdout
    assert "FAIL  all_on 7: 0/2 devices on v7" in r.stdout
    assert "1/2 checks passed" in r.stdout


def test_an_invalid_scenario_is_refused_before_anything_starts(tmp_path: Path) -> None:
    scenario = tmp_path / "bad.yaml"
    scenario.write_text("name: bad\nfleet: [{group: main, devices: 2, gpu: true}]\nchecks: [verified_model]\n")
    r = subprocess.run([sys.executable, "-m", "firmware_sim.cli", "run", str(scenario)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2
    assert "bad.yaml.fleet[0]: unknown key 'gpu'" in r.stderr
