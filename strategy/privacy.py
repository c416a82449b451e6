"""Moved: the privacy calculator is ``python sim.py epsilon`` (``core.privacy.describe_dp_sgd``). This entry point
still works and says so."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    print("note: python -m strategy.privacy is now: python sim.py epsilon", file=sys.stderr)
    from sim import main

    sys.exit(main(["epsilon", *sys.argv[1:]]))
