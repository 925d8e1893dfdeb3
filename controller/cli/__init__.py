"""``edgefleet``: the operator CLI over the controller's HTTP API, one module per resource.

Every command takes ``--url`` and ``--token`` (or ``EDGEFLEET_URL`` /
``EDGEFLEET_TOKEN``) and ``--json``. Failures are one line on stderr with an
exit code: 0 ok, 1 the controller refused (the message says why), 2 usage,
3 controller unreachable or not answering like one, 4 ``audit verify`` found
the chain broken, 5 a local file or input is unusable, 70 internal error
(``--debug`` shows the traceback). ``edgefleet --install-completion`` adds
shell completion.
"""

from __future__ import annotations

from typing import Annotated

import typer

from controller.cli import (
    audit,
    bundle,
    cohorts,
    devices,
    experiments,
    features,
    models,
    monitor,
    pipeline,
    release,
    rollouts,
    telemetry,
    tokens,
)
from controller.cli.common import Group

app = typer.Typer(help="Operate an edgefleet controller.", no_args_is_help=True, cls=Group, pretty_exceptions_enable=False)
for module in (models, devices, cohorts, audit, tokens, bundle, release, monitor, rollouts, experiments, pipeline, features):
    app.add_typer(module.app, name=module.__name__.rsplit(".", 1)[1])
app.command("whoami")(tokens.whoami)
app.command("telemetry")(telemetry.telemetry)


@app.callback()
def root(
    debug: Annotated[bool, typer.Option("--debug", help="show the traceback of a failure (anywhere on the line)")] = False,
) -> None:
    """Operate an edgefleet controller. Exit codes: 0 ok, 1 refused, 2 usage, 3 unreachable, 4 audit broken, 5 bad input."""


def main() -> None:
    app()
