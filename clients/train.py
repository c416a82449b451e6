"""One client's local round of split learning: DP-SGD (Opacus) on the device convnet, plain SGD on the head copy.

SplitFed v1 per step: the device computes activations [B,C,H,W] (``--cut``) and sends them (with labels) across the cut;
the server runs its head copy, updates it, and sends the cut-layer gradient back; the device back-propagates that
gradient through its convnet and takes a DP-SGD step (per-sample clipping + Gaussian noise). In the simulation both
halves run in the client's worker: the tensors that cross the cut are exactly the ones a networked deployment sends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from opacus.optimizers import DPOptimizer
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from audit.canaries import CanaryInjector, CanaryPlan
from clients import grad_samplers
from clients.detector import LabelProbe
from clients.grad_samplers import PerSampleDevice
from core.config import RunConfig
from core.privacy import History, make_accountant, sample_rate, total_steps
from core.runtime import keep_freed_memory
from split.cut import Cut, cut_for
from split.model import activation_shape


@dataclass
class LocalResult:
    """What a local round produced. loss: mean cross-entropy (nats); accuracy in [0,1]; steps this round."""

    history: History
    steps: int
    loss: float
    accuracy: float
    n_train: int
    cut_activations: torch.Tensor | None = None  # float32 [M,C,H,W]: every activation sent this round
    cut_positions: torch.Tensor | None = None  # int64 [M]: which training image (row of ``images``) each came from
    probe_scores: list[float] = dataclasses.field(default_factory=list)  # --detect: each probe's cosine


def label_skew_bias(kind: str, labels: torch.Tensor, n_classes: int) -> torch.Tensor | None:
    """Logit offsets [n_classes] for a client's loss under label skew, from its own labels int64 [N] (None: none).

    ``restricted``: classes the client does not hold get -inf, so its softmax runs over its own classes only and
    its steps never push the absent classes' logits down (FedRS with alpha 0, Li & Zhan, KDD 2021).
    ``logit-adjust``: log of the client's class frequencies (balanced softmax, Ren et al. 2020; FedLC-style
    calibration), absent classes floored at 1e-4.
    """
    if kind == "none":
        return None
    prior = torch.bincount(labels, minlength=n_classes).double() / max(len(labels), 1)
    if kind == "restricted":
        return torch.where(prior > 0, 0.0, -math.inf).float()
    return prior.clamp_min(1e-4).log().float()


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr) if name == "adam" else torch.optim.SGD(params, lr=lr)


def split_step(
    device: nn.Module,
    head: nn.Module,
    device_opt: torch.optim.Optimizer,
    head_opt: torch.optim.Optimizer | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    cut: Cut | None = None,
    logit_bias: torch.Tensor | None = None,
    views: int = 1,
    before_step: Callable[[], None] | None = None,
    server: Callable[[torch.Tensor], torch.Tensor] | None = None,
    probe: LabelProbe | None = None,
) -> tuple[float, int, torch.Tensor]:
    """One split-learning step. images float32 [B,1,105,105], labels int64 [B].

    Returns (summed cross-entropy over the batch, number correct, what was sent across the cut [B,C,H,W],
    detached). ``device_opt`` may be an Opacus DPOptimizer, with ``device`` its GradSampleModule or a
    ``PerSampleDevice`` (which takes the cut gradient itself and sets the per-sample gradients). ``cut``: what
    the device does to its activations before sending them (``split.cut``; identity when None). ``head_opt``
    None: the head stays fixed during the step. ``logit_bias``
    float32 [n_classes] is added to the logits in the loss only (``label_skew_bias``); accuracy uses raw logits.
    ``views`` > 1: the batch is ``views`` consecutive augmented views of each image (``augmented_views``); the
    fused sampler averages each image's view gradients before clipping. ``before_step`` runs between the device's
    backward pass and its optimizer step (the audit's canaries join the batch there). ``server``: what the server
    sends down the cut instead of the task's gradient, from what it received (``split.server``; the hijack's
    ``gradient``); None: the task's gradient. The head trains on what it received either way. ``probe``
    (``--detect``): after the server's answer, maybe asks it again with wrong labels (``clients.detector``); what
    it answers is never applied to the device.
    """
    cut = cut or Cut()
    activations = device(images)
    sent = cut(activations)
    device_opt.zero_grad(set_to_none=True)
    serve = functools.partial(serve_step, head, head_opt, sent, logit_bias=logit_bias, server=server)
    loss, logits, grad_sent = serve(labels)
    if probe is not None:  # --detect: maybe the same activations again, with wrong labels (clients.detector)
        probe.after_step(labels, grad_sent, lambda wrong: serve(wrong)[2])
    grad = cut.device_gradient(images, activations, sent, grad_sent)  # device side: what came back down the cut
    if isinstance(device, PerSampleDevice):
        device.backward(grad, views=views)
    elif activations.requires_grad:  # False for a wholly frozen device (--freeze-blocks = --cut)
        activations.backward(grad)
    if before_step is not None:
        before_step()
    device_opt.step()
    summed = float(loss) * len(labels) if len(labels) else 0.0  # an empty Poisson batch's mean is NaN
    return summed, int((logits.argmax(1) == labels).sum()), sent.detach()


def serve_step(
    head: nn.Module,
    head_opt: torch.optim.Optimizer | None,
    sent: torch.Tensor,
    labels: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
    server: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The server's side of a step, for what the device ``sent`` [B,C,H,W] with ``labels`` int64 [B]: its head copy
    takes a step (unless ``head_opt`` is None) and it answers the gradient it sends down the cut, the task's or
    ``server(received)``'s (``split_step``). Returns (mean loss, logits [B,K], that gradient [B,C,H,W]), detached."""
    received = sent.detach().requires_grad_(True)  # what the server receives
    logits = head(received)
    loss = F.cross_entropy(logits if logit_bias is None else logits + logit_bias, labels)
    head.zero_grad(set_to_none=True)
    loss.backward()  # head gradients and the cut-layer gradient received.grad
    if head_opt is not None:
        head_opt.step()
    grad = received.grad if server is None else server(received.detach())
    return loss.detach(), logits.detach(), grad


def train_local(
    device: nn.Module,
    head: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: RunConfig,
    history: History,
    seed: int,
    torch_device: torch.device | str = "cpu",
    record_cut: bool = False,
    max_steps: int | None = None,
    canaries: CanaryPlan | None = None,
    partition: int = 0,
    server: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> LocalResult:
    """Train ``device`` (in place) with DP-SGD and ``head`` (in place) for ``cfg.local_epochs`` epochs.

    images: float32 [N,1,105,105] in [0,1]; labels: int64 [N] alphabet ids. ``history`` is this client's accountant
    history before the round; the result's history includes this round's steps. ``cfg.noise == 0`` trains without
    clipping or noise (shuffled batches) and records the steps with noise 0, i.e. epsilon = inf.
    ``cfg.train_params`` "norm" trains only the GroupNorm scales and shifts (``DeviceNet.train_only_norm``).
    ``cfg.freeze_blocks`` leaves the device's first blocks untrained (``DeviceNet.freeze``); with every block frozen
    nothing is clipped or noised, and the ledger records the planned steps at ``cfg.noise`` (a conservative bound
    for a device that releases nothing new).
    ``record_cut`` keeps every activation that crossed the cut (what a curious server sees during training).
    ``max_steps`` stops the round early (a failure the test seam injects, ``clients/fault_injection.py``); the
    steps taken are in the history.
    ``cfg.skew_loss`` offsets the logits in the loss (``label_skew_bias``); with ``cfg.proximal_mu`` > 0 (FedProx) the
    device is pulled towards its starting (global) weights after every step (``_proximal_step``).
    ``canaries`` (``--audit``): the run's canary plan; this client's (``partition``) included canaries join each
    step with the client's sample rate (``audit.canaries``), their draws seeded by ``seed + 3``.
    ``server``: see ``split_step`` (``--server hijack``); the client's DP-SGD is the same either way.
    ``cfg.detect`` > 0: that share of steps is probed with wrong labels (``clients.detector``); the cosines are in
    the result's ``probe_scores``.
    Sets this process's allocator to keep freed memory (``core.runtime``): about 2x faster steps on the CPU.
    """
    keep_freed_memory()
    device.to(torch_device).train()
    head.to(torch_device).train()
    loader = DataLoader(
        TensorDataset(images, labels, torch.arange(len(labels))),
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    device.freeze(cfg.freeze_blocks)
    if cfg.train_params == "norm":
        device.train_only_norm()
    trainable = [p for p in device.parameters() if p.requires_grad]
    # A wholly frozen device (the control) still runs its steps, with an optimizer over one empty tensor.
    device_opt = make_optimizer(cfg.optimizer, trainable or [torch.zeros(0, requires_grad=True)], cfg.lr)
    # Each client's round trains its own head copy (SplitFed v1, in both head modes).
    head_opt = make_optimizer(cfg.optimizer, head.parameters(), cfg.lr)
    bias = label_skew_bias(cfg.skew_loss, labels, head[-1].out_features)
    bias = bias.to(torch_device) if bias is not None else None
    sender = cut_for(cfg).to(torch_device)  # the same cut as the client's queries (split.cut)
    # FedProx's train config carries its weight; no other strategy sends one (simulation.registries checks it).
    anchor = [p.detach().clone() for p in device.parameters()] if cfg.proximal_mu > 0 else None
    engine, wrapped = None, None
    model = device
    if cfg.noise > 0 and trainable:
        engine = PrivacyEngine()
        engine.accountant = make_accountant(cfg.accountant, history)  # composed with every earlier round
        wrapped, device_opt, loader = engine.make_private(
            module=device,
            optimizer=device_opt,
            data_loader=loader,
            noise_multiplier=cfg.noise,
            max_grad_norm=cfg.clip,
            poisson_sampling=True,
            noise_generator=torch.Generator(device=torch_device).manual_seed(seed + 1),
        )
        model = grad_samplers.install(wrapped, cfg.grad_sampler)
    before_step = None
    if canaries is not None:
        named = {name: p for name, p in device.named_parameters() if p.requires_grad}
        q = sample_rate(len(labels), cfg.batch_size)
        injector = CanaryInjector(canaries, partition, named, q, cfg.clip, seed + 3)
        if engine is not None:  # a drawn canary is one more per-sample gradient, clipped and noised with the batch
            before_step = functools.partial(injector.into_grad_samples, trainable)
        else:
            before_step = functools.partial(injector.into_grads, cfg.batch_size)
    # --detect: the label probe's own draws (seed + 4), so sampling and noise draw what they would without it.
    probe = LabelProbe(cfg.detect, labels, seed + 4) if cfg.detect > 0 else None
    loss_sum, correct, seen, steps = 0.0, 0, 0, 0
    sent, positions = [], []
    views_rng = torch.Generator().manual_seed(seed + 2)  # the augmentations' draws (noise uses seed + 1)
    for _ in range(cfg.local_epochs):
        with _physical_batches(loader, device_opt, cfg.physical_batch) as batches:
            for x, y, pos in batches:
                if steps == max_steps:
                    break
                x, y = x.to(torch_device), y.to(torch_device)
                if cfg.aug_mult > 1:  # K views of each image, consecutive; labels and positions follow them
                    x = augmented_views(x, cfg.aug_mult, views_rng)
                    y, pos = y.repeat_interleave(cfg.aug_mult), pos.repeat_interleave(cfg.aug_mult)
                batch_loss, batch_correct, cut = split_step(
                    model,
                    head,
                    device_opt,
                    head_opt,
                    x,
                    y,
                    cut=sender,
                    logit_bias=bias,
                    views=max(cfg.aug_mult, 1),
                    before_step=before_step,
                    server=server,
                    probe=probe,
                )
                stepped = not getattr(device_opt, "_is_last_step_skipped", False)  # False inside a logical batch
                if anchor is not None and stepped:
                    _proximal_step(device, anchor, cfg.lr * cfg.proximal_mu)
                loss_sum, correct, seen = loss_sum + batch_loss, correct + batch_correct, seen + len(y)
                steps += stepped
                if record_cut:
                    sent.append(cut.cpu())
                    positions.append(pos)
    if engine is not None:
        new_history = list(engine.accountant.history)
        wrapped.remove_hooks()  # ``device`` itself holds the trained weights, now free of Opacus hooks
    else:  # no DP; or a wholly frozen device, whose steps the ledger still counts at the run's sigma
        new_history = list(history) + [(cfg.noise, sample_rate(len(labels), cfg.batch_size), steps)]
    assert total_steps(new_history) == total_steps(history) + steps
    result = LocalResult(new_history, steps, loss_sum / max(seen, 1), correct / max(seen, 1), len(labels))
    if probe is not None:
        result.probe_scores = probe.scores
    if record_cut:
        result.cut_activations = torch.cat(sent) if sent else torch.empty(0, *activation_shape(device))
        result.cut_positions = torch.cat(positions) if positions else torch.empty(0, dtype=torch.int64)
    return result


def augmented_views(images: torch.Tensor, views: int, generator: torch.Generator) -> torch.Tensor:
    """``views`` random small affine transforms of each image, consecutive: float32 [B,1,S,S] -> [B*views,1,S,S].

    Rotation within +-10 degrees, scale 0.9-1.1, shift within +-5 % of the side, no flips (a flipped character is
    another character); the border's (background) value fills what moves in.
    """
    n = len(images) * views
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(10)
    scale = 0.9 + 0.2 * torch.rand(n, generator=generator)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * 0.1  # affine_grid's units: the side is 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    source = images.repeat_interleave(views, dim=0)
    grid = F.affine_grid(theta.to(source), list(source.shape), align_corners=False)
    return F.grid_sample(source, grid, padding_mode="border", align_corners=False).clamp_(0.0, 1.0)


def _physical_batches(loader: DataLoader, optimizer: torch.optim.Optimizer, physical: int):
    """A context yielding ``loader``'s batches, each logical (Poisson) batch split into physical ones of at most
    ``physical`` images by Opacus's BatchMemoryManager when ``physical`` > 0 and the optimizer is a DP one: the
    DPOptimizer then sums the chunks' clipped per-sample gradients and noises once per logical batch, so the
    accountant's steps are unchanged. Otherwise the loader itself."""
    if physical and isinstance(optimizer, DPOptimizer):
        return BatchMemoryManager(data_loader=loader, max_physical_batch_size=physical, optimizer=optimizer)
    return contextlib.nullcontext(loader)


@torch.no_grad()
def _proximal_step(device: nn.Module, anchor: list[torch.Tensor], rate: float) -> None:
    """FedProx's pull towards the round's global weights, as a decoupled step after each optimizer step:
    w <- w - rate (w - w_global). It uses no data, so under DP-SGD it is post-processing: applying it outside the
    clipped, noised gradient keeps the guarantee and keeps it out of the clipping (Li et al. 2020 add it to the loss).
    """
    for param, start in zip(device.parameters(), anchor, strict=True):
        param.add_(start - param, alpha=rate)


@torch.no_grad()
def evaluate(
    device: nn.Module, head: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the split model on images float32 [N,1,105,105], labels int64 [N]."""
    device.eval()
    head.eval()
    param = next(device.parameters())
    loss_sum, correct = 0.0, 0
    for start in range(0, len(labels), batch_size):
        x = images[start : start + batch_size].to(param.device)
        y = labels[start : start + batch_size].to(param.device)
        logits = head(device(x))
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    return loss_sum / len(labels), correct / len(labels)
