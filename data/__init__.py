"""Datasets behind one small interface (``data.base.Dataset``) and a registry: Omniglot today (``data.omniglot``)."""
