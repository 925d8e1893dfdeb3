"""Replicas share the database and the secrets, nothing else (in-process apps on one database).

Production settings: a replica on a fresh data directory mints no key, CA or CRL; after
`edgefleet-controller init` two replicas with separate data directories serve the same
trust roots and bundles; a release is installable only once offline release keys reach
the threshold (`edgefleet release sign`); concurrent releases through two replicas make
one valid chain of TUF versions.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp
from typer.testing import CliRunner

from controller import cli
from controller.app import create_app
from controller.cli import common as cli_common
from controller.core.config import Settings
from controller.core.secrets import SecretsError
from controller.init import init
from shared.signing import load_private_key_file

pytestmark = [pytest.mark.integration]
TOKEN = "a-real-admin-token-for-tests"


def prod(tmp_path: Path, name: str, database_url: str, secrets: Path | None, **kw: object) -> Settings:
    return Settings(
        environment="production",
        admin_token=TOKEN,
        tls_offloaded=True,
        broker_tls=True,
        mqtt_enabled=False,
        data_dir=tmp_path / name,
        secrets_dir=secrets,
        database_url=database_url,
        public_url="https://controller.example",
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def secrets(tmp_path: Path) -> tuple[Path, Path]:
    s, o = tmp_path / "secrets", tmp_path / "offline"
    init(s, o, n_root=3, root_threshold=2, n_release=3, release_threshold=2)
    return s, o


def test_a_fresh_replica_outside_development_mints_no_secrets(tmp_path, database_url) -> None:
    s = prod(tmp_path, "fresh", database_url, None)
    with pytest.raises(SecretsError, match="edgefleet-controller init"):
        create_app(s)
    assert not (tmp_path / "fresh" / "keys").exists()
    assert not (tmp_path / "fresh" / "ca").exists()


def test_init_refuses_to_overwrite(secrets) -> None:
    with pytest.raises(SystemExit, match="refusing to overwrite"):
        init(secrets[0], secrets[1], n_root=1, root_threshold=1, n_release=1, release_threshold=1)


def test_two_replicas_share_trust_bundles_and_offline_signed_releases(tmp_path, database_url, secrets, make_bundle, monkeypatch):
    sdir, offline = secrets
    a_app = create_app(prod(tmp_path, "a", database_url, sdir))
    b_app = create_app(prod(tmp_path, "b", database_url, sdir))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(a_app, headers=auth) as a, TestClient(b_app, headers=auth) as b:
        assert a.get("/v1/trust").json() == b.get("/v1/trust").json()
        assert a.get("/v1/tuf/metadata/1.root.json").content == (sdir / "tuf" / "1.root.json").read_bytes()
        assert b.get("/v1/tuf/metadata/1.root.json").content == (sdir / "tuf" / "1.root.json").read_bytes()
        assert not (tmp_path / "a" / "keys").exists() and not (tmp_path / "b" / "ca").exists()

        bundle = make_bundle(1)
        r = a.post("/v1/models", content=bundle, headers={"Content-Type": "application/x-tar"})
        assert r.status_code == 201, r.text
        sha = r.json()["sha256"]
        assert b.get(f"/v1/bundles/{sha}").content == bundle, "a bundle pushed through A downloads through B"

        # Not installable until the release keys sign: targets unchanged, assignment refused.
        assert a.post("/v1/devices", json={"id": "rep-dev-1"}).status_code == 201
        r = b.put("/v1/devices/rep-dev-1/desired", json={"model": "digits", "version": 1, "role": "canary"})
        assert r.status_code in (409, 503), r.text
        if r.status_code == 409:
            assert "waiting for release signatures" in r.json()["detail"]
        pend = b.get("/v1/tuf/pending").json()
        assert pend["version"] == 2 and pend["threshold"] == 2 and pend["signed_by"] == []
        assert "digits/1.tar" in pend["changes"][0]

        # Sign with the CLI, one key holder at a time, through different replicas.
        runner = CliRunner()
        for i, app in ((1, a_app), (2, b_app)):
            monkeypatch.setattr(
                cli_common, "client", lambda url, token, app=app: TestClient(app, headers={"Authorization": f"Bearer {token}"})
            )
            res = runner.invoke(
                cli.app, ["release", "sign", "--key", str(offline / f"release-{i}.pem"), "--version", "2", "--token", TOKEN]
            )
            assert res.exit_code == 0, res.output
        assert "published" in res.output
        assert a.get("/v1/tuf/pending").status_code == 404
        targets = Metadata[Targets].from_bytes(b.get("/v1/tuf/metadata/2.targets.json").content)
        assert "digits/1.tar" in targets.signed.targets
        root = Metadata[Root].from_bytes(a.get("/v1/tuf/metadata/1.root.json").content)
        root.signed.verify_delegate("targets", targets.signed_bytes, targets.signatures)


def test_a_signature_from_a_wrong_key_or_for_other_bytes_is_refused(tmp_path, database_url, secrets, make_bundle) -> None:
    sdir, offline = secrets
    app = create_app(prod(tmp_path, "a", database_url, sdir))
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as a:
        assert a.post("/v1/models", content=make_bundle(1), headers={"Content-Type": "application/x-tar"}).status_code == 201
        pend = a.get("/v1/tuf/pending").json()
        md = Metadata[Targets].from_dict(dict(pend["targets"]))
        root_sig = md.sign(CryptoSigner(load_private_key_file(offline / "root-1.pem")))
        r = a.post("/v1/tuf/pending/signatures", json={"version": 2, "keyid": root_sig.keyid, "sig": root_sig.signature})
        assert r.status_code == 409 and "not a release (targets) key" in r.json()["detail"]
        md.signed.version = 99
        other = md.sign(CryptoSigner(load_private_key_file(offline / "release-1.pem")))
        r = a.post("/v1/tuf/pending/signatures", json={"version": 2, "keyid": other.keyid, "sig": other.signature})
        assert r.status_code == 409 and "does not verify" in r.json()["detail"]
        assert a.get("/v1/tuf/pending").json()["signed_by"] == []


def test_concurrent_releases_through_two_replicas_make_one_valid_chain(tmp_path, database_url, make_bundle) -> None:
    """Development (online release signing) on a shared database: the writer lock serialises TUF writes."""
    secrets = tmp_path / "shared-secrets"
    dev = {"environment": "development", "admin_token": TOKEN, "mqtt_enabled": False, "database_url": database_url}
    sa = Settings(data_dir=tmp_path / "a", secrets_dir=secrets, **dev)  # type: ignore[arg-type]
    sb = Settings(data_dir=tmp_path / "b", secrets_dir=secrets, **dev)  # type: ignore[arg-type]
    a_app = create_app(sa)  # development keys (release keys too) are made in the shared secrets directory
    b_app = create_app(sb)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    bundles = {name: make_bundle(1, name=name) for name in ("m-a", "m-b", "m-c", "m-d", "warm-a", "warm-b")}
    errors: list[str] = []
    with TestClient(a_app, headers=auth) as a, TestClient(b_app, headers=auth) as b:

        def push(client: TestClient, name: str) -> None:
            try:
                r = client.post("/v1/models", content=bundles[name], headers={"Content-Type": "application/x-tar"})
            except Exception as exc:  # the app's own exception, re-raised by the TestClient
                errors.append(repr(exc))
                return
            if r.status_code != 201:
                errors.append(r.text)

        push(a, "warm-a")  # sequential first: lazily built route parts warn under concurrent first use
        push(b, "warm-b")
        threads = [threading.Thread(target=push, args=(c, n)) for c, n in ((a, "m-a"), (b, "m-b"), (a, "m-c"), (b, "m-d"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        ts = Metadata[Timestamp].from_bytes(b.get("/v1/tuf/metadata/timestamp.json").content)
        snap = Metadata[Snapshot].from_bytes(a.get(f"/v1/tuf/metadata/{ts.signed.snapshot_meta.version}.snapshot.json").content)
        tv = snap.signed.meta["targets.json"].version
        assert tv == 7, "six releases after targets v1: versions 2..7, none lost"
        targets = Metadata[Targets].from_bytes(a.get(f"/v1/tuf/metadata/{tv}.targets.json").content)
        assert {p.split("/")[0] for p in targets.signed.targets} == set(bundles)
        for v in range(2, 8):
            assert a.get(f"/v1/tuf/metadata/{v}.targets.json").status_code == 200


def test_a_development_controller_upgraded_in_place_keeps_its_repository_and_bundles(tmp_path, database_url, make_bundle):
    """Metadata and bundles a single controller kept in files move into the database: devices keep their chain."""
    import hashlib

    from controller.release.imagerepo import DevKeys, ImageRepository

    data = tmp_path / "old"
    keys = DevKeys.load_or_create(data / "keys" / "tuf")
    repo = ImageRepository.create(data / "tuf", keys)
    bundle = make_bundle(1)
    sha = hashlib.sha256(bundle).hexdigest()
    repo.add_bundle(
        model="digits",
        version=1,
        sha256=sha,
        length=len(bundle),
        runtime="onnx",
        hardware={},
        signers=keys.release[:2],
        online=keys.online,
    )
    (data / "bundles").mkdir()
    (data / "bundles" / f"{sha}.tar").write_bytes(bundle)
    s = Settings(environment="development", admin_token=TOKEN, mqtt_enabled=False, database_url=database_url, data_dir=data)
    with TestClient(create_app(s)) as c:
        assert c.get("/v1/tuf/metadata/2.targets.json").content == (data / "tuf" / "metadata" / "2.targets.json").read_bytes()
        assert c.get("/v1/tuf/metadata/1.root.json").content == repo.root_bytes(1)
        assert c.get(f"/v1/bundles/{sha}").content == bundle


def test_offline_signed_targets_near_expiry_warn_everywhere_and_a_signed_renewal_clears_it(
    tmp_path, database_url, secrets, monkeypatch, caplog
):
    """Nobody on the controller can re-sign offline targets: ahead of their expiry the leader stages a
    renewal and says so (log, /v1/tuf/status, edgefleet release status, /metrics); once the release
    keys sign it, the published targets are valid for a full lifetime again and the warning is gone."""
    sdir, offline = secrets
    day = 86400
    # Targets v1 from `init` lasts 90 days; warn 60 days ahead; a renewal is valid for 200 days.
    app = create_app(prod(tmp_path, "w", database_url, sdir, tuf_targets_warn_s=60 * day, tuf_targets_expiry_s=200 * day))
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
        st = api.get("/v1/tuf/status").json()
        assert st["release_signing"] == "offline" and st["roles"]["targets"]["version"] == 1
        assert 89 * day < st["roles"]["targets"]["expires_in_s"] < 91 * day
        assert st["targets_warning"] is None and st["pending_version"] is None
        assert "edgefleet_tuf_targets_renewal_needed 0.0" in api.get("/metrics").text

    app = create_app(prod(tmp_path, "w", database_url, sdir, tuf_targets_warn_s=100 * day, tuf_targets_expiry_s=400 * day))
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
        with caplog.at_level("WARNING", logger="controller.release.imageservice"):
            app.state.imagerepo.refresh()  # the leader's job
        assert any("targets version 1 expires in" in r.getMessage() for r in caplog.records), caplog.text
        st = api.get("/v1/tuf/status").json()
        assert "targets version 1 expires in 90 days" in st["targets_warning"] and st["pending_version"] == 2
        metrics = api.get("/metrics").text
        assert "edgefleet_tuf_targets_renewal_needed 1.0" in metrics
        assert 'edgefleet_tuf_expires_in_seconds{role="targets"}' in metrics
        assert "renew targets" in api.get("/v1/tuf/pending").json()["changes"][0]
        app.state.imagerepo.refresh()  # again: the same renewal waits, no second one
        assert api.get("/v1/tuf/pending").json()["version"] == 2

        monkeypatch.setattr(
            cli_common, "client", lambda url, token: TestClient(app, headers={"Authorization": f"Bearer {token}"})
        )
        runner = CliRunner()
        res = runner.invoke(cli.app, ["release", "status", "--token", TOKEN])
        assert res.exit_code == 0 and "WARNING: targets version 1 expires in 90 days" in res.output, res.output
        for i in (1, 2):  # the release-key holders sign the renewal
            res = runner.invoke(cli.app, ["release", "sign", "--key", str(offline / f"release-{i}.pem"), "--token", TOKEN])
            assert res.exit_code == 0, res.output
        st = api.get("/v1/tuf/status").json()
        assert st["roles"]["targets"]["version"] == 2 and st["roles"]["targets"]["expires_in_s"] > 399 * day
        assert st["targets_warning"] is None and st["pending_version"] is None
        res = runner.invoke(cli.app, ["release", "status", "--token", TOKEN])
        assert res.exit_code == 0 and "WARNING" not in res.output, res.output
