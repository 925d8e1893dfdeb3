"""The deployment files are valid and keep their promises (no container engine needed).

Kubernetes manifests are checked against the Kubernetes OpenAPI schemas with
``kubernetes-validate``; the compose file against the Compose Specification
(``compose-spec``: unknown keys, wrong types and dangling volume references are
refused); both and the Dockerfile are read for what the operations guide says
about them (two replicas, PostgreSQL, Mosquitto, non-root). No image is built
and nothing is started here: this machine has no container engine.
"""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_VERSION = "1.30"


def manifests() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(kind: str) -> list[dict]:
    return [d for d in manifests() if d["kind"] == kind]


@pytest.mark.parametrize("doc", manifests(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_is_valid_kubernetes(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_a_broken_manifest_is_refused() -> None:
    doc = by_kind("StatefulSet")[0]
    bad = {**doc, "spec": {**doc["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_replicas_run_non_root_with_probes_secrets_and_a_disruption_budget() -> None:
    (dep,) = by_kind("StatefulSet")
    spec = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] >= 2
    assert spec["securityContext"]["runAsNonRoot"] is True
    (ctr,) = spec["containers"]
    assert ctr["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert ctr["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert ctr["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e for e in ctr["env"]}
    assert {"EDGEFLEET_REPLICA_ID", "EDGEFLEET_DATABASE_URL"} <= set(env)
    for key in ("EDGEFLEET_ADMIN_TOKEN", "EDGEFLEET_DIRECTOR_KEY", "EDGEFLEET_TUF_ONLINE_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "edgefleet-secrets", key
    secret_vol = next(v for v in spec["volumes"] if v["name"] == "secrets")
    paths = {i["path"] for i in secret_vol["secret"]["items"]}
    assert {"ca/ca.key", "ca/ca.pem", "tuf/1.root.json", "tuf/1.targets.json"} <= paths
    (pdb,) = by_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    (job,) = by_kind("Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]


def test_every_replica_has_its_own_broker_identity(tmp_path: Path) -> None:
    """The broker makes the certificate CN the client id: each pod of the StatefulSet must present its
    own certificate, copied by the init container from the identities ``broker_setup --replicas N`` wrote."""
    from cryptography import x509

    from controller.identity import pki
    from controller.identity.broker_auth import controller_identities, write_identity
    from controller.server import main

    (sts,) = by_kind("StatefulSet")
    n, spec = sts["spec"]["replicas"], sts["spec"]["template"]["spec"]
    assert sts["spec"]["serviceName"] in {
        s["metadata"]["name"] for s in by_kind("Service") if s["spec"].get("clusterIP") == "None"
    }
    (init,) = spec["initContainers"]
    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    args = dict(zip(init["args"][1::2], init["args"][2::2], strict=True))
    assert (
        init["args"][0] == "broker-identity" and args["--pod"] == "$(POD_NAME)" and args["--from"] == mounts["broker-identities"]
    )
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["EDGEFLEET_BROKER_KEY_FILE"] == f"{args['--to']}/mqtt-client.key"
    assert env["EDGEFLEET_BROKER_CERT_FILE"] == f"{args['--to']}/mqtt-client.pem"
    vol = next(v for v in spec["volumes"] if v["name"] == "broker-identities")
    (example,) = [s for s in by_kind("Secret") if s["metadata"]["name"] == vol["secret"]["secretName"]]
    names = controller_identities(n)
    assert {f"{c}.{ext}" for c in names for ext in ("pem", "key")} <= set(example["stringData"])

    ca = pki.DeviceCA.generate()
    source = tmp_path / "identities"  # what the Secret holds: broker_setup's files
    for name in names:
        write_identity(ca, name, source)
    seen = set()
    for k in range(n):
        pod = tmp_path / f"pod-{k}"
        assert main(["broker-identity", "--from", str(source), "--pod", f"{sts['metadata']['name']}-{k}", "--to", str(pod)]) == 0
        cert = x509.load_pem_x509_certificate((pod / "mqtt-client.pem").read_bytes())
        seen.add(pki.common_name(cert))
        assert (pod / "mqtt-client.key").stat().st_mode & 0o777 == 0o600
    assert seen == set(names), "each pod its own certificate"
    assert main(["broker-identity", "--from", str(source), "--pod", "no-ordinal", "--to", str(tmp_path / "x")]) == 2
    assert (
        main(["broker-identity", "--from", str(source), "--pod", f"edgefleet-controller-{n}", "--to", str(tmp_path / "y")]) == 2
    )


def compose_doc() -> dict:
    return yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())  # YAML merge keys resolved


def test_compose_file_follows_the_compose_specification() -> None:
    from compose_spec import PyCompose

    parsed = PyCompose.from_json(json.dumps(compose_doc()))
    parsed.validate()  # the volumes and networks services share are defined
    assert {"controller-1", "controller-2", "postgres", "mosquitto"} <= set(parsed.service_names())
    typo = compose_doc()
    typo["services"]["controller-1"]["restrat"] = "always"
    with pytest.raises(ValueError, match="restrat"):
        PyCompose.from_json(json.dumps(typo))
    dangling = compose_doc()
    dangling["volumes"].pop("secrets")  # shared by setup and the replicas
    with pytest.raises(ValueError, match="secrets"):
        PyCompose.from_json(json.dumps(dangling)).validate()


def test_compose_runs_two_replicas_on_postgres_and_mosquitto() -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())
    services = compose["services"]
    replicas = [s for name, s in services.items() if name.startswith("controller-")]
    assert len(replicas) == 2
    assert {"postgres", "mosquitto", "setup", "proxy"} <= set(services)
    ids = {s["environment"]["EDGEFLEET_REPLICA_ID"] for s in replicas}
    assert len(ids) == 2, "replica ids are unique"
    for s in replicas:
        env = s["environment"]
        assert env["EDGEFLEET_ENVIRONMENT"] == "production"
        assert env["EDGEFLEET_DATABASE_URL"].startswith("postgresql")
        assert env["EDGEFLEET_SECRETS_DIR"] == "/secrets"
    assert "edgefleet-controller init" in services["setup"]["command"][0]


def test_the_image_runs_as_a_non_root_user() -> None:
    lines = [ln.strip() for ln in (DEPLOY / "Dockerfile").read_text().splitlines()]
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and not users[-1].startswith(("0", "root"))
    assert lines.index(next(ln for ln in lines if ln.startswith("USER "))) > lines.index(
        next(ln for ln in lines if ln.startswith("RUN pip install"))
    )


def test_the_compose_broker_is_debian_mosquitto_with_the_share_guard_built_as_the_controller_builds_it() -> None:
    """The share guard is C loaded by the broker: the compose broker is built from Debian's Mosquitto with the plugin
    compiled by the same flags (a musl image such as eclipse-mosquitto could not load a glibc build), and setup names it."""
    from controller.identity.share_guard import _CFLAGS

    services = compose_doc()["services"]
    assert services["mosquitto"]["build"]["dockerfile"] == "deploy/Dockerfile.broker"
    assert "--broker-plugins /usr/lib/edgefleet" in services["setup"]["command"][0]
    lines = (DEPLOY / "Dockerfile.broker").read_text().splitlines()
    [compile_line] = [ln for ln in lines if ln.startswith("RUN cc ")]
    assert compile_line.split()[2:-3] == list(_CFLAGS), compile_line
    assert any(ln.startswith("FROM debian:bookworm") for ln in lines)
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users == ["1883:1883"]
