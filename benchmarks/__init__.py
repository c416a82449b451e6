"""Scripts that measure: performance (run.py) and accuracy levers (levers.py). Run them as scripts."""
