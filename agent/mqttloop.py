"""One thread driving the sockets of many MQTT clients (paho's external-loop API) with one selector.

An agent on a device runs its link with paho's own ``loop()``, which waits in
``select()``: fine for one socket, but ``select()`` refuses file descriptors
above 1023, so a process holding hundreds of agents (the simulator) fails once
its descriptors pass that. Here one :class:`MqttLoop` per process waits on
every client's socket with ``selectors.DefaultSelector`` (epoll on Linux) and
calls ``loop_read``/``loop_write`` for the ready ones and ``loop_misc`` (keep
alive) once per tick; timers run reconnects. Clients are attached with
:meth:`MqttLoop.attach`, which sets paho's socket callbacks.

Only this thread touches the selector. paho calls the write-registration
callback from whichever thread published; that request is queued here and the
loop is woken through a socket pair. A write interest lost to a race between a
publishing thread and the loop is picked up at the next tick (``want_write``).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.mqttclient import mqtt

__all__ = ["MqttLoop"]
log = logging.getLogger(__name__)
_R, _RW = selectors.EVENT_READ, selectors.EVENT_READ | selectors.EVENT_WRITE


class MqttLoop:
    def __init__(self, name: str = "mqtt-loop", tick_s: float = 1.0) -> None:
        self.tick_s = tick_s  # seconds between keep-alive checks of every client
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, _R, None)
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._clients: set[mqtt.Client] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.errors = 0  # callbacks that raised (logged, never stop the loop)

    # -- any thread ------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=10.0)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def in_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread (in order with other calls)."""
        self._calls.put(fn)
        if not self.in_loop():
            self._wake()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread after ``delay`` seconds."""
        when = time.monotonic() + max(0.0, delay)
        self.call_soon(lambda: heapq.heappush(self._timers, (when, next(self._order), fn)))

    def attach(self, client: mqtt.Client) -> None:
        """Drive ``client`` from this loop: call before its first ``connect``."""
        client.on_socket_open = self._on_open
        client.on_socket_close = self._on_close
        client.on_socket_register_write = self._on_want_write
        client.on_socket_unregister_write = self._on_done_write
        self.call_soon(lambda: self._clients.add(client))

    def detach(self, client: mqtt.Client) -> None:
        def drop() -> None:
            self._clients.discard(client)
            sock = client.socket()
            if sock is not None:
                self._unregister(sock)

        self.call_soon(drop)

    @property
    def clients(self) -> int:
        return len(self._clients)

    # -- paho's socket callbacks (open/close on the loop thread; writes from any) ---
    def _on_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._in_loop_or_soon(lambda: self._register(sock, client))

    def _on_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self.in_loop():
            self._unregister(sock)
        else:  # the fd may be closed (and reused) before the call runs: epoll forgets closed fds itself
            self.call_soon(lambda: self._unregister(sock))

    def _on_want_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._in_loop_or_soon(lambda: self._interest(sock, client, _RW))

    def _on_done_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._in_loop_or_soon(lambda: self._interest(sock, client, _R))

    # -- loop thread -------------------------------------------------------------
    def _in_loop_or_soon(self, fn: Callable[[], None]) -> None:
        if self.in_loop():
            fn()
        else:
            self.call_soon(fn)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already woken (the pair is full), or closed at stop

    def _register(self, sock: Any, client: mqtt.Client) -> None:
        try:
            self._sel.register(sock, _RW if client.want_write() else _R, client)
        except KeyError:
            self._sel.modify(sock, _R, client)
        except (ValueError, OSError):
            pass  # closed already

    def _unregister(self, sock: Any) -> None:
        try:
            self._sel.unregister(sock)
        except (KeyError, ValueError, OSError):
            pass

    def _interest(self, sock: Any, client: mqtt.Client, events: int) -> None:
        current: Any = client.socket()
        if sock is None or current is not sock:
            return  # a request for a socket already replaced or closed
        try:
            key = self._sel.get_key(current)
        except (KeyError, ValueError):
            return
        if key.events != events:
            self._sel.modify(current, events, client)

    def _run(self) -> None:
        next_tick = time.monotonic() + self.tick_s
        while not self._stop.is_set():
            timeout = min(next_tick, self._timers[0][0] if self._timers else next_tick) - time.monotonic()
            try:
                ready = self._sel.select(max(0.0, timeout))
            except OSError:
                if self._stop.is_set():
                    return
                raise
            for key, events in ready:
                if key.data is None:
                    self._drain_wake()
                    continue
                self._serve(key.data, key.fileobj, events)
            self._run_calls()
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                self._guard(heapq.heappop(self._timers)[2])
            if now >= next_tick:
                next_tick = now + self.tick_s
                self._tick()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _run_calls(self) -> None:
        while True:
            try:
                fn = self._calls.get_nowait()
            except queue.Empty:
                return
            self._guard(fn)

    def _serve(self, client: mqtt.Client, sock: Any, events: int) -> None:
        if events & selectors.EVENT_READ:
            self._guard(client.loop_read)
            pending = getattr(sock, "pending", None)  # TLS: whole records already decrypted wait in the SSL object
            while pending is not None and client.socket() is sock and pending() > 0:
                self._guard(client.loop_read)
        if events & selectors.EVENT_WRITE and client.socket() is sock:
            self._guard(client.loop_write)

    def _tick(self) -> None:
        for client in list(self._clients):
            sock = client.socket()
            if sock is None:
                continue
            self._guard(client.loop_misc)
            if client.want_write() and client.socket() is sock:
                self._interest(sock, client, _RW)

    def _guard(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:  # one client's trouble must never stop the others
            self.errors += 1
            log.exception("MQTT loop callback failed")
