"""``edgefleet``: the operator CLI over the controller's HTTP API, one module per resource.

Every command takes ``--url`` and ``--token`` (or ``EDGEFLEET_URL`` /
``EDGEFLEET_TOKEN``) and ``--json`` for machine-readable output. Exit codes:
0 ok, 1 the controller refused (the message says why), 2 usage, 3 controller
unreachable, 4 ``audit verify`` found the chain broken.
"""

from __future__ import annotations

import typer

from controller.cli import audit, cohorts, devices, models, telemetry, tokens

app = typer.Typer(help="Operate an edgefleet controller.", no_args_is_help=True)
for module in (models, devices, cohorts, audit, tokens):
    app.add_typer(module.app, name=module.__name__.rsplit(".", 1)[1])
app.command("whoami")(tokens.whoami)
app.command("telemetry")(telemetry.telemetry)


def main() -> None:
    app()
