"""An in-process controller (real database, real broker) and tokens for each role, for API tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from controller.app import create_app
from controller.core.config import Settings

ADMIN_TOKEN = "test-admin-token"


def settings_for(tmp_path: Path, database_url: str, broker_port: int | None = None) -> Settings:
    return Settings(
        environment="development",
        data_dir=tmp_path / "data",
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        broker_host="127.0.0.1",
        broker_port=broker_port or 1,
        mqtt_enabled=broker_port is not None,
        public_url="http://testserver",
    )


class Api:
    """A TestClient per principal: ``api.as_("bob")``; ``api.admin`` uses the bootstrap token."""

    def __init__(self, app: FastAPI, client: TestClient) -> None:
        self.app = app
        self.admin = client
        self._clients: dict[str, TestClient] = {}

    def make(self, principal: str, role: str) -> TestClient:
        r = self.admin.post("/v1/tokens", json={"principal": principal, "role": role, "label": "test"})
        assert r.status_code == 201, r.text
        c = TestClient(self.app, headers={"Authorization": f"Bearer {r.json()['token']}"})
        self._clients[principal] = c
        return c

    def as_(self, principal: str) -> TestClient:
        return self._clients[principal]


@contextmanager
def running_api(settings: Settings) -> Iterator[Api]:
    app = create_app(settings)
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        if settings.mqtt_enabled:
            assert app.state.mqtt.connected.wait(10), "controller could not connect to the test broker"
        yield Api(app, client)
