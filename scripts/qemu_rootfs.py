#!/usr/bin/env python
"""Build (or find cached) the arm64 Debian root file system for aarch64 agents under qemu-user.

python scripts/qemu_rootfs.py            # prints the image path; builds it when missing
python scripts/qemu_rootfs.py --rebuild  # throw the cached image away first
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware_sim.qemu.rootfs import Recipe, RootfsError, cache_dir, ensure_rootfs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=None, help=f"cache directory (default {cache_dir()})")
    p.add_argument("--mirror", default="", help="Debian mirror (default: the one in this machine's apt sources)")
    p.add_argument("--rebuild", action="store_true", help="discard the cached image and wheels first")
    args = p.parse_args()
    recipe = Recipe(mirror=args.mirror)
    base = args.cache or cache_dir()
    if args.rebuild:
        for d in base.glob(f"*{recipe.key()}*"):
            shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink()
    t = time.monotonic()
    try:
        root = ensure_rootfs(recipe, base, quiet=False)
    except RootfsError as exc:
        print(f"qemu_rootfs: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"rootfs": str(root), "seconds": round(time.monotonic() - t, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
