"""The message protocol between the ServerApp (``strategy/``) and the ClientApp (``clients/``): record names.

A train message: ``arrays`` (the global model, keys ``device.*`` / ``head.*``), ``config`` (the RunConfig in
kebab-case plus ``server-round``) and, when the server holds one, ``privacy`` (the client's accountant history).
A train reply: ``arrays`` (only when trained), ``metrics``, ``status`` and ``privacy``; in a client's last round
also ``intercepted`` (the activations it sent across the cut).
A query with ``config.query == "partition-id"`` is answered with the node's partition id; any other query with
``intercepted`` (every private image through the received device model).
"""

from __future__ import annotations

ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
PRIVACY_KEY = "privacy"  # the accountant history: core.privacy.history_to_lists
STATUS_KEY = "status"  # {"status": "trained" | "failed" | "over-budget", "message": str}
INTERCEPTED_KEY = "intercepted"  # {"activations": float32 [n,32,1,1], "index": int64 [n]}
QUERY_PARTITION_ID = "partition-id"  # value of config["query"] for the start-up question

STATUSES = ("trained", "failed", "over-budget")
