"""What the demo says of a pipeline run: the dataset, int8 against the incumbent, the gate; the controller's reasons
when nothing was registered (the demo then fails)."""

from __future__ import annotations

from typing import Any

import pytest

from firmware_sim.demo_retrain import PipelineFailed, decision_line, run_report, run_summary

pytestmark = [pytest.mark.unit]


def _run(state: str, reason: str = "", **result: Any) -> dict[str, Any]:
    gate = {"passed": state != "refused", "stats": {"rows": 3675, "labelled": 2811, "raw_rows": 3675}}
    return {"id": 1, "model": "digits", "state": state, "reason": reason, "dataset_sha256": "d4c1ac60d077" + "0" * 52,
            "version": 4 if state == "registered" else None, "parent_version": 3,
            "result": {"gate": gate, **result}}  # fmt: skip


METRICS = {"accuracy_int8": 0.988, "accuracy_float": 0.9876, "incumbent_accuracy": 0.906, "train_rows": 2235,
           "holdout_rows": 576, "int8_bytes": 190_000, "int8_size_ratio": 0.28}  # fmt: skip
EVALUATION = {
    "slices": [{"set": "holdout", "slice": "all", "n": 576, "candidate": 0.988, "incumbent": 0.906},
               {"set": "fleet", "slice": "all", "n": 109, "candidate": 0.9817, "incumbent": 0.8257}],
    "verdict": {"blessed": True, "reasons": ["fleet/all: 98.17% vs incumbent 82.57%; no judged slice worse"]},
}  # fmt: skip


def test_a_registered_run_is_told_with_its_dataset_accuracies_and_verdict() -> None:
    lines = run_report(_run("registered", "digits v4 registered", metrics=METRICS, evaluation=EVALUATION))
    assert lines == [
        "dataset d4c1ac60d077: 3675 captured samples, 2811 labelled, 3675 with the sensor's raw frame; "
        "trained on 2235, 576 held out",
        "int8 accuracy 98.8% (float 98.8%) vs the incumbent v3's 90.6% on the held-out samples; "
        "on what the fleet sees now (109 recent samples) 98.2% vs 82.6%",
        "blessing gate: blessed — fleet/all: 98.17% vs incumbent 82.57%; no judged slice worse",
        "registered digits v4 (int8 TFLite, 186 KiB, 0.28 of the float model), waiting for an approver",
    ]
    assert run_summary(_run("registered", metrics=METRICS, evaluation=EVALUATION)) == (
        "dataset d4c1ac60d077 of 3675 captured samples (2811 labelled); int8 98.8% vs v3's 90.6% held out, "
        "98.2% vs 82.6% on what the fleet sees now; blessed, registered as v4"
    )


@pytest.mark.parametrize(
    ("state", "reason", "said"),
    [
        ("refused", "minimum size: 50 labelled rows; at least 200", "the quality gate refused the dataset d4c1ac60d077"),
        ("not_blessed", "fleet/all: 80.00% vs incumbent 82.57%; must improve", "was not blessed (int8 98.8% vs the "),
        ("failed", "runner: no result after 600 s", "ended failed"),
    ],
)
def test_a_run_without_a_registered_model_fails_the_demo_with_the_controllers_reason(state: str, reason: str, said: str):
    with pytest.raises(PipelineFailed) as exc:
        run_report(_run(state, reason, metrics=METRICS, evaluation=EVALUATION))
    assert said in str(exc.value) and reason in str(exc.value)


def test_a_decision_is_told_with_its_cohort_reason_and_run() -> None:
    d = {"id": 7, "cohort": "*", "reason": "retrain digits: drift in at least 50% ... (8/8, 7/8)", "run_id": 2}
    assert decision_line(d) == (
        "the controller decided (decision 7, cohort *): retrain digits: drift in at least 50% ... (8/8, 7/8); pipeline run 2"
    )
