"""split package."""
