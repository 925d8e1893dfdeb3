"""One module per benchmark, each with ``run() -> dict`` (see scripts/bench.py)."""
