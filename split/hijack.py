"""The server's side of the Feature-Space Hijacking Attack (FSHA; Pasquini, Ateniese & Bernaschi, CCS 2021).

A hijacking server does not train the device for the task. From its own public images only it trains

- a **pilot** encoder with the device's architecture at the run's cut (``DeviceNet``),
- a **decoder** that inverts the pilot (``split.decoders.UpDecoder`` without dropout; pixel MSE), and
- a **critic** on the cut's activations (WGAN-GP, Gulrajani et al. 2017: real = the pilot's activations of public
  images, fake = what a client sent),

and sends each client, down the cut, the gradient of the critic's adversarial loss at what the client sent instead
of the task's gradient. The client's DP-SGD step clips and noises it exactly as it would the task's: DP's guarantee
does not depend on the server's honesty. A device pulled into the pilot's feature space is inverted by the decoder.
The head still trains on what it receives (as an honest server's would), so a client watching its accuracy sees
whatever accuracy the hijacked features give.

The three models are server state: the arrays ``server.pilot.*``, ``server.decoder.*`` and ``server.critic.*``
travel with the global model and are checkpointed and resumed with it. Before round 1 the server trains the pilot
and decoder as an autoencoder on its public images (``initial_models``, cached by recipe like ``split.pretrain``)
and then keeps them fixed; the critic is trained in each client's round (one copy per client, like the head in
SplitFed v1) and averaged at the round's end. Where FSHA trains all three together from scratch, this server trains
its autoencoder first: it holds the public images before training starts, a client's round has only ~19 steps,
and one autoencoder step costs about twice a client's whole step on the CPU (0.64 s against ~0.3 s at batch 32,
one thread, measured on a slow machine), so training it beside every step would cost the run about three times.
A fixed target also keeps the critic's task stationary.

``SERVERS`` maps ``--server`` to a behaviour: ``honest`` (the task's gradient, today's runs) or ``hijack``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from core import files
from core.config import RunConfig
from core.errors import UserError
from data.base import ImageSet, get_dataset, shared_files, surrogate_role
from split.decoders import UpDecoder
from split.model import DeviceNet
from split.pretrain import recipe_path

PREFIX = "server."  # keys of the server's own arrays in the global model
PARTS = ("pilot", "decoder", "critic")
FORMAT = 1  # bump when the warm start's recipe changes: cached pilots of another format are not reused
WARM_BATCH, WARM_LR = 64, 1e-3  # the pilot autoencoder's warm start (Adam)
CRITIC_LR, CRITIC_BETAS = 1e-3, (0.5, 0.9)  # WGAN-GP's Adam, restarted every client round
GP_WEIGHT = 10.0  # WGAN-GP's gradient-penalty weight
CRITIC_STEPS = 2  # critic updates per device step (fresh public rows, the same received activations)


class Critic(nn.Sequential):
    """WGAN critic on the cut's activations: float32 [B,C,H,W] -> scores float32 [B] (higher = more like the pilot's).

    A vector (cut 4): an MLP C -> 256 -> 256 -> 1. A map: two stride-2 3x3 convolutions (64, 128 channels), then a
    linear score. LeakyReLU 0.2, no normalisation (the gradient penalty is taken per sample)."""

    def __init__(self, in_shape: tuple[int, int, int]) -> None:
        channels, side, _ = in_shape
        act = nn.LeakyReLU(0.2)
        if side == 1:
            layers: list[nn.Module] = [nn.Flatten(), nn.Linear(channels, 256), act, nn.Linear(256, 256), act]
            width = 256
        else:
            layers = [nn.Conv2d(channels, 64, 3, stride=2, padding=1), act, nn.Conv2d(64, 128, 3, stride=2, padding=1)]
            layers += [act, nn.Flatten()]
            reduced = (side + 1) // 2
            width = 128 * ((reduced + 1) // 2) ** 2
        super().__init__(*layers, nn.Linear(width, 1), nn.Flatten(0))


class HijackModels(nn.Module):
    """The hijacking server's three models for a run's model settings (``RunConfig.model_options``)."""

    def __init__(self, image_side: int, norm_groups: int = 1, invert_input: bool = False, cut: int = 4) -> None:
        super().__init__()
        self.pilot = DeviceNet(image_side, 0.0, norm_groups, invert_input, cut)
        self.decoder = UpDecoder(in_shape=self.pilot.out_shape, dropout=0.0)
        self.critic = Critic(self.pilot.out_shape)

    @classmethod
    def for_run(cls, cfg: RunConfig, image_side: int) -> HijackModels:
        options = cfg.model_options()
        return cls(image_side, options["norm_groups"], options["invert_input"], options["cut"])

    def arrays(self, parts: tuple[str, ...] = PARTS) -> dict[str, torch.Tensor]:
        """The state of ``parts`` as global-model arrays, keys ``server.<part>.<name>``."""
        state = self.state_dict()
        return {f"{PREFIX}{k}": v.detach().cpu() for k, v in state.items() if k.split(".", 1)[0] in parts}

    def load_arrays(self, arrays: Mapping) -> HijackModels:
        """Inverse of ``arrays`` (strict): see ``server_state``."""
        self.load_state_dict(server_state(arrays), strict=True)
        return self

    @torch.no_grad()
    def reconstruct(self, activations: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        """The decoder on activations float32 [N,C,H,W]: images float32 [N,1,S,S] in [0,1] (eval, no grad)."""
        self.decoder.eval()
        side = self.pilot.image_side
        if len(activations) == 0:
            return np.empty((0, 1, side, side), np.float32)
        return torch.cat([self.decoder(chunk) for chunk in activations.float().split(batch_size)]).numpy()


def server_state(arrays: Mapping) -> dict[str, torch.Tensor]:
    """The ``server.*`` part of a global model's arrays as a ``HijackModels`` state dict (the prefix dropped; the
    device's and head's keys left out). Values: tensors, or anything with ``.numpy()`` (a Flower ``Array``), so
    only these keys are converted."""
    return {k[len(PREFIX) :]: torch.as_tensor(v.numpy()) for k, v in arrays.items() if k.startswith(PREFIX)}


def has_hijack(arrays: Mapping) -> bool:
    """Whether a global model's arrays hold a hijacking server's models."""
    return any(key.startswith(PREFIX) for key in arrays)


def public_images(cfg: RunConfig) -> ImageSet:
    """The hijacking server's public images: the run's ``--surrogate`` set (the attacker's own), never a client's."""
    return get_dataset(cfg.dataset, cfg.data_dir or None).load(surrogate_role(cfg.surrogate))


class HijackRound:
    """One client's local round of the hijacking server: ``gradient(received)`` for every step of that round.

    models: the round's copy of the server's models (its critic is trained in place; the pilot and decoder stay
    fixed); real: float32 [M,C,H,W], the pilot's activations of the public images (``pilot_features``); seed: the
    round's own draws (public rows, the penalty's mixes), from a generator of its own so that the client's sampling
    and noise draw what they would under an honest server.
    """

    def __init__(self, models: HijackModels, real: torch.Tensor, seed: int) -> None:
        self.models, self.real = models, real
        self.generator = torch.Generator().manual_seed(seed)
        self.critic_opt = torch.optim.Adam(models.critic.parameters(), lr=CRITIC_LR, betas=CRITIC_BETAS)
        self.last: dict[str, float] = {}

    def returned(self) -> dict[str, torch.Tensor]:
        """What goes back with the client's reply: the critic this round trained (the pilot and decoder did not
        change, and arrays no reply carries stay as they were, ``strategy.driver``)."""
        return self.models.arrays(("critic",))

    def _real_batch(self, n: int) -> torch.Tensor:
        return self.real[torch.randint(len(self.real), (n,), generator=self.generator)]

    def gradient(self, received: torch.Tensor) -> torch.Tensor:
        """The gradient the server sends down the cut for ``received`` float32 [B,C,H,W] (what a client sent): the
        gradient of -critic(received).mean(), after ``CRITIC_STEPS`` critic steps against the pilot's activations
        of as many public images."""
        received = received.detach()
        if len(received) == 0:
            return torch.zeros_like(received)
        critic = self.models.critic.train()
        for _ in range(CRITIC_STEPS):
            real = self._real_batch(len(received))
            wasserstein = critic(received).mean() - critic(real).mean()
            critic_loss = wasserstein + GP_WEIGHT * self._penalty(real, received)
            self.critic_opt.zero_grad(set_to_none=True)
            critic_loss.backward()
            self.critic_opt.step()
        z = received.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(-critic(z).mean(), z)
        self.last = {"wasserstein": -float(wasserstein.detach())}
        return grad

    def _penalty(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """WGAN-GP's penalty, (||grad critic|| - 1)^2 at random mixes of paired real and fake rows."""
        mix = torch.rand(len(real), *([1] * (real.dim() - 1)), generator=self.generator)
        between = (mix * real + (1 - mix) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.models.critic(between).sum(), between, create_graph=True)
        return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def warm_cache_path(cfg: RunConfig, md5s: tuple[str, ...], cache_dir: Path | None = None) -> Path:
    """Where the warm-started pilot and decoder for ``cfg`` and public images with hashes ``md5s`` are cached."""
    recipe = {"format": FORMAT, "epochs": cfg.hijack_epochs, "batch": WARM_BATCH, "lr": WARM_LR}
    return recipe_path("hijack/pilot", cfg, md5s, recipe, cache_dir)


def initial_models(
    cfg: RunConfig,
    console: Console | None = None,
    cache_dir: Path | None = None,
    after_epoch: Callable[[HijackModels, int], None] | None = None,
) -> HijackModels:
    """The hijacking server's models before round 1: the pilot and decoder warm-started as an autoencoder on the
    public images for ``cfg.hijack_epochs`` epochs (from the cache when there: like ``--pretrain public``, seeded by
    ``--seed``, so a study's training seeds share one pilot), a fresh critic seeded by the training seed.
    ``after_epoch(models, epoch)`` runs after each warm-start epoch when there is no cache (a benchmark's probe; it
    must leave the models' weights and the random state as they were)."""
    console = console or Console()
    dataset = get_dataset(cfg.dataset, cfg.data_dir or None)
    public = public_images(cfg)
    # The attack's sets split small2 by the files it shares with small1 (``attack.sets``); a client's image never.
    if shared_files(dataset.load("private"), public).any():
        raise UserError("--server hijack: the public images share files with the clients' private set")
    torch.manual_seed(cfg.training_seed)
    models = HijackModels.for_run(cfg, dataset.side)
    path = warm_cache_path(cfg, public.md5, cache_dir)
    if path.exists():
        console.print(f"hijack pilot: {path} (cached)")
    else:
        torch.manual_seed(cfg.seed)
        warm = HijackModels.for_run(cfg, dataset.side)
        _warm_start(warm, public, cfg, lambda line: console.print(line), after_epoch)
        keep = {k: v for k, v in warm.state_dict().items() if not k.startswith("critic.")}
        path.parent.mkdir(parents=True, exist_ok=True)
        files.write_with(path, lambda fh: torch.save(keep, fh))
        console.print(f"hijack pilot: {path}")
    models.load_state_dict(torch.load(path, weights_only=True), strict=False)  # the critic stays fresh
    return models


@torch.no_grad()
def pilot_features(models: HijackModels, public: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """The pilot's activations of public images uint8 [M,S,S] (255 = background): float32 [M,C,H,W], the critic's
    "real" side. The pilot is fixed for the whole run, so a worker computes this once."""
    models.pilot.eval()
    chunks = [
        models.pilot(torch.from_numpy(np.asarray(public[i : i + batch_size], dtype=np.float32) / 255.0)[:, None])
        for i in range(0, len(public), batch_size)
    ]
    return torch.cat(chunks)


def _warm_start(
    models: HijackModels,
    public: ImageSet,
    cfg: RunConfig,
    say: Callable[[str], None],
    after_epoch: Callable[[HijackModels, int], None] | None = None,
) -> None:
    """Adam on the pilot autoencoder (pixel MSE) over the public images."""
    optimizer = torch.optim.Adam([*models.pilot.parameters(), *models.decoder.parameters()], lr=WARM_LR)
    order_rng = np.random.default_rng(cfg.training_seed)
    models.train()
    for epoch in range(1, cfg.hijack_epochs + 1):
        order = order_rng.permutation(len(public))
        total = 0.0
        for start in range(0, len(order), WARM_BATCH):
            rows = np.sort(order[start : start + WARM_BATCH])
            x = torch.from_numpy(public.as_float(rows))
            loss = F.mse_loss(models.decoder(models.pilot(x)), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows)
        mse = total / len(order)
        say(f"hijack pilot warm start on {public.name}: epoch {epoch}/{cfg.hijack_epochs}, MSE {mse:.4f}")
        if after_epoch is not None:
            after_epoch(models, epoch)
            models.train()
