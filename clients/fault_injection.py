"""Test seam: make one client training call crash for real, to test how the server handles a dead client.

``SPLITFED_INJECT_CRASH=<raise|exit>:<partition>:<round>`` crashes the train call of that partition in that round:
``raise`` throws an unexpected exception (a bug in the ClientApp), ``exit`` kills the worker process (as the OOM
killer would). It is a Flower client mod, so the ClientApp itself holds no test code; ``strategy/simulation.py``
adds it only when the variable is set (``mods()``), and ``flwr run`` never does.
"""

from __future__ import annotations

import os

from flwr.app import Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable, Mod

from core.protocol import CONFIG_KEY, ROUND_KEY

INJECT_CRASH_ENV = "SPLITFED_INJECT_CRASH"


def crash_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Crash the train call named by ``$SPLITFED_INJECT_CRASH`` (read in the worker, at call time); pass the
    others on unchanged."""
    spec = os.environ.get(INJECT_CRASH_ENV, "")
    if spec and msg.metadata.message_type == MessageType.TRAIN:
        mode, target_pid, target_round = spec.split(":")
        pid, server_round = int(context.node_config["partition-id"]), int(msg.content[CONFIG_KEY][ROUND_KEY])
        if (int(target_pid), int(target_round)) == (pid, server_round):
            if mode == "exit":
                os._exit(3)
            raise RuntimeError(f"injected crash in client {pid}, round {server_round}")
    return call_next(msg, context)


def mods() -> list[Mod]:
    """The client mods to run with: ``[crash_mod]`` when ``$SPLITFED_INJECT_CRASH`` is set, else none."""
    return [crash_mod] if os.environ.get(INJECT_CRASH_ENV) else []
