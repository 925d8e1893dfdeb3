"""Bare Unix-socket echo server with the local API's binary framing: the baseline of ``socket_ratio``.

Per connection one thread reads a frame (``agent.localapi.framing``, as the agent does) and
answers with a frame of the agent's answer shape: a header with ok/prediction id/model/version
and one float32 array of the given shape. No model, no host: only the socket and the framing.

    python scripts/benches/_socket_echo.py SOCKET_PATH N_OUTPUTS
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from agent.localapi import framing


def serve(conn: socket.socket, n_out: int) -> None:
    f = conn.makefile("rb")
    out = np.zeros((1, n_out), np.float32)
    i = 0
    while True:
        try:
            frame = framing.read_frame(f.read, 8 * 1024 * 1024)
        except (framing.FrameError, OSError):
            break
        if frame is None:
            break
        i += 1
        head = {"ok": True, "prediction_id": f"0123456789ab-{i:x}", "model": "digits", "version": 1, "role": "production"}
        conn.sendall(framing.encode(head, [("probs", out)]))
    f.close()
    conn.close()


def main() -> None:
    path, n_out = sys.argv[1], int(sys.argv[2])
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn, n_out), daemon=True).start()


if __name__ == "__main__":
    main()
