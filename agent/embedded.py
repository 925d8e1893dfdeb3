"""In-process mode: the agent's committed model inside the application's own process.

For applications that cannot afford a socket round trip per inference (several models
per camera frame, kHz sensors). The application still leaves the model's life to the
agent: :class:`EmbeddedModel` loads the model the agent committed for a role from the
agent's data directory (the same verified bundle, the same runtime code and feature
spec), follows the agent's hot swaps (the agent replaces ``state.json`` atomically when
it commits; a watcher thread sees it through inotify, or a ``stat`` poll where inotify is
missing, and swaps one reference, so a call in flight finishes on the model it started
with), and hands its telemetry to the agent: every ``window_s`` the calls are binned in
bulk (the agent's own code, ``RoleAccumulator.measure_many``) and the role summary goes to
the agent's socket (op ``summary``), with late labels and, while the agent runs a shadow
model, a sample of inputs for it. So fleet telemetry, shadow comparisons and rollouts see
these inferences as if the agent had served them.

    from agent.embedded import EmbeddedModel

    with EmbeddedModel("/var/lib/edgefleet") as model:      # the agent's data_dir
        r = model.predict(x)                                 # x: float32 array of the model's input shape
        r.outputs["probs"], r.prediction_id, r.model.manifest.version
        model.feedback(r.prediction_id, label=7)             # later

The application needs read access to the agent's data directory and its socket (run it
in the agent's group). ``predict`` is ``ModelHost.predict_arrays``: the per-call cost is
the agent's own request path (ADR 0060), a few hundred ns of Python around the runtime.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from agent.host import ModelHost, Observed
from agent.localapi.client import AgentClient
from agent.ota.store import Store
from agent.runtime import LoadedModel, ModelLoadError, load_model
from agent.telemetry.service import first_top_classes
from agent.telemetry.window import RoleAccumulator
from shared import bundle as bundle_fmt
from shared.errors import ProtocolError

__all__ = ["EmbeddedModel", "NoCommittedModel"]
log = logging.getLogger(__name__)
RECENT = 4096  # predictions remembered for label feedback
SHADOW_SAMPLES = 32  # production inputs handed to the agent's shadow model per window, while it has one
BACKLOG = 4096  # calls waiting for binning before the hand-off thread is woken early
MAX_UNSENT = 60  # summaries kept while the agent cannot be reached (then the oldest is dropped, and logged)


class NoCommittedModel(LookupError):
    """The agent has no committed, loadable model in this role (yet)."""


class EmbeddedModel:
    def __init__(
        self,
        data_dir: Path | str,
        *,
        role: str = "production",
        socket_path: Path | str | None = None,
        window_s: float = 10.0,
        threads: int = 1,
        poll_s: float = 1.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.role = role
        self.socket_path = Path(socket_path) if socket_path is not None else self.data_dir / "agent.sock"
        self.window_s = window_s
        self.threads = threads
        self.poll_s = poll_s
        self._store = Store(self.data_dir)
        self._state_path = self.data_dir / "state.json"
        self.host = ModelHost()  # private: the model serves under "production" here; summaries name ``role``
        self.host.recording = True
        self._stop = threading.Event()
        self._busy = threading.Event()  # many calls waiting: hand them off before the window ends
        self.host.backlog_limit = BACKLOG
        self.host.on_backlog = self._busy.set
        self._handoff_lock = threading.Lock()
        self._recent: OrderedDict[str, tuple[LoadedModel, float, int]] = OrderedDict()  # pid -> model, window, class
        self._labels: list[dict[str, Any]] = []  # late labels for the next hand-off
        self._unsent: list[dict[str, Any]] = []
        self._shadow_wanted = False
        self._window_start = time.time()
        self.swaps = 0  # hot swaps followed
        self.dropped = 0  # summaries dropped because the agent could not be reached for too long
        self.model = self._load()
        self.host.swap("production", self.model)
        self._stamp = self._state_stamp()
        self.predict = self.host.predict_arrays  # the request path itself: no frame of ours around it
        self._threads = [
            threading.Thread(target=self._watch, name="embedded-watch", daemon=True),
            threading.Thread(target=self._handoff_loop, name="embedded-handoff", daemon=True),
        ]
        for t in self._threads:
            t.start()

    # -- the model the agent committed --------------------------------------------------
    def _load(self) -> LoadedModel:
        self._store.reload()
        slot = self._store.slot(self.role)
        if slot is None:
            raise NoCommittedModel(f"the agent in {self.data_dir} has no committed model in role {self.role!r}")
        current: LoadedModel | None = getattr(self, "model", None)
        if current is not None and current.sha256 == slot.sha256:
            return current
        try:
            b = self._store.verify_bundle(slot.sha256)  # re-hashed against the committed sha256
            model = load_model(b.manifest, b.model, slot.sha256, threads=self.threads)
        except (bundle_fmt.BundleError, ProtocolError, OSError, ModelLoadError) as exc:
            raise NoCommittedModel(f"committed bundle {slot.sha256[:12]}... in role {self.role!r} unusable: {exc}") from exc
        self.host.batch.set(self._store.batch_features)
        return model

    def _state_stamp(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self._state_path)
        except FileNotFoundError:
            return (0, 0, 0)
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def follow(self) -> bool:
        """Load what the agent committed now, if it changed; True if the model was swapped."""
        stamp = self._state_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            model = self._load()
        except NoCommittedModel as exc:
            log.warning("keeping %s v%s: %s", self.model.manifest.name, self.model.manifest.version, exc)
            return False
        if model is self.model:
            return False
        self.model = model
        self.host.swap("production", model)  # one reference: calls in flight finish on the old model
        self.swaps += 1
        log.info("now serving %s v%s (committed by the agent)", model.manifest.name, model.manifest.version)
        return True

    def _watch(self) -> None:
        notify = _Inotify.open(self.data_dir)
        try:
            while not self._stop.is_set():
                if notify is not None:
                    notify.wait(self.poll_s)
                else:
                    self._stop.wait(self.poll_s)
                try:
                    self.follow()
                except Exception:  # the watcher must survive anything; the model keeps serving
                    log.exception("could not follow the agent's committed model")
        finally:
            if notify is not None:
                notify.close()

    # -- telemetry to the agent ----------------------------------------------------------
    def _handoff_loop(self) -> None:
        while not self._stop.is_set():
            self._busy.wait(self.window_s)
            self._busy.clear()
            if self._stop.is_set():
                return
            try:
                self.handoff()
            except Exception:
                log.exception("could not hand the window to the agent")

    def handoff(self) -> None:
        """Bin the calls so far and give the summaries (with late labels, shadow samples) to the agent."""
        with self._handoff_lock:
            self._unsent.extend(self._summaries())
            self._send()

    def _summaries(self) -> list[dict[str, Any]]:
        items = self.host.take_pending()
        start, self._window_start = self._window_start, time.time()
        groups: dict[int, list[Observed]] = {}
        for it in items:
            groups.setdefault(id(it[1]), []).append(it)
        out: list[dict[str, Any]] = []
        for group in groups.values():
            model = group[0][1]
            m = model.manifest
            acc = RoleAccumulator.for_manifest(m, model.sha256)
            in_name, out_name = m.inputs[0].name, m.outputs[0].name
            inputs = [it[2].get(in_name) if isinstance(it[2], dict) else it[2] for it in group]
            outputs = [it[3].get(out_name) if it[3] is not None else None for it in group]
            acc.add_bulk(acc.measure_many([it[4] for it in group], inputs, outputs))
            shadow: list[list[Any]] = []
            ok = [i for i, o in enumerate(outputs) if o is not None]
            if acc.spec.classes and ok:
                predicted = first_top_classes([outputs[i] for i in ok])
                for i, p in zip(ok, predicted, strict=True):
                    self._recent[group[i][5]] = (model, round(start, 3), p)
                while len(self._recent) > RECENT:
                    self._recent.popitem(last=False)
                if self._shadow_wanted and self.role == "production":
                    step = max(1, len(ok) // SHADOW_SAMPLES)
                    picked = list(zip(ok, predicted, strict=True))[::step][:SHADOW_SAMPLES]
                    shadow = [[np.asarray(inputs[i]).tolist(), p] for i, p in picked]
            out.append({"op": "summary", "role": self.role, "sha256": model.sha256, "summary": acc.close(), "shadow": shadow})
        if self._labels:
            labels, self._labels = self._labels, []
            if out:
                out[0]["labels"] = labels
            else:
                cur = self.model
                empty = RoleAccumulator.for_manifest(cur.manifest, cur.sha256).close()
                out.append({"op": "summary", "role": self.role, "sha256": cur.sha256, "summary": empty, "labels": labels})
        return out

    def _send(self) -> None:
        if not self._unsent:
            return
        try:
            with AgentClient(self.socket_path, timeout=10.0) as agent:
                while self._unsent:
                    answer = agent.call(self._unsent[0])
                    self._unsent.pop(0)
                    if answer.get("ok"):
                        self._shadow_wanted = bool(answer.get("shadow"))
                    else:  # the agent refused it (e.g. it no longer has that model): it cannot be added later either
                        log.warning("agent refused an in-process window: %s", answer.get("error"))
        except OSError as exc:
            log.warning("agent unreachable (%s); %d window(s) wait", exc, len(self._unsent))
            while len(self._unsent) > MAX_UNSENT:
                self._unsent.pop(0)
                self.dropped += 1
                log.error("dropped an in-process window: the agent was unreachable for %d windows", MAX_UNSENT)

    def feedback(self, prediction_id: str, label: int) -> dict[str, Any]:
        """The true label of an earlier prediction; it travels to the agent with the next hand-off."""
        with self._handoff_lock:
            entry = self._recent.get(prediction_id)
            if entry is None and self.host.pending:
                self._unsent.extend(self._summaries())  # not binned yet
                entry = self._recent.get(prediction_id)
            if entry is None:
                return {"ok": False, "error": f"unknown or expired prediction_id {prediction_id!r:.80}"}
            model, window_start, predicted = entry
            m = model.manifest
            self._labels.append(
                {"prediction_id": prediction_id, "role": self.role, "model": m.name, "version": m.version,
                 "window_start": window_start, "predicted": predicted, "label": int(label)}
            )  # fmt: skip
        return {"ok": True, "correct": predicted == label}

    def close(self) -> None:
        """Stop following, hand the last calls to the agent."""
        self._stop.set()
        self._busy.set()
        for t in self._threads:
            t.join(timeout=5.0)
        self.host.recording = False
        try:
            self.handoff()
        except Exception:
            log.exception("could not hand the last window to the agent")

    def __enter__(self) -> EmbeddedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Inotify:
    """Linux inotify on one directory, through libc (no dependency): wakes the watcher when a file
    is renamed into it or written (the agent's atomic replace of ``state.json`` is a rename)."""

    _MASK = 0x00000080 | 0x00000008  # IN_MOVED_TO | IN_CLOSE_WRITE

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def open(cls, directory: Path) -> _Inotify | None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
            if fd < 0:
                return None
            if libc.inotify_add_watch(fd, os.fsencode(directory), cls._MASK) < 0:
                os.close(fd)
                return None
        except (OSError, AttributeError):
            return None
        return cls(fd)

    def wait(self, timeout: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            try:
                while os.read(self.fd, 4096):
                    pass
            except BlockingIOError:
                pass

    def close(self) -> None:
        os.close(self.fd)
