"""``python -m controller.identity.broker_setup``: write a secure Mosquitto setup from the controller's device CA.

Writes into ``--out``: ``ca.pem``, ``broker.pem``/``broker.key``, ``crl.pem``,
``acl``, ``dynsec.json``, ``share_guard.so`` (compiled here: needs a C compiler
and the Mosquitto plugin headers) and ``mosquitto.conf``; and the controller's MQTT
client identity into ``<data-dir>/identity/``. Prints the ``EDGEFLEET_*``
settings the controller then needs. No secret is printed.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from controller.identity.broker_auth import controller_identities, new_share_group, provision, write_identity
from controller.identity.broker_config import MosquittoConfig
from controller.identity.pki import DeviceCA
from controller.identity.share_guard import ShareGuardBuildError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m controller.identity.broker_setup", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=Path("./edgefleet-data"), help="the controller's EDGEFLEET_DATA_DIR")
    p.add_argument("--out", type=Path, required=True, help="directory for the broker's files")
    p.add_argument("--port", type=int, default=8883)
    p.add_argument("--bind", default="0.0.0.0")  # a broker listens for devices
    p.add_argument("--host", action="append", default=[], help="name or IP devices use for the broker (repeatable)")
    p.add_argument("--replicas", type=int, default=1, help="controller replicas: one client certificate each")
    p.add_argument("--run-as", default=None, help="user Mosquitto runs as (default: mosquitto when started as root)")
    p.add_argument(
        "--broker-plugins",
        type=Path,
        default=None,
        help="directory on the broker's machine already holding share_guard.so and mosquitto_dynamic_security.so "
        "(deploy/Dockerfile.broker builds them into /usr/lib/edgefleet); default: compile the share guard here",
    )
    args = p.parse_args(argv)

    ca = DeviceCA.open(args.data_dir / "ca", create=True)
    names = controller_identities(args.replicas)
    try:
        hosts = tuple(args.host or ["127.0.0.1", "localhost"])
        sec = provision(ca, args.out.resolve(), hosts=hosts, controllers=names, plugins=args.broker_plugins)
    except ShareGuardBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    pid = args.out.resolve() / "mosquitto.pid"
    conf = MosquittoConfig(port=args.port, bind=args.bind, security=sec, pid_file=pid, run_as=args.run_as)
    (args.out / "mosquitto.conf").write_text(conf.render())
    idents = [write_identity(ca, name, args.data_dir.resolve() / "identity") for name in names]
    ident = idents[0]
    if args.run_as:
        import pwd

        uid = pwd.getpwnam(args.run_as).pw_uid
        for f in (sec.keyfile, sec.dynsec_config, sec.crlfile):
            if f is not None and os.geteuid() == 0:
                os.chown(f, uid, -1)
    print(f"wrote {args.out / 'mosquitto.conf'}; start it with: mosquitto -c {args.out / 'mosquitto.conf'}")
    print("controller settings:")
    for k, v in {
        "EDGEFLEET_BROKER_PORT": args.port,
        "EDGEFLEET_BROKER_TLS": "true",
        "EDGEFLEET_BROKER_CA_FILE": sec.cafile,
        "EDGEFLEET_BROKER_CERT_FILE": ident.cert,
        "EDGEFLEET_BROKER_KEY_FILE": ident.key,
        "EDGEFLEET_BROKER_CRL_FILE": sec.crlfile,
        "EDGEFLEET_BROKER_PID_FILE": pid,
        "EDGEFLEET_MQTT_SHARE_GROUP": new_share_group(),  # the same on every replica; devices must not know it
    }.items():
        print(f"  {k}={v}")
    for other in idents[1:]:
        print(f"  replica {other.cert.stem}: EDGEFLEET_BROKER_CERT_FILE={other.cert} EDGEFLEET_BROKER_KEY_FILE={other.key}")
    if os.geteuid() == 0 and not args.run_as:
        print(
            f"note: as root Mosquitto switches to user 'mosquitto'; "
            f"pass --run-as or chown {args.out} (e.g. to {getpass.getuser()})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
