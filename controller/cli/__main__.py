"""``python -m controller.cli``: the same as ``edgefleet``."""

from controller.cli import main

main()
