"""The leader's desired-state refresh on a real database: due envelopes are re-signed with the
next counter and a fresh expiry, bundle URLs follow EDGEFLEET_PUBLIC_URL, others are left alone."""

from __future__ import annotations

import time

import pytest
from sqlmodel import Session

from controller.core.config import Settings
from controller.core.tables import Device
from controller.fleet.assignments import bundle_url, sign_for
from controller.fleet.director import Director
from controller.fleet.refresh import refresh_desired
from shared.messages import Assignment
from shared.signing import generate_private_key_file, load_public_key, verify_document

pytestmark = [pytest.mark.integration]
SHA = "ab" * 32


def settings(tmp_path, url: str, ttl: int = 100) -> Settings:
    return Settings(environment="development", data_dir=tmp_path, public_url=url, desired_ttl_s=ttl, mqtt_enabled=False)


def test_due_and_moved_desired_states_are_re_signed_and_published(engine, tmp_path) -> None:
    director = Director(generate_private_key_file(tmp_path / "director.pem"))
    old = settings(tmp_path, "https://old.example")
    with Session(engine) as s:
        for name in ("fresh", "due", "none"):
            s.add(Device(id=name))
        s.commit()
        for name in ("fresh", "due"):
            d = s.get(Device, name)
            a = Assignment(model="digits", version=1, sha256=SHA, length=10, url=bundle_url(old.public_url, SHA))
            sign_for(d, {"production": a}, director, old)
            s.add(d)
        s.get(Device, "due").desired_expires_at = time.time() + 10  # less than half of 100 s left
        s.commit()
    published: list[tuple[str, dict]] = []
    assert refresh_desired(engine, director, old, lambda d, e: published.append((d, e))) == 1
    assert [d for d, _ in published] == ["due"]
    signed = verify_document(published[0][1], {director.key_id: load_public_key(director.public_key_hex)})
    assert signed["counter"] == 2 and signed["expires_at"] > time.time() + 90
    assert refresh_desired(engine, director, old, lambda d, e: published.append((d, e))) == 0, "idempotent: nothing due"

    moved = settings(tmp_path, "https://new.example/")
    published.clear()
    assert refresh_desired(engine, director, moved, lambda d, e: published.append((d, e))) == 2
    for _, env in published:
        assert env["signed"]["assignments"]["production"]["url"] == f"https://new.example/v1/bundles/{SHA}"
    with Session(engine) as s:
        assert s.get(Device, "none").desired_counter == 0, "a device with no desired state is left alone"
        assert s.get(Device, "due").desired_base_url == "https://new.example"


def test_public_url_is_checked_at_start(tmp_path) -> None:
    with pytest.raises(ValueError, match="EDGEFLEET_PUBLIC_URL"):
        settings(tmp_path, "controller.example")
    assert settings(tmp_path, "http://127.0.0.1:8000").public_url_warning() is None, "development may use loopback"
    prod = Settings(
        environment="production",
        admin_token="a-long-enough-admin-token",
        tls_offloaded=True,
        broker_tls=True,
        public_url="http://localhost:8000",
    )
    assert "devices cannot reach a loopback address" in (prod.public_url_warning() or "")
    assert prod.model_copy(update={"public_url": "https://edgefleet.example"}).public_url_warning() is None
