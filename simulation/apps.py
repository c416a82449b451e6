"""The apps ``flwr run .`` loads (``[tool.flwr.app.components]`` in pyproject.toml): the ServerApp, with the run's
figures drawn when training ends, and the ClientApp. Settings come from the Flower run config."""

from __future__ import annotations

from clients.client_app import build_client_app
from report.run_figures import plot_run
from strategy.server_app import build_server_app

server_app = build_server_app(on_complete=plot_run)
client_app = build_client_app()
