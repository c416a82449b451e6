"""Scripts that measure performance (run.py), printing times and ratios. Run them as scripts."""
