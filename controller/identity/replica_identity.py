"""``edgefleet-controller broker-identity``: give one replica of a StatefulSet its own MQTT client identity.

The secure broker makes the certificate CN the client id, so replicas sharing one
certificate knock each other off. ``broker_setup --replicas N`` issues ``_controller``,
``_controller-2``, ...; a StatefulSet pod ``<name>-<k>`` takes the (k+1)-th of them. Run as
an init container, this copies that certificate, its key (mode 0600, which a Kubernetes
secret volume with ``fsGroup`` cannot give) and the CA into the pod's data directory.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from controller.identity.broker_auth import controller_identities
from shared.fsutil import atomic_write_bytes

CERT, KEY, CA = "mqtt-client.pem", "mqtt-client.key", "ca.pem"  # what the replica reads (EDGEFLEET_BROKER_*_FILE)


def identity_for_pod(pod_name: str) -> str:
    """``edgefleet-controller-0`` -> ``_controller``, ``...-1`` -> ``_controller-2``; ValueError otherwise."""
    _, _, tail = pod_name.rpartition("-")
    if not tail.isdigit():
        raise ValueError(f"expected a StatefulSet pod name ending in -<ordinal>, got {pod_name!r}")
    k = int(tail)
    return controller_identities(k + 1)[k]


def install(source: Path, pod_name: str, dest: Path) -> str:
    """Copy the pod's certificate, key and CA from ``source`` into ``dest``; return the identity's name."""
    name = identity_for_pod(pod_name)
    files = {CERT: source / f"{name}.pem", KEY: source / f"{name}.key", CA: source / "ca.pem"}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no broker identity for pod {pod_name} ({name}): missing {', '.join(missing)}")
    dest.mkdir(parents=True, exist_ok=True)
    for target, src in files.items():
        atomic_write_bytes(dest / target, src.read_bytes(), mode=0o600 if target == KEY else 0o644)
    return name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edgefleet-controller broker-identity", description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="source", type=Path, required=True, help="every replica's <name>.pem/.key and ca.pem")
    p.add_argument("--pod", default=os.environ.get("POD_NAME", ""), help="this pod's name (default: $POD_NAME)")
    p.add_argument("--to", dest="dest", type=Path, required=True, help="where the replica reads its identity")
    args = p.parse_args(argv)
    try:
        name = install(args.source, args.pod, args.dest)
    except (ValueError, OSError) as exc:
        print(f"edgefleet-controller broker-identity: {exc}")
        return 2
    print(f"pod {args.pod} uses broker identity {name}: {args.dest / CERT}, {args.dest / KEY}")
    return 0
