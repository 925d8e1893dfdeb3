"""Train a Keras classifier on model inputs (the feature spec already applied).

TensorFlow is imported inside these functions only (the ``train`` extra; several
seconds to import), so importing the controller never loads it. Training is
deterministic: the seed fixes Python's, NumPy's and TensorFlow's generators and
TensorFlow runs with op determinism, so the same data, parameters and seed give
the same weights and the same metrics.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TrainParams:
    hidden: tuple[int, ...] = (512, 256)  # units per hidden dense layer
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 2e-3
    dropout: float = 0.1
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainParams:
        known = set(cls.__dataclass_fields__)
        if set(d) - known:
            raise ValueError(f"training params: unknown key(s) {sorted(set(d) - known)}; expected some of {sorted(known)}")
        return cls(**{**d, **({"hidden": tuple(d["hidden"])} if "hidden" in d else {})})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


def tensorflow(seed: int) -> Any:
    """TensorFlow, imported now, seeded and deterministic (op determinism; one thread per op pool)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # oneDNN's reordered float sums change the last bits
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)  # python, numpy and tensorflow generators
    tf.config.experimental.enable_op_determinism()
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(1)
    except RuntimeError:
        pass  # already initialised in this process: the first setting stays, which is as deterministic
    return tf


def train(x: np.ndarray, y: np.ndarray, n_classes: int, params: TrainParams, progress: Progress | None = None) -> Any:
    """A trained ``tf.keras.Model`` mapping model inputs ``x`` (rows x features) to class probabilities."""
    tf = tensorflow(params.seed)
    inputs = tf.keras.Input(shape=x.shape[1:], name="input")
    h = inputs
    for i, units in enumerate(params.hidden):
        h = tf.keras.layers.Dense(units, activation="relu", name=f"dense{i}")(h)
        if params.dropout:
            h = tf.keras.layers.Dropout(params.dropout, seed=params.seed + i, name=f"dropout{i}")(h)
    outputs = tf.keras.layers.Dense(n_classes, activation="softmax", name="probs")(h)
    model = tf.keras.Model(inputs, outputs, name="classifier")
    model.compile(
        optimizer=tf.keras.optimizers.Adam(params.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )

    class Report(tf.keras.callbacks.Callback):  # type: ignore[misc,name-defined]
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            if progress is not None and (epoch + 1) % max(params.epochs // 5, 1) == 0:
                logs = logs or {}
                progress(
                    f"epoch {epoch + 1}/{params.epochs}: loss {logs.get('loss', 0):.4f}, accuracy {logs.get('accuracy', 0):.4f}"
                )

    model.fit(
        x.astype(np.float32),
        y.astype(np.int64),
        epochs=params.epochs,
        batch_size=params.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=[Report()],
    )
    return model


def predict(model: Any, x: np.ndarray) -> np.ndarray:
    """Float probabilities of the Keras model (the reference the int8 model is compared with)."""
    return np.asarray(model(x.astype(np.float32), training=False), dtype=np.float32)
