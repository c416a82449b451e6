"""Test seam: make client training calls fail for real, to test how the server handles failing and dead clients.

Two Flower client mods, each on only when its environment variable is set (``mods()``; ``flwr run`` and a user's
run never set them), so the ClientApp and the settings hold no test code:

- ``SPLITFED_INJECT_CRASH=<raise|exit>:<partition>:<round>`` crashes the train call of that partition in that
  round: ``raise`` throws an unexpected exception (a bug in the ClientApp), ``exit`` kills the worker process (as
  the OOM killer would).
- ``SPLITFED_FAIL_RATE=<p>``: each train call fails part-way with probability ``p``, drawn from (seed, partition,
  round) so a run and its resumed copy fail alike. The client is told to stop after a share of its steps
  (``core.protocol.FAIL_AT_KEY``) and replies ``failed``, with the steps it took in its accountant.
"""

from __future__ import annotations

import os

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable, Mod

from core.protocol import CONFIG_KEY, FAIL_AT_KEY, ROUND_KEY

INJECT_CRASH_ENV = "SPLITFED_INJECT_CRASH"
FAIL_RATE_ENV = "SPLITFED_FAIL_RATE"


def _train_call(msg: Message, context: Context) -> tuple[int, int] | None:
    """(partition, round) of a train message, else None."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return None
    return int(context.node_config["partition-id"]), int(msg.content[CONFIG_KEY][ROUND_KEY])


def crash_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Crash the train call named by ``$SPLITFED_INJECT_CRASH`` (read in the worker, at call time); pass the
    others on unchanged."""
    spec, call = os.environ.get(INJECT_CRASH_ENV, ""), _train_call(msg, context)
    if spec and call is not None:
        mode, target_pid, target_round = spec.split(":")
        if (int(target_pid), int(target_round)) == call:
            if mode == "exit":
                os._exit(3)
            raise RuntimeError(f"injected crash in client {call[0]}, round {call[1]}")
    return call_next(msg, context)


def fail_rate_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """With probability ``$SPLITFED_FAIL_RATE``, tell this train call to fail part-way through its steps."""
    rate, call = float(os.environ.get(FAIL_RATE_ENV, "0") or 0), _train_call(msg, context)
    if rate > 0 and call is not None:
        seed = int(msg.content[CONFIG_KEY]["seed"])
        rng = np.random.default_rng([seed, call[0], call[1], 1])
        if rng.random() < rate:
            config = dict(msg.content[CONFIG_KEY])
            msg.content[CONFIG_KEY] = ConfigRecord({**config, FAIL_AT_KEY: float(rng.uniform(1e-6, 1.0))})
    return call_next(msg, context)


def mods() -> list[Mod]:
    """The client mods whose environment variable is set; none in a user's run."""
    chosen = [(INJECT_CRASH_ENV, crash_mod), (FAIL_RATE_ENV, fail_rate_mod)]
    return [mod for env, mod in chosen if os.environ.get(env)]
