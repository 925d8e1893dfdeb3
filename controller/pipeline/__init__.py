"""The training pipeline and the retraining policy (docs/pipeline.md).

Modules, in the order a run uses them: ``datasets`` (captured samples as Parquet,
immutable content-hashed snapshots, DuckDB joins), ``gate`` (the quality gate),
``train`` (Keras, TensorFlow imported only inside it), ``quantize`` (int8 TFLite,
int8 ONNX), ``evaluate`` (int8 candidate against the incumbent per slice, the
blessing rule), ``register`` (bundle, lineage, approval request), ``run`` (the
steps in order), ``runner`` (in-process or a Kubernetes Job), ``policy`` (when to
retrain: pure), ``job`` (the leader's periodic decision), ``demo`` (digits with
simulated sensor degradation). Importing this package loads none of TensorFlow.
"""
