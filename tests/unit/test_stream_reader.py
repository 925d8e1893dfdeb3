"""The local API's request reader: JSON lines and frames, however the bytes arrive.

A real socket pair; the sender writes the same byte stream in chunks of random sizes
(down to one byte), so requests straddle ``recv_into`` calls, the buffer wraps and grows.
"""

from __future__ import annotations

import json
import random
import socket
import threading

import numpy as np
import pytest

from agent.localapi import framing

pytestmark = pytest.mark.unit


def _stream(requests: list[bytes], chunks: list[int]) -> list[object]:
    a, b = socket.socketpair()
    data = b"".join(requests)

    def send() -> None:
        i = k = 0
        while i < len(data):
            n = chunks[k % len(chunks)]
            a.sendall(data[i : i + n])
            i, k = i + n, k + 1
        a.close()

    t = threading.Thread(target=send)
    t.start()
    reader = framing.StreamReader(b, 1 << 20, size=64)  # a small buffer: it must move and grow
    got: list[object] = []
    try:
        while (req := reader.next()) is not None:
            got.append(req)
    finally:
        t.join()
        b.close()
    return got


@pytest.mark.parametrize("seed", range(6))
def test_requests_come_out_whole_whatever_the_chunking(seed: int) -> None:
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    requests, expected = [], []
    for i in range(40):
        if rng.random() < 0.3:
            line = json.dumps({"op": "ping", "i": i, "pad": "x" * rng.randrange(0, 300)}).encode() + b"\n"
            requests.append(line)
            expected.append(line)
        else:
            rows = rng.choice([1, 1, 1, 3, 50])  # the same header again and again, and a large frame now and then
            x = np_rng.normal(size=(rows, 64)).astype(np.float32)
            requests.append(framing.encode({"op": "predict", "role": "production"}, [("", x)]))
            expected.append(x)
    requests.append(b'{"op": "ping"}')  # the last line may end without a newline
    expected.append(b'{"op": "ping"}')
    chunks = [rng.choice([1, 2, 7, 64, 500, 4096]) for _ in range(50)]
    got = _stream(requests, chunks)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        if isinstance(e, bytes):
            assert g == e
        else:
            assert isinstance(g, tuple)
            header, arrays = g
            assert header["op"] == "predict" and not arrays[""].flags.writeable
            np.testing.assert_array_equal(arrays[""], e)


def test_arrays_stay_valid_after_the_buffer_moves_on() -> None:
    xs = [np.full((1, 8), float(i), np.float32) for i in range(30)]
    got = _stream([framing.encode({"op": "predict"}, [("", x)]) for x in xs], [13])
    for (_, arrays), x in zip(got, xs, strict=True):  # type: ignore[misc]
        np.testing.assert_array_equal(arrays[""], x)


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"\x00EF1\x05\x00\x00\x00{bad}", framing.FrameError),
        (b"\x00XXX\x02\x00\x00\x00{}", framing.FrameError),
        (framing.encode({"op": "predict"}, [("", np.zeros((1, 4), np.float32))])[:-3], framing.FrameError),
        (b'{"op": "' + b"x" * 3000, framing.LineTooLong),
    ],
    ids=["header-not-json", "bad-magic", "truncated-data", "line-too-long"],
)
def test_bad_or_truncated_requests_raise(payload: bytes, error: type[Exception]) -> None:
    a, b = socket.socketpair()
    a.sendall(payload)
    a.close()
    reader = framing.StreamReader(b, 1024, size=64)
    with pytest.raises(error):
        reader.next()
    b.close()
