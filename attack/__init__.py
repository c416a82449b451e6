"""attack package."""
