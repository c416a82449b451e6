"""Datasets behind one small interface (``data.base.Dataset``) and a registry: Omniglot (``data.omniglot``) and a
tiny synthetic set for smoke tests (``data.synthetic``). Each module registers its dataset when imported here."""

from data import omniglot, synthetic  # noqa: F401  (registers the built-in datasets)
