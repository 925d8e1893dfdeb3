"""Pure checks the updater applies: the director's envelope, and a model's latency on this hardware.

``check_desired`` verifies signature, device, counter and expiry of a
desired-state payload and raises :class:`RejectedError` with the reason;
``latency_p50_ms`` measures a loaded model on its golden vectors. No state, no
I/O beyond running the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Union

from agent.runtime import LoadedModel
from shared.errors import ProtocolError
from shared.messages import Desired, decode_desired_envelope
from shared.schema import Reader

if TYPE_CHECKING:  # cryptography loads where signatures are checked (the update process, by default)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["RejectedError", "Verify", "check_desired", "latency_p50_ms", "median"]
# The director keys (key id -> public key), or a function returning the ``signed`` part of an envelope
# that one of them signed (raising ``shared.errors.SignatureError`` otherwise).
Verify = Union["dict[str, Ed25519PublicKey]", Callable[[Any], "dict[str, Any]"]]


class RejectedError(Exception):
    """A desired state or bundle was refused; the message is the reason."""


def check_desired(payload: bytes, *, device_id: str, trusted: Verify, last_counter: int, at: float) -> Desired:
    """Verify and parse a desired-state payload; raise RejectedError with the reason."""
    try:
        envelope = decode_desired_envelope(payload)
        if callable(trusted):
            signed = trusted(envelope)
        else:
            from shared.signing import verify_document

            signed = verify_document(envelope, trusted)
        desired = Desired.read(Reader(signed, "desired"))
    except ProtocolError as exc:
        raise RejectedError(str(exc)) from None
    if desired.device_id != device_id:
        raise RejectedError(f"desired state is for device {desired.device_id!r}, this is {device_id!r}")
    if desired.counter <= last_counter:
        raise RejectedError(f"replayed or old desired state: counter {desired.counter}, expected > {last_counter}")
    if desired.expires_at <= at:
        raise RejectedError(f"desired state expired at {desired.expires_at:.0f} (now {at:.0f})")
    return desired


def latency_p50_ms(model: LoadedModel, runs: int, *, cpu_clock: bool = True) -> float:  # pragma: no mutate block
    """Median latency of the golden vectors' inputs over ``runs`` inferences.

    With one inference thread the runtime computes on the calling thread, so
    its CPU time (``time.thread_time``) is the model's cost on this hardware,
    undisturbed by live traffic holding the GIL during the check. With more
    threads the wall clock is used.
    """
    clock = time.thread_time if cpu_clock else time.perf_counter
    vectors = model.manifest.golden
    model.predict(vectors[0].inputs)  # warm-up
    times = []
    for i in range(max(runs, 1)):
        inputs = vectors[i % len(vectors)].inputs
        t0 = clock()
        model.predict(inputs)
        times.append((clock() - t0) * 1000.0)
    return median(times)


def median(values: list[float]) -> float:  # pragma: no mutate block
    """The middle value (mean of the two middle ones for an even count); ``values`` must not be empty."""
    s = sorted(values)
    mid = len(s) // 2
    return float(s[mid]) if len(s) % 2 else (s[mid - 1] + s[mid]) / 2.0
