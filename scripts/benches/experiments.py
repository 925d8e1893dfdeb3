"""Experiment statistics by simulation (firmware_sim/experiment_sim.py), the production code on every look.

- ``aa_false_positive_rate``: A/A experiments (250 devices per arm, a look after
  each of 30 windows, 20 labels per device per window, devices differing by 0.05
  in accuracy) in which the always-valid interval ever excluded zero; alpha 0.05.
  ``aa_peeked_fixed_horizon_rate`` and ``aa_per_inference_rate`` are the same
  data analysed the invalid ways (a fixed-horizon z-test at every look; a
  binomial variance treating every prediction as independent).
- ``power``: share of experiments with a real +0.02 accuracy effect detected
  within the same 15,000 device-windows.
- ``srm_detected``: 1 if the chi-square check flags at least 90 % of simulated
  10,000-device experiments in which one arm lost 10 % of its devices
  (``srm_detection_rate``, ``srm_false_alarm_rate`` beside it).
- ``bandit_regret_vs_uniform``: Thompson weights (floor 0.05, updated per window
  from 10 % labelled requests) on arms of 0.80 and 0.85, regret ÷ the regret of a
  fixed 50/50 split, mean over 20 seeds; ``bandit_min_weight`` the smallest weight seen.
"""

from __future__ import annotations

import sys
import time

from firmware_sim.experiment_sim import Design, simulate_bandit, simulate_peeking, simulate_srm

AA_SIMS, POWER_SIMS, SRM_SIMS, BANDIT_SEEDS = 4000, 1000, 2000, 20


def run() -> dict[str, object]:
    t0 = time.perf_counter()
    aa = simulate_peeking(Design(effect=0.0), sims=AA_SIMS, seed=101)
    print(f"A/A: {aa.always_valid_rejections}/{aa.sims} rejected", file=sys.stderr)
    pw = simulate_peeking(Design(effect=0.02), sims=POWER_SIMS, seed=102)
    print(f"power: {pw.always_valid_rejections}/{pw.sims} detected", file=sys.stderr)
    srm = simulate_srm(devices=10_000, loss=0.10, sims=SRM_SIMS, seed=103)
    bandits = [simulate_bandit(rates=(0.80, 0.85), floor=0.05, seed=s) for s in range(BANDIT_SEEDS)]
    ratio = sum(b.regret for b in bandits) / sum(b.uniform_regret for b in bandits)
    detection = srm.detected_with_loss / srm.sims
    return {
        "aa_false_positive_rate": round(aa.always_valid_rejections / aa.sims, 4),
        "aa_peeked_fixed_horizon_rate": round(aa.peeked_fixed_rejections / aa.sims, 4),
        "aa_per_inference_rate": round(aa.naive_unit_rejections / aa.sims, 4),
        "power": round(pw.always_valid_rejections / pw.sims, 4),
        "power_device_windows": Design(effect=0.02).device_windows,
        "srm_detected": int(detection >= 0.9),
        "srm_detection_rate": round(detection, 4),
        "srm_false_alarm_rate": round(srm.flagged_without_loss / srm.sims, 4),
        "bandit_regret_vs_uniform": round(ratio, 4),
        "bandit_min_weight": round(min(b.min_weight for b in bandits), 4),
        "simulations": aa.sims + pw.sims + 2 * srm.sims + len(bandits),
        "experiments_bench_s": round(time.perf_counter() - t0, 1),
    }
