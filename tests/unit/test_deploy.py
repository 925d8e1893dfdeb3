"""The deployment files are valid and keep their promises (no container engine needed).

Kubernetes manifests are checked against the Kubernetes OpenAPI schemas with
``kubernetes-validate``; the compose file and the Dockerfile are read for what the
operations guide says about them (two replicas, PostgreSQL, Mosquitto, non-root).
"""

from __future__ import annotations

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
    doc = by_kind("Deployment")[0]
    bad = {**doc, "spec": {**doc["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_replicas_run_non_root_with_probes_secrets_and_a_disruption_budget() -> None:
    (dep,) = by_kind("Deployment")
    spec = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] >= 2
    assert spec["securityContext"]["runAsNonRoot"] is True
    (ctr,) = spec["containers"]
    assert ctr["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert ctr["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert ctr["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e for e in ctr["env"]}
    assert {"EDGEFLEET_REPLICA_ID", "EDGEFLEET_DATABASE_URL"} <= set(env)
    for key in ("EDGEFLEET_ADMIN_TOKEN", "EDGEFLEET_DIRECTOR_KEY", "EDGEFLEET_TUF_ONLINE_KEY", "EDGEFLEET_BROKER_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "edgefleet-secrets", key
    secret_vol = next(v for v in spec["volumes"] if "secret" in v)
    paths = {i["path"] for i in secret_vol["secret"]["items"]}
    assert {"ca/ca.key", "ca/ca.pem", "tuf/1.root.json", "tuf/1.targets.json", "identity/_controller.pem"} <= paths
    (pdb,) = by_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    (job,) = by_kind("Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]


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
