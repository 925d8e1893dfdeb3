"""The agent's one HTTP(S) client for talking to the controller.

Bundles and TUF metadata (the fetcher), enrolment and renewal (identity) and
captured samples (capture upload) all open their requests here, so all of them
trust the same certificates: only the controller's CA when the config names one
(``[identity] controller_ca_file``), else the system store. stdlib ``urllib``
keeps the agent light; the TLS context is built on the first https request.
Errors are urllib's (``HTTPError`` for an HTTP status, ``URLError``/``OSError``
when the server cannot be reached or its certificate is not trusted); each
caller maps them to its own exceptions.
"""

from __future__ import annotations

import ssl
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # urllib.request (~2 MB resident) loads with the first request
    import http.client

    from agent.config import AgentConfig
    from agent.identity import DeviceCredential

__all__ = ["ControllerHttp", "from_config"]
USER_AGENT = "edgefleet-agent"


class ControllerHttp:
    """Opens http(s) requests, trusting only ``cafile`` for https when it is set."""

    def __init__(self, *, cafile: Path | None = None, timeout: float = 30.0, credential: DeviceCredential | None = None) -> None:
        self.cafile = cafile
        self.timeout = timeout  # seconds without any byte before a request fails
        self.credential = credential  # signs every request as this device once it has a certificate
        self._context: ssl.SSLContext | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ControllerHttp(cafile={self.cafile!r}, timeout={self.timeout!r})"

    def context(self) -> ssl.SSLContext:
        """The TLS client context: the controller's CA only, or the system store without one."""
        with self._lock:
            if self._context is None:
                ctx = ssl.create_default_context(cafile=None if self.cafile is None else str(self.cafile))
                ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                self._context = ctx
            return self._context

    def open(
        self,
        url: str,
        *,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        method: str | None = None,
        timeout: float | None = None,
    ) -> http.client.HTTPResponse:
        """Send one request; ValueError for a URL that is not http(s)://."""
        import http.client
        import urllib.parse
        import urllib.request

        extra = dict(headers or {})
        if self.credential is not None:
            auth = self.credential.authorization(
                method or ("POST" if data is not None else "GET"), urllib.parse.urlsplit(url).path, data or b""
            )
            if auth is not None:
                extra["Authorization"] = auth
        req = urllib.request.Request(  # noqa: S310 - the scheme is checked below
            url, data=data, headers={"User-Agent": USER_AGENT, **extra}, method=method
        )
        if req.type not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme {req.type!r} in {url}: expected http:// or https://")
        ctx = self.context() if req.type == "https" else None
        resp = urllib.request.urlopen(req, timeout=self.timeout if timeout is None else timeout, context=ctx)  # noqa: S310
        assert isinstance(resp, http.client.HTTPResponse)
        return resp


def from_config(cfg: AgentConfig, *, timeout: float | None = None) -> ControllerHttp:
    """The client for this agent: pinned to ``[identity] controller_ca_file`` when it is set."""
    cafile = None if cfg.identity is None else cfg.identity.controller_ca_file
    credential = None
    if cfg.identity is not None:
        from agent.identity import DeviceCredential, IdentityPaths

        credential = DeviceCredential(IdentityPaths(cfg.identity.directory))
    return ControllerHttp(cafile=cafile, timeout=cfg.download_timeout if timeout is None else timeout, credential=credential)
