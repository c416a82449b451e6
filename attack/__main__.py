"""Moved: re-running the attack is ``python sim.py attack RUN_DIR [RUN_DIR ...]``. This entry point still works
and says so."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    print("note: python -m attack is now: python sim.py attack", file=sys.stderr)
    from sim import main

    sys.exit(main(["attack", *sys.argv[1:]]))
