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


def crash_mod(spec: str) -> Mod:
    """A mod crashing the train call named by ``spec`` ("<raise|exit>:<partition>:<round>"); the others pass on."""
    mode, target_pid, target_round = spec.split(":")

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if _train_call(msg, context) == (int(target_pid), int(target_round)):
            if mode == "exit":
                os._exit(3)
            raise RuntimeError(f"injected crash in client {target_pid}, round {target_round}")
        return call_next(msg, context)

    return mod


def fail_rate_mod(rate: float) -> Mod:
    """A mod telling each train call, with probability ``rate``, to fail part-way through its steps."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        call = _train_call(msg, context)
        if call is not None:
            seed = int(msg.content[CONFIG_KEY]["seed"])
            rng = np.random.default_rng([seed, call[0], call[1], 1])
            if rng.random() < rate:
                config = dict(msg.content[CONFIG_KEY])
                msg.content[CONFIG_KEY] = ConfigRecord({**config, FAIL_AT_KEY: float(rng.uniform(1e-6, 1.0))})
        return call_next(msg, context)

    return mod


def mods() -> list[Mod]:
    """The mods whose environment variable is set in this process (the simulation's driver); none in a user's run.
    Their settings travel inside the ClientApp to wherever its workers run (a Ray cluster's workers do not share the
    driver's environment)."""
    chosen = []
    if os.environ.get(INJECT_CRASH_ENV):
        chosen.append(crash_mod(os.environ[INJECT_CRASH_ENV]))
    if float(os.environ.get(FAIL_RATE_ENV, "0") or 0) > 0:
        chosen.append(fail_rate_mod(float(os.environ[FAIL_RATE_ENV])))
    return chosen
