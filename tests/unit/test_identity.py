"""Device CA, agent key handling, and security settings: pure logic and temp files."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.config import ConfigError, parse_config
from agent.identity import IdentityError, IdentityPaths, ensure_key, make_csr, renewal_due, tls_context
from controller.core.config import Settings
from controller.identity import pki
from controller.identity.broker_auth import register_devices_command, render_acl, render_dynsec

pytestmark = pytest.mark.unit
KEY = "11" * 32


@pytest.fixture(scope="module")
def ca() -> pki.DeviceCA:
    return pki.DeviceCA.generate()


def test_device_certificate_names_the_device_and_is_for_client_auth_only(ca: pki.DeviceCA) -> None:
    issued = ca.issue_device("pi-7", make_csr(pki.new_key(), "pi-7"), validity=dt.timedelta(days=3))
    cert = x509.load_pem_x509_certificate(issued.pem)
    assert cert.subject.rfc4514_string() == "CN=pi-7"
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=3, minutes=5)
    cert.verify_directly_issued_by(ca.cert)


@pytest.mark.parametrize(
    ("device_id", "csr_cn", "match"),
    [
        ("pi-7", "pi-8", "CSR names 'pi-8' but the enrolment is for device 'pi-7'"),
        ("_controller", "_controller", "Invalid device_id"),  # service names can never be enrolled
        ("a/b", "a/b", "Invalid device_id"),
        ("+", "+", "Invalid device_id"),
    ],
)
def test_device_csr_is_refused(ca: pki.DeviceCA, device_id: str, csr_cn: str, match: str) -> None:
    with pytest.raises(pki.PkiError, match=match):
        ca.issue_device(device_id, make_csr(pki.new_key(), csr_cn))


def test_garbage_csr_is_refused(ca: pki.DeviceCA) -> None:
    with pytest.raises(pki.PkiError, match="expected a PEM certificate signing request"):
        ca.issue_device("pi-7", b"not a csr")


def test_service_identities_cannot_look_like_devices(ca: pki.DeviceCA) -> None:
    with pytest.raises(pki.PkiError, match="start with '_'"):
        ca.issue_service("pi-7", pki.new_key())


def test_crl_lists_revoked_serials(ca: pki.DeviceCA) -> None:
    when = pki.utcnow()
    crl = x509.load_pem_x509_crl(ca.crl([(12345, when), (678, when)]))
    assert {r.serial_number for r in crl} == {12345, 678}
    assert crl.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
    assert crl.next_update_utc is not None and crl.next_update_utc > pki.utcnow() + dt.timedelta(days=300)


def test_ca_files_are_created_once_with_a_private_key(tmp_path: Path) -> None:
    with pytest.raises(pki.PkiError, match="no device CA"):
        pki.DeviceCA.open(tmp_path / "ca", create=False)
    first = pki.DeviceCA.open(tmp_path / "ca", create=True)
    assert stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode) == 0o600
    assert pki.DeviceCA.open(tmp_path / "ca", create=False).cert == first.cert


def test_agent_key_is_made_on_the_device_with_mode_0600_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "id" / "device.key"
    key = ensure_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_key(path).private_numbers() == key.private_numbers()
    os.chmod(path, 0o644)
    with pytest.raises(IdentityError, match="readable by group or others"):
        ensure_key(path)


def test_tls_context_needs_an_enrolled_identity(tmp_path: Path) -> None:
    p = IdentityPaths(tmp_path)
    with pytest.raises(IdentityError, match="enrol the device first"):
        tls_context(p.ca, p.cert, p.key)


def test_renewal_is_due_before_expiry(ca: pki.DeviceCA, tmp_path: Path) -> None:
    issued = ca.issue_device("pi-7", make_csr(pki.new_key(), "pi-7"), validity=dt.timedelta(days=20))
    (tmp_path / "c.pem").write_bytes(issued.pem)
    assert not renewal_due(tmp_path / "c.pem", dt.timedelta(days=10))
    assert renewal_due(tmp_path / "c.pem", dt.timedelta(days=10), now=pki.utcnow() + dt.timedelta(days=11))


def test_agent_config_tls_and_identity(tmp_path: Path) -> None:
    base = {"device_id": "pi-1", "data_dir": str(tmp_path), "director_public_keys": [KEY]}
    assert not parse_config(base).broker.tls
    cfg = parse_config({**base, "identity": {"controller_url": "https://c.example"}})
    assert cfg.broker.tls and cfg.broker.cert_file == tmp_path / "identity" / "device.pem"
    assert cfg.identity is not None and cfg.identity.renew_before_days == 10.0
    with pytest.raises(ConfigError, match="needs all of 'ca_file', 'cert_file' and 'key_file'"):
        parse_config({**base, "broker": {"cert_file": "/x.pem"}})


def test_acl_confines_devices_to_their_own_id() -> None:
    acl = render_acl()
    device_lines = [ln for ln in acl.splitlines() if ln.startswith("pattern ")]
    assert device_lines and all("edgefleet/v1/dev/%u/" in ln for ln in device_lines)
    assert "pattern read edgefleet/v1/dev/%u/desired" in acl and "pattern write edgefleet/v1/dev/%u/desired" not in acl
    assert "user _controller" in acl
    assert '"publishClientSend": false' in render_dynsec()
    roles = {r["rolename"]: r["acls"] for r in json.loads(render_dynsec())["roles"]}
    assert {"acltype": "subscribePattern", "topic": "$share/#", "allow": False} in roles["edgefleet-device"]
    cmds = json.loads(register_devices_command(["d-1", "d-2"]))["commands"]
    assert [c["username"] for c in cmds if c["command"] == "createClient"] == ["d-1", "d-2"]
    assert all(c["roles"] == [{"rolename": "edgefleet-device"}] for c in cmds if c["command"] == "createClient")


def test_settings_refuse_insecure_production(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    key.write_text("x")
    os.chmod(key, 0o600)
    secure = {
        "environment": "production",
        "admin_token": "a-real-secret-of-some-length",
        "tls_cert_file": tmp_path / "c.pem",
        "tls_key_file": key,
        "broker_tls": True,
    }
    Settings(**secure)
    with pytest.raises(ValueError, match="served over TLS"):
        Settings(**{**secure, "tls_cert_file": None, "tls_key_file": None})
    Settings(**{**secure, "tls_cert_file": None, "tls_key_file": None, "tls_offloaded": True})
    with pytest.raises(ValueError, match="must use mTLS"):
        Settings(**{**secure, "broker_tls": False})
    os.chmod(key, 0o644)
    with pytest.raises(ValueError, match="readable by group or others"):
        Settings(**secure)


def test_admin_token_from_a_file_is_never_in_the_repr(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("s3cret-from-file\n")
    os.chmod(f, 0o600)
    s = Settings(admin_token_file=f)
    assert s.admin_token == "s3cret-from-file"
    assert "s3cret" not in repr(s)
    os.chmod(f, 0o640)
    with pytest.raises(ValueError, match="EDGEFLEET_ADMIN_TOKEN_FILE"):
        Settings(admin_token_file=f, environment="production", tls_offloaded=True, broker_tls=True)


def test_ed25519_csr_key_is_refused(ca: pki.DeviceCA) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "pi-7")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, None)
    with pytest.raises(pki.PkiError, match="expected an EC P-256"):
        ca.issue_device("pi-7", csr.public_bytes(serialization.Encoding.PEM))


def test_agent_cli_says_to_enrol_when_the_identity_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import main

    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'device_id = "pi-1"\ndata_dir = "{tmp_path}"\ndirector_public_keys = ["{KEY}"]\n[identity]\n')
    assert main(["--config", str(cfg)]) == 2
    assert "enrol the device first" in capsys.readouterr().err
    assert main(["--config", str(cfg), "--enrol", "tok"]) == 2
    assert "no controller URL" in capsys.readouterr().err


def test_the_broker_client_key_may_come_from_the_environment(ca: pki.DeviceCA, tmp_path: Path) -> None:
    """Kubernetes passes private keys as environment variables: the key is written once, mode 0600."""
    from controller.identity.wiring import mqtt_tls_context

    key = pki.new_key()
    cert = tmp_path / "controller.pem"
    cert.write_bytes(ca.issue_service(pki.CONTROLLER_IDENTITY, key).pem)
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    s = Settings(
        data_dir=tmp_path / "data",
        broker_tls=True,
        broker_cert_file=cert,
        broker_ca_file=tmp_path / "ca.pem",
        broker_key=pki.key_pem(key).decode(),
    )
    assert "BEGIN" not in repr(s)
    assert mqtt_tls_context(s) is not None
    written = tmp_path / "data" / "identity" / "mqtt-client.key"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    with pytest.raises(ValueError, match="EDGEFLEET_BROKER_KEY"):
        mqtt_tls_context(Settings(data_dir=tmp_path, broker_tls=True, broker_cert_file=cert))


@pytest.mark.parametrize("cc", ["no-such-compiler", "false"])
def test_broker_setup_says_what_it_needs_when_the_share_guard_cannot_be_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], cc: str
) -> None:
    """No compiler, or one that fails (e.g. without the Mosquitto headers): a clear error and no config
    that would start a broker letting devices join the controllers' shared subscription."""
    from controller.identity import broker_setup

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing built before
    monkeypatch.setenv("CC", cc)
    assert broker_setup.main(["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "share guard" in err and "mosquitto-dev" in err, err
    assert not (tmp_path / "out" / "mosquitto.conf").exists()
    assert not list((tmp_path / "cache").rglob("*.so*"))


def test_broker_setup_names_plugins_the_broker_image_already_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compose broker image carries the plugins (deploy/Dockerfile.broker): no compiler needed where setup runs."""
    from controller.identity import broker_setup

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "false")  # a build would fail
    argv = ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--broker-plugins", "/usr/lib/edgefleet"]
    assert broker_setup.main(argv) == 0
    conf = (tmp_path / "out" / "mosquitto.conf").read_text().splitlines()
    plugins = [ln for ln in conf if ln.startswith("plugin ")]
    assert plugins == ["plugin /usr/lib/edgefleet/share_guard.so", "plugin /usr/lib/edgefleet/mosquitto_dynamic_security.so"]
    assert "plugin_opt_share_subscribers _controller" in conf
    assert not (tmp_path / "out" / "share_guard.so").exists() and not list((tmp_path / "cache").rglob("*.so*"))
