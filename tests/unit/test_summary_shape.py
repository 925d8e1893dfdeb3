"""The shape the controller demands (shared.telemetry.summary_shape) is the shape the agent builds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.telemetry.window import RoleAccumulator
from shared.manifest import Manifest
from shared.telemetry import summary_shape

edges = st.one_of(
    st.lists(st.floats(-1e6, 1e6), min_size=0, max_size=6).map(sorted),
    st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=6, unique=True).map(sorted),
    st.just([1, 1]),
    st.just(["a", "b"]),
    st.none(),
)
features = st.lists(st.fixed_dictionaries({"name": st.text("abc", min_size=1, max_size=3), "bin_edges": edges}), max_size=4)
predictions = st.one_of(
    st.fixed_dictionaries({"classes": st.lists(st.integers(), max_size=5)}),
    st.fixed_dictionaries({"bin_edges": edges}),
    st.just({}),
)


def manifest(reference: dict, classes: int) -> Manifest:
    return Manifest.from_dict(
        {
            "schema": 1,
            "name": "m",
            "version": 1,
            "runtime": "onnx",
            "model_file": "model.onnx",
            "model_sha256": "0" * 64,
            "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 4]}],
            "outputs": [{"name": "y", "dtype": "float32", "shape": [1, classes]}],
            "golden": {"vectors": [{"inputs": {}, "outputs": {}}], "atol": 0.0},
            "latency_budget_ms": 5.0,
            "reference": reference,
        }
    )


@given(features, predictions, st.integers(1, 12))
def test_agent_and_controller_agree_on_the_summary_shape(feats, preds, classes) -> None:
    m = manifest({"features": feats, "predictions": preds}, classes)
    s = RoleAccumulator.for_manifest(m, "0" * 64).summary()
    f, n = summary_shape(m.reference, m.outputs[0].shape)
    assert len(s["predictions"]) == n
    assert {k: len(v) for k, v in s["features"].items()} == f


def test_two_features_of_one_name_turn_feature_histograms_off_on_both_sides() -> None:
    # Found by the property test above in a CI run: the controller demanded {"a": 3}, the agent built none.
    feats = [{"name": "a", "bin_edges": [0.0, 1.0]}, {"name": "a", "bin_edges": [0.0, 1.0]}]
    m = manifest({"features": feats, "predictions": {}}, 3)
    assert summary_shape(m.reference, m.outputs[0].shape) == ({}, 3)
    assert RoleAccumulator.for_manifest(m, "0" * 64).summary()["features"] == {}
