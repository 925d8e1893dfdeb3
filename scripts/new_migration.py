#!/usr/bin/env python
"""Write a new Alembic revision for changes to controller/core/tables.py.

    python scripts/new_migration.py "add rollout tables"

Upgrades a scratch SQLite database to the current head, then autogenerates the
difference to the models into controller/migrations/versions/ with the next
number as its revision id. Review the file (and run the suite: the test
tests/integration/test_migrations.py fails while models and migrations differ).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].strip():
        print(__doc__, file=sys.stderr)
        return 2
    from alembic import command
    from alembic.script import ScriptDirectory

    from controller.core.db import alembic_config, make_engine, migrate

    cfg = alembic_config()
    heads = ScriptDirectory.from_config(cfg).get_heads()
    if len(heads) > 1:
        print(f"several heads {heads}: set one's down_revision to the other first", file=sys.stderr)
        return 1
    next_id = f"{int(heads[0]) + 1:04d}" if heads and heads[0].isdigit() else None
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{tmp}/scratch.db")
        migrate(engine)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.revision(cfg, message=argv[0], autogenerate=True, rev_id=next_id)
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
