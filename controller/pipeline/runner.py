"""Where a run executes: the runner interface, in-process (default) and as a Kubernetes Job.

A runner gets a prepared run folder (``controller.pipeline.step``) and starts it;
it never registers anything. The leader's job notices ``result.json`` in the folder
and registers, whichever runner ran it, so a run survives a leader change.

- :class:`InProcessRunner`: a thread of the controller process, progress lines to
  the log and to ``pipelinerun.progress``. ``background=False`` runs it inline
  (tests, benchmarks, ``edgefleet pipeline run --wait``).
- :class:`KubernetesRunner`: renders a ``batch/v1`` Job running
  ``python -m controller.pipeline.step`` in the controller's image with the data
  volume mounted, checks it against the Kubernetes schema (``kubernetes-validate``)
  and hands it to ``submit`` (default: ``kubectl apply -f -``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from controller.pipeline.step import run_folder

log = logging.getLogger(__name__)
K8S_VERSION = "1.30"  # the schema version Job manifests are validated against


class RunnerError(Exception):
    """A run could not be started; the message says why."""


class Runner(Protocol):
    name: str

    def start(
        self,
        run_id: int,
        folder: Path,
        datasets_root: Path,
        progress: Callable[[str], None],
        on_done: Callable[[], None] | None = None,
    ) -> None:
        """Start the run; ``on_done`` (if the runner can tell) is called once ``result.json`` is written."""


@dataclass
class InProcessRunner:
    background: bool = True
    name: str = "inprocess"
    _threads: dict[int, threading.Thread] = field(default_factory=dict)

    def start(
        self,
        run_id: int,
        folder: Path,
        datasets_root: Path,
        progress: Callable[[str], None],
        on_done: Callable[[], None] | None = None,
    ) -> None:
        def go() -> None:
            run_folder(folder, datasets_root, progress)
            if on_done is not None:
                try:
                    on_done()
                except Exception:  # the leader's next tick finishes the run instead
                    log.exception("finishing pipeline run %d failed; the leader will", run_id)

        if not self.background:
            go()
            return
        t = threading.Thread(target=go, name=f"pipeline-run-{run_id}", daemon=True)
        self._threads[run_id] = t
        t.start()

    def join(self, timeout: float | None = None) -> None:
        for t in list(self._threads.values()):
            t.join(timeout)


def _kubectl_apply(manifest: dict[str, Any]) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RunnerError("kubectl is not on PATH; the Kubernetes runner submits Jobs with `kubectl apply -f -`")
    proc = subprocess.run([kubectl, "apply", "-f", "-"], input=json.dumps(manifest), capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RunnerError(f"kubectl apply failed: {proc.stderr.strip()[:500]}")


@dataclass
class KubernetesRunner:
    image: str = "edgefleet-controller:0.1.0"
    namespace: str = "default"
    data_claim: str = "edgefleet-data"  # a PersistentVolumeClaim holding the data directory (shared with the controller)
    data_mount: str = "/data"  # where the controller's data_dir is mounted in the Job
    data_dir: Path = Path("/data")  # the controller's data_dir, to map run folders into the mount
    cpu: str = "2"
    memory: str = "4Gi"
    submit: Callable[[dict[str, Any]], None] = _kubectl_apply
    name: str = "kubernetes"

    def env(self) -> list[dict[str, str]]:
        env = [{"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"}]
        for name in ("EDGEFLEET_MLFLOW_TRACKING_URI", "EDGEFLEET_CODE_VERSION"):
            if os.environ.get(name):
                env.append({"name": name, "value": os.environ[name]})
        return env

    def render(self, run_id: int, folder: Path, datasets_root: Path) -> dict[str, Any]:
        def inside(p: Path) -> str:
            try:
                return str(Path(self.data_mount) / p.resolve().relative_to(self.data_dir.resolve()))
            except ValueError:
                raise RunnerError(f"{p} is not under the data directory {self.data_dir}; the Job cannot see it") from None

        labels = {
            "app.kubernetes.io/name": "edgefleet-pipeline",
            "app.kubernetes.io/component": "train",
            "edgefleet.io/run": str(run_id),
        }
        job_name = re.sub(r"[^a-z0-9-]", "-", f"edgefleet-train-{run_id}")
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": job_name, "namespace": self.namespace, "labels": labels},
            "spec": {
                "backoffLimit": 0,  # a failed run is recorded and decided on again by the policy, not retried blindly
                "ttlSecondsAfterFinished": 86400,
                "activeDeadlineSeconds": 6 * 3600,
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "restartPolicy": "Never",
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 10001,
                            "runAsGroup": 10001,
                            "fsGroup": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [
                            {
                                "name": "train",
                                "image": self.image,
                                "command": ["python", "-m", "controller.pipeline.step"],
                                "args": [inside(folder), inside(datasets_root)],
                                "env": self.env(),
                                "volumeMounts": [{"name": "data", "mountPath": self.data_mount}],
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "resources": {
                                    "requests": {"cpu": self.cpu, "memory": self.memory},
                                    "limits": {"memory": self.memory},
                                },
                            }
                        ],
                        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": self.data_claim}}],
                    },
                },
            },
        }

    def start(
        self,
        run_id: int,
        folder: Path,
        datasets_root: Path,
        progress: Callable[[str], None],
        on_done: Callable[[], None] | None = None,  # unused: the leader's tick finds the Job's result
    ) -> None:
        try:
            import kubernetes_validate
        except ImportError:
            raise RunnerError(
                "the Kubernetes runner validates Jobs with kubernetes-validate; pip install kubernetes-validate"
            ) from None
        manifest = self.render(run_id, folder, datasets_root)
        try:
            kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise RunnerError(f"the rendered Job is not valid Kubernetes {K8S_VERSION}: {exc}") from None
        (folder / "job.json").write_text(json.dumps(manifest, indent=1))
        self.submit(manifest)
        progress(f"submitted Job {manifest['metadata']['namespace']}/{manifest['metadata']['name']}")
