"""``edgefleet-controller``: run the controller's HTTP API and MQTT bridge; ``edgefleet-controller init``
creates the secrets every replica shares (``controller/init.py``); ``edgefleet-controller migrate`` brings the
database schema up to date and exits; ``edgefleet-controller broker-identity`` gives a StatefulSet replica its own
MQTT client certificate (``controller/identity/replica_identity.py``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import uvicorn
from pydantic import ValidationError

from controller.app import create_app
from controller.core.config import Settings

log = logging.getLogger("edgefleet.controller")


def migrate_only() -> int:
    from controller.core.db import init_db, make_engine

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Only the database URL: the migration Job has none of the replicas' secrets.
    engine = make_engine(os.environ.get("EDGEFLEET_DATABASE_URL", Settings.model_fields["database_url"].default))
    try:
        init_db(engine)
    finally:
        engine.dispose()
    log.info("database schema is up to date")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["init"]:  # edgefleet-controller init: the shared secrets, once
        from controller.init import main as init_main

        return init_main(argv[1:])
    if argv[:1] == ["broker-identity"]:  # a StatefulSet replica's own MQTT client certificate (init container)
        from controller.identity.replica_identity import main as identity_main

        return identity_main(argv[1:])
    if argv[:1] == ["migrate"]:  # edgefleet-controller migrate: the schema only (a deployment's migration Job)
        return migrate_only()
    p = argparse.ArgumentParser(prog="edgefleet-controller", description="edgefleet controller (settings from EDGEFLEET_* env)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--fd", type=int, default=None, help="serve on this inherited, already bound socket (host and port ignored)")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings()  # refuses placeholder secrets and plain HTTP outside development
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(x) for x in err["loc"])
            print(f"edgefleet-controller: refusing to start: {where + ': ' if where else ''}{err['msg']}", file=sys.stderr)
        return 2
    for level, line in settings.startup_lines():
        log.log(level, line)
    bind: dict[str, Any] = {"fd": args.fd} if args.fd is not None else {"host": args.host, "port": args.port}
    uvicorn.run(create_app(settings), log_level=args.log_level, **bind, **tls_options(settings))
    return 0


def tls_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's HTTPS options from EDGEFLEET_TLS_CERT_FILE / EDGEFLEET_TLS_KEY_FILE (paths only; never the key)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return {}
    return {"ssl_certfile": str(settings.tls_cert_file), "ssl_keyfile": str(settings.tls_key_file)}
