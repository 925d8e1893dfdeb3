"""Bare Unix-socket echo server with the local API's binary framing: the baseline of ``socket_ratio``.

Per connection one thread reads requests with the agent's reader (``framing.StreamReader``: one
reused buffer, ``recv_into``, headers parsed once per connection) and answers with a frame of the
agent's answer shape, built the way the agent builds it (fixed header bytes around a fresh
prediction id, then one float32 array of the given shape), sent with one ``sendall``. No model,
no host, no telemetry: only the socket and the framing, as fast as this Python can do them.

    python scripts/benches/_socket_echo.py SOCKET_PATH N_OUTPUTS
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from agent.localapi import framing


def _model(path: str) -> Any:
    """``run(array) -> output``: the ONNX session core as ``agent.runtime.onnx_rt`` calls it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(Path(path).read_bytes(), sess_options=opts, providers=["CPUExecutionProvider"])
    core, name, outputs = sess._sess, sess.get_inputs()[0].name, [sess.get_outputs()[0].name]
    return lambda arr: core.run(outputs, {name: arr}, None)[0]


def serve(conn: socket.socket, n_out: int, run: Any = None) -> None:
    reader = framing.StreamReader(conn, 8 * 1024 * 1024)
    out = np.zeros((1, n_out), np.float32)
    head = {"ok": True, "model": "digits", "version": 1, "role": "production", "prediction_id": "\x00"}
    frame = framing.encode(head, [("probs", out)])
    text = frame[framing.PREFIX.size : framing.PREFIX.size + framing.PREFIX.unpack_from(frame)[1]]
    before, after = text.split(b'"\\u0000"')
    before, after = before + b'"', b'"' + after
    prefix = "0123456789ab-"
    i = 0
    while True:
        try:
            req = reader.next()
        except (framing.FrameError, framing.LineTooLong, OSError):
            break
        if req is None or isinstance(req, bytes):
            break
        if run is not None:
            out = run(req[1][""])
        i += 1
        pid = f"{prefix}{i:x}".encode()
        conn.sendall(
            b"".join((framing.PREFIX.pack(framing.MAGIC, len(before) + len(pid) + len(after)), before, pid, after, out.data))
        )
    conn.close()


def main() -> None:
    path, n_out = sys.argv[1], int(sys.argv[2])
    run = _model(sys.argv[3]) if len(sys.argv) > 3 else None
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn, n_out, run), daemon=True).start()


if __name__ == "__main__":
    main()
