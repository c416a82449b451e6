"""What every package of the federation agrees on: the run's settings, the user-error policy, privacy accounting,
the message protocol between ClientApp and ServerApp, and how files are written (atomically).

Lowest layer of our own code: it imports nothing of ``split/``, ``clients/``, ``strategy/`` or ``attack/``.
"""
