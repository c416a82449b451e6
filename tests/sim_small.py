"""``sim.py`` with the attacker's sets cut to every 20th image (``runs.every_20th``), for the tests that need a real
process (two studies at once, Ray jobs, the shared sweep): their attacks then take seconds, not a minute. The clients'
evaluation set stays whole, so training is sim.py's own. Run it as ``python tests/sim_small.py ARGS`` from the
repository root; a user never does."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # the repository (sim.py's packages), then runs.py

from runs import every_20th  # noqa: E402

import data.omniglot  # noqa: E402
import sim  # noqa: E402

if __name__ == "__main__":
    data.omniglot.load_set = every_20th
    sys.exit(sim.main())
