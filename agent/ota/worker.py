"""The update stack in a short-lived child process: python-tuf, HTTP downloads, Ed25519 checks.

The agent serves models for months; it updates them a few times. python-tuf,
securesystemslib, urllib3, ``http.client``/``email`` and ``cryptography`` together keep
~15 MB resident once imported, for good. So the agent never imports them: each desired
state's signature check, each DOWNLOADING step and each metadata refresh (ADR 0082) runs in
``python -m agent.ota.worker``, which exits when it is done (ADR 0062).

Protocol: the agent writes one JSON request line to the child's stdin; the child writes
JSON lines to stdout: ``{"trusted": true}`` once the image repository vouched for the
assignment, ``{"progress": [got, total]}`` now and then while downloading (the agent
answers each with a line, so a checkpoint can hold the download where it is), and one
``{"result": ...}`` at the end. Logs go to stderr, which is the agent's. The child dies
with the agent (``PR_SET_PDEATHSIG``). What the child decides is what the same functions
decide in-process (``agent.ota.download``, ``shared.signing.verify_document``); with
``[download] isolated = false``, or where a child cannot start (the agent falls back and
says so), they run in the agent itself.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.ota.fetcher import Progress
    from shared.messages import Assignment

log = logging.getLogger(__name__)
PROGRESS_STEPS = 16  # progress reports per download (the half-way checkpoint needs one at or after half)


class WorkerError(Exception):
    """The update process could not be started or did not answer; the message says why."""


class Preempted(WorkerError):
    """The operation was stopped for an install (:meth:`UpdateWorker.preempt`)."""


class UpdateWorker:
    """The agent's side: one child process per operation."""

    def __init__(self, cfg: AgentConfig, *, argv: list[str] | None = None) -> None:
        self.cfg = cfg
        self.argv = argv or [sys.executable, "-m", "agent.ota.worker"]
        self._config = _encode_config(cfg)
        self._lock = threading.Lock()  # one child at a time
        self._usable: bool | None = None  # does a child start and answer here? (asked once)
        self._running_lock = threading.Lock()
        self._running: subprocess.Popen[bytes] | None = None  # the child of a preemptible operation, while it runs
        self._preempted = False

    def usable(self) -> bool:
        """Whether update processes work on this device; if not (e.g. an agent under qemu-user, whose
        interpreter the host cannot exec), the agent does the work itself and says so once."""
        if self._usable is None:
            try:
                self._usable = self._call({"op": "ping"}).get("pong") is True
            except WorkerError as exc:
                log.warning("update steps run in the agent process (more memory): %s", exc)
                self._usable = False
        return self._usable

    def verify(self, envelope: Any) -> dict[str, Any]:
        """The ``signed`` part of a desired-state envelope if a trusted director key signed it;
        ``shared.errors.SignatureError`` otherwise (the reason from ``verify_document``)."""
        from shared.errors import SignatureError

        if not self.usable():
            from shared.signing import key_id, load_public_key, verify_document

            keys = [load_public_key(k) for k in self.cfg.director_public_keys]
            return verify_document(envelope, {key_id(k): k for k in keys})
        result = self._call({"op": "verify", "envelope": envelope, "keys": list(self.cfg.director_public_keys)})
        if "error" in result:
            raise SignatureError(str(result["error"]))
        signed = result.get("signed")
        if not isinstance(signed, dict):
            raise SignatureError(f"the update process could not check the signature: {result.get('reason', result)}")
        return signed

    def fetch_target(
        self,
        a: Assignment,
        *,
        arch: str,
        dest: Path,
        attempts: int,
        on_trusted: Callable[[], None],
        progress: Progress | None,
        stored: bool = False,
    ) -> tuple[str | None, bool]:
        """``agent.ota.download.fetch_target`` in the child; a child that fails is a transient failure."""
        if not self.usable():
            from agent.ota import download

            repo = _image_repo(self.cfg)
            if repo is None:
                return "no image repository configured: cannot verify the release signature", False
            return download.fetch_target(
                repo,
                _fetcher(self.cfg),
                a,
                arch=arch,
                dest=dest,
                attempts=attempts,
                on_trusted=on_trusted,
                progress=progress,
                stored=stored,
            )
        req = {
            "op": "fetch_target",
            "assignment": [a.model, a.version, a.sha256, a.length, a.url],
            "arch": arch,
            "dest": str(dest),
            "attempts": attempts,
            "stored": stored,
        }
        try:
            result = self._call(req, on_trusted=on_trusted, progress=progress)
        except WorkerError as exc:
            return f"download failed: {exc}", True
        reason = result.get("reason")
        return (str(reason) if reason is not None else None), bool(result.get("transient"))

    def metadata_digest(self, *, waiting: Callable[[], bool] | None = None) -> tuple[str | None, str]:
        """Refresh the release metadata: (a digest of the verified targets, "") or (None, why not).

        Preemptible: :meth:`preempt` stops it (:class:`Preempted`), so an install or a rollback never waits for it;
        ``waiting`` says whether work already waits (then it stops as soon as its child started: no race)."""
        if not self.usable():
            from agent.ota import download

            repo = _image_repo(self.cfg)
            return (None, "no image repository configured") if repo is None else download.metadata_digest(repo)
        try:
            result = self._call({"op": "metadata_digest"}, preemptible=True, waiting=waiting)
        except Preempted:
            raise
        except WorkerError as exc:
            return None, str(exc)
        digest = result.get("digest")
        return (str(digest), "") if digest is not None else (None, str(result.get("reason", result)))

    def preempt(self) -> bool:
        """Stop a preemptible operation (a metadata refresh) in progress; True if one was stopped.

        Safe for the metadata: python-tuf writes each file atomically, and so does the listing record."""
        with self._running_lock:
            child = self._running
            if child is None:
                return False
            self._preempted = True
        try:
            child.kill()
        except OSError:
            pass
        return True

    def _call(
        self,
        request: dict[str, Any],
        *,
        on_trusted: Callable[[], None] | None = None,
        progress: Progress | None = None,
        preemptible: bool = False,
        waiting: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            try:
                child = subprocess.Popen(
                    self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True, cwd=str(self.cfg.data_dir)
                )
            except OSError as exc:
                raise WorkerError(f"cannot start the update process {self.argv[0]}: {exc}") from None
            assert child.stdin is not None and child.stdout is not None
            if preemptible:
                with self._running_lock:
                    self._running, self._preempted = child, False
                if waiting is not None and waiting():  # arrived before the child was registered: stop it now
                    self.preempt()
            try:
                _send(child.stdin, {**request, "config": self._config})
                for line in child.stdout:
                    msg = json.loads(line)
                    if "result" in msg:
                        result: dict[str, Any] = msg["result"]
                        return result
                    if "trusted" in msg and on_trusted is not None:
                        on_trusted()
                    elif "progress" in msg:
                        got, total = msg["progress"]
                        if progress is not None:
                            progress(int(got), int(total))
                        _send(child.stdin, {"go": True})
                if self._preempted and preemptible:
                    raise Preempted("stopped for an install")
                raise WorkerError(f"update process ended without an answer (exit code {child.wait()})")
            except (OSError, ValueError, TypeError, KeyError) as exc:
                if self._preempted and preemptible:
                    raise Preempted("stopped for an install") from None
                raise WorkerError(f"update process failed: {type(exc).__name__}: {exc}") from None
            finally:
                if preemptible:
                    with self._running_lock:
                        self._running = None
                for stream in (child.stdin, child.stdout):
                    try:
                        stream.close()
                    except OSError:
                        pass
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()


def _fetcher(cfg: AgentConfig) -> Any:
    from agent.ota.build import make_fetcher

    return make_fetcher(cfg)


def _image_repo(cfg: AgentConfig) -> Any:
    from agent.ota.build import make_fetcher, make_image_repo

    return make_image_repo(cfg, make_fetcher(cfg))


def _send(stream: IO[bytes], obj: dict[str, Any]) -> None:
    stream.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
    stream.flush()


def _encode_config(cfg: AgentConfig) -> str:
    import msgspec

    return base64.b64encode(msgspec.json.encode(cfg, enc_hook=str)).decode()


def _decode_config(data: str) -> AgentConfig:
    import msgspec

    from agent.config import AgentConfig

    def dec_hook(kind: type, value: Any) -> Any:
        if kind is Path:
            return Path(value)
        raise NotImplementedError(kind)

    return msgspec.json.decode(base64.b64decode(data), type=AgentConfig, dec_hook=dec_hook)


# -- the child ---------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """Linux: SIGKILL when the agent dies, so no download outlives it (a crash test SIGKILLs the agent)."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def serve(request: dict[str, Any], out: IO[bytes], answers: IO[bytes]) -> dict[str, Any]:
    """Do what ``request`` asks; progress and trust reports go to ``out``, acknowledgements come on ``answers``."""
    op = request.get("op")
    if op == "ping":
        return {"pong": True}
    if op == "verify":
        from shared.errors import ProtocolError
        from shared.signing import key_id, load_public_key, verify_document

        keys = [load_public_key(k) for k in request["keys"]]
        try:
            return {"signed": verify_document(request["envelope"], {key_id(k): k for k in keys})}
        except ProtocolError as exc:
            return {"error": str(exc)}
    cfg = _decode_config(request["config"])
    from agent.logs import setup

    setup(cfg.log_level, cfg.device_id, cfg.log_format)
    from agent.ota import download

    repo = _image_repo(cfg)
    if repo is None:
        return {"reason": "no image repository configured: cannot verify the release signature", "transient": False}
    if op == "metadata_digest":
        digest, why = download.metadata_digest(repo)
        return {"digest": digest, "reason": why}
    if op != "fetch_target":
        raise ValueError(f"unknown op {op!r}")
    from shared.messages import Assignment

    model, version, sha256, length, url = request["assignment"]
    a = Assignment(str(model), int(version), str(sha256), int(length), str(url))
    step = [0]

    def progress(got: int, total: int) -> None:
        k = got * PROGRESS_STEPS // max(total, 1)
        if k > step[0] or got >= total:
            step[0] = k
            _send(out, {"progress": [got, total]})
            answers.readline()  # the agent's go-ahead (a checkpoint may hold us here)

    reason, transient = download.fetch_target(
        repo,
        repo.fetcher,
        a,
        arch=str(request["arch"]),
        dest=Path(request["dest"]),
        attempts=int(request["attempts"]),
        on_trusted=lambda: _send(out, {"trusted": True}),
        progress=progress,
        stored=bool(request.get("stored", False)),
    )
    return {"reason": reason, "transient": transient}


def main() -> int:
    _die_with_parent()
    out, answers = sys.stdout.buffer, sys.stdin.buffer
    sys.stdout = sys.stderr  # anything printed by accident must not corrupt the protocol
    request = json.loads(answers.readline())
    try:
        result = serve(request, out, answers)
    except Exception as exc:  # the agent gets a reason, never a hang
        logging.getLogger(__name__).exception("update process failed")
        result = {"reason": f"update process failed: {type(exc).__name__}: {exc}", "transient": True}
    _send(out, {"result": result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
