"""Canaries in the clients' DP-SGD, scored the way the server scores them, on real Omniglot images: the ledger is
unchanged, an honest run stays under its epsilon, and a run whose noise is switched off behind the ledger's back is
caught."""

from __future__ import annotations

import copy
import io
import json
from types import SimpleNamespace

import numpy as np
import opacus.optimizers.optimizer as dp_optimizer
import pytest
import torch
from rich.console import Console

from audit.auditor import Auditor, AuditViolation
from audit.bound import server_view_bound
from audit.canaries import CanaryInjector, plan_canaries
from clients.train import train_local
from core.config import RunConfig
from core.privacy import epsilon
from core.rundir import RunDir
from data.omniglot import EVALUATION, load_set
from split.model import build_split
from strategy.server_app import write_audit

PER_CLIENT = 128  # images per client: batch 32, so q = 0.25 and 4 steps a round


@pytest.fixture(scope="module")
def shards() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two clients, each the first 128 images of its own evaluation alphabet (labels: alphabet ids)."""
    data = load_set(EVALUATION)
    out = []
    for alphabet in (0, 1):
        idx = np.flatnonzero(data.alphabet == alphabet)[:PER_CLIENT]
        out.append((torch.from_numpy(data.as_float(idx)), torch.from_numpy(data.alphabet[idx])))
    return out


def federate(cfg: RunConfig, shards, rounds: int) -> tuple[Auditor, dict[int, list]]:
    """FedAvg of the clients' devices over ``rounds`` rounds, in this process, with the auditor watching each
    round as the server does (strategy.driver); returns it and the clients' accountant histories."""
    torch.manual_seed(0)
    device, head = build_split(**cfg.model_options(), image_side=105, n_classes=20)
    plan = plan_canaries(cfg)
    auditor, histories = Auditor(plan), {pid: [] for pid in range(len(shards))}
    for server_round in range(1, rounds + 1):
        start = {k: v.detach().numpy().copy() for k, v in device.state_dict().items()}
        returned = {}
        for pid, (images, labels) in enumerate(shards):
            local, local_head = copy.deepcopy(device), copy.deepcopy(head)
            seed = 1000 * server_round + pid
            result = train_local(
                local, local_head, images, labels, cfg, histories[pid], seed, canaries=plan, partition=pid
            )
            histories[pid] = result.history
            returned[pid] = {k: v.detach().numpy().copy() for k, v in local.state_dict().items()}
        auditor.observe(start, returned)
        mean = {k: np.mean([r[k] for r in returned.values()], axis=0) for k in start}
        device.load_state_dict({k: torch.from_numpy(v) for k, v in mean.items()})
    return auditor, histories


def settings(noise: float) -> RunConfig:
    return RunConfig(clients=2, audit=400, noise=noise, batch_size=32, rounds=6).validate()


@pytest.mark.parametrize("noise", [3.0, 0.0])
def test_canaries_leave_the_ledger_as_it_was(shards, noise: float) -> None:
    """The same round with and without --audit records the same (sigma, q, steps): a canary is a record at the
    client's own rate, so the accountant does not see it."""
    images, labels = shards[0]
    histories = []
    for audit in (0, 400):
        cfg = RunConfig(clients=2, audit=audit, noise=noise, batch_size=32).validate()
        torch.manual_seed(0)
        device, head = build_split(**cfg.model_options(), image_side=105, n_classes=20)
        plan = plan_canaries(cfg) if audit else None
        histories.append(train_local(device, head, images, labels, cfg, [], 7, canaries=plan, partition=0).history)
    assert histories[0] == histories[1]


def test_a_drawn_canary_is_one_more_per_sample_gradient_of_exactly_the_clip_norm(shards) -> None:
    cfg = settings(3.0)
    plan = plan_canaries(cfg)
    device, _ = build_split(**cfg.model_options(), image_side=105, n_classes=20)
    named = dict(device.named_parameters())
    for p in named.values():
        p.grad_sample = torch.zeros(5, *p.shape)
    injector = CanaryInjector(plan, 0, named, q=1.0, clip=cfg.clip, seed=0)
    injector.into_grad_samples(list(named.values()))
    mine = int(((plan.client == 0) & plan.included).sum())
    assert injector.drawn == mine > 0
    rows = torch.cat([p.grad_sample.reshape(len(p.grad_sample), -1) for p in named.values()], 1)
    assert rows.shape[0] == 5 + mine
    assert torch.equal(rows[5:].norm(dim=1), torch.full((mine,), cfg.clip))
    assert int((rows[5:] != 0).sum()) == mine  # one coordinate each


def test_the_auditor_keeps_each_round_and_resumes_from_its_state() -> None:
    """Three clients' pushes over two rounds: the score sums each canary's own push less the others' mean, the
    spread is the others' standard deviation, and a state dict round-trip (the checkpoint) gives the same scores."""
    cfg = RunConfig(clients=3, audit=30, noise=1.0).validate()
    plan = plan_canaries(cfg)
    start = {n: np.zeros(1 + int(plan.offset[plan.param == p].max(initial=0))) for p, n in enumerate(plan.names)}
    auditor = Auditor(plan)
    rounds = [{pid: {n: v - (pid + 1) * (r + 1) for n, v in start.items()} for pid in range(3)} for r in range(2)]
    for returned in rounds:
        auditor.observe(start, returned)
    assert auditor.rounds == 2
    # Client c pushes its coordinates by (c + 1)(r + 1): its own less the others' mean, summed over two rounds.
    expected = np.array([sum((c + 1) * (r + 1) - np.mean([(o + 1) * (r + 1) for o in range(3) if o != c])
                             for r in range(2)) for c in plan.client])  # fmt: skip
    assert np.allclose(auditor.scores, expected)
    spread = np.array([np.std([(o + 1) for o in range(3) if o != c], ddof=1) for c in plan.client])
    assert np.allclose(auditor.spread[1], 2 * spread)
    again = Auditor(plan)
    again.load_state_dict(copy.deepcopy(auditor.state_dict()))
    assert np.array_equal(again.scores, auditor.scores) and again.rounds == 2


@pytest.mark.slow
def test_an_honest_run_audits_below_its_epsilon_and_a_run_without_noise_is_caught(
    shards, monkeypatch, tmp_path
) -> None:
    """sigma 3 (the ledger's epsilon about 2 at delta 1e-5 after 24 steps a client): the audit stays below it.
    The same run with Opacus's noise replaced by zeros, the ledger still recording sigma 3: the bound passes the
    claimed epsilon, which ``audit.json`` calls a violation."""
    cfg = settings(3.0)
    honest, histories = federate(cfg, shards, cfg.rounds)
    found = honest.result(histories, cfg.delta, cfg.accountant)
    assert found["epsilon"] == pytest.approx(epsilon(histories[0], cfg.delta, "rdp"))
    assert 1.5 < found["epsilon"] < 2.5
    print(f"honest: {found['correct']}/{found['guesses']}, eps_lower {found['epsilon_lower']:.3f}")
    assert found["epsilon_lower"] <= found["epsilon"] and not found["violation"]
    # Beside it, what an ideal audit of the same m canaries reaches at the ledger's epsilon, and the fraction.
    assert 0 < found["ideal_epsilon_lower"] < found["epsilon"]
    assert found["fraction_of_ideal"] == pytest.approx(found["epsilon_lower"] / found["ideal_epsilon_lower"])
    # And the most a server reading one summed update per client and round could show, for this client's history.
    assert found["server_view_epsilon_lower"] == server_view_bound(histories[0], cfg.delta, 400)
    assert 0 < found["server_view_epsilon_lower"] < found["epsilon"]

    monkeypatch.setattr(dp_optimizer, "_generate_noise", lambda std, reference, **_: torch.zeros_like(reference))
    broken, histories = federate(cfg, shards, cfg.rounds)
    caught = broken.result(histories, cfg.delta, cfg.accountant)
    assert caught["epsilon"] == pytest.approx(found["epsilon"])  # the ledger claims the same
    print(f"broken: {caught['correct']}/{caught['guesses']}, eps_lower {caught['epsilon_lower']:.3f}")
    assert caught["violation"] and caught["epsilon_lower"] > caught["epsilon"]
    # The server writes audit.json, then fails the run with one line naming both numbers.
    run = RunDir(tmp_path)
    with pytest.raises(AuditViolation, match=r"lower bound .* exceeds the ledger's epsilon"):
        write_audit(run, broken, SimpleNamespace(histories=histories), cfg, Console(file=io.StringIO()))
    assert json.loads(run.audit.read_text())["violation"] is True
    print(f"honest {found['epsilon_lower']:.3f}, broken {caught['epsilon_lower']:.3f} vs eps {found['epsilon']:.3f}")


@pytest.mark.slow
def test_without_dp_the_canaries_are_found(shards) -> None:
    """No noise, no clipping: the bound comes near its ceiling for 400 canaries (about 4.4, all guessed right)."""
    cfg = settings(0.0)
    auditor, histories = federate(cfg, shards, cfg.rounds)
    found = auditor.result(histories, cfg.delta, cfg.accountant)
    assert found["epsilon"] is None and not found["violation"]
    assert found["ideal_epsilon_lower"] is None and found["fraction_of_ideal"] is None
    assert found["server_view_epsilon_lower"] is None and found["fraction_of_server_view"] is None
    assert found["epsilon_lower"] > 3.0
    print(f"no DP: {found['correct']}/{found['guesses']}, eps_lower {found['epsilon_lower']:.3f}")
