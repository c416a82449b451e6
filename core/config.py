"""The run configuration: one dataclass shared by `sim.py` flags, Flower's run config and the ClientApp.

Field ``local_epochs`` is flag ``--local-epochs`` and Flower run-config key ``local-epochs``: the names only differ
in ``_`` vs ``-``. Flower config values cannot be None, so "off" is 0 (``target_epsilon``, ``limit_per_client``)
or "" (``data_dir``, ``out``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from core.errors import UserError
from core.registry import check_choice

PARTITIONS = ("shards", "alphabet", "dirichlet", "iid")
OPTIMIZERS = ("adam", "sgd")
TRAIN_PARAMS = ("all", "norm")  # --train-params: every device parameter, or the GroupNorm affine ones only
DEVICES = ("auto", "cpu", "cuda")
HEAD_MODES = ("copies", "refit")
INPUT_NORMS = ("none", "invert")
SKEW_LOSSES = ("none", "restricted", "logit-adjust")
PRETRAINING = ("none", "public")
CUT_DEPTHS = (1, 2, 3, 4)  # the device is the first N conv blocks of split.model's four

# Flag groups of ``sim.py --help``, in this order.
FEDERATION, DP_TRAINING, RUN, ATTACK = "federation", "local DP-SGD training", "run", "attack (the curious server)"
SPLIT = "the cut (where the model is split, and defenses on what crosses it)"
AUDIT = "privacy audit (canaries; audit.json)"


def setting(
    default,
    help: str,
    group: str,
    choices: tuple[str, ...] | None = None,
    registry: str | None = None,
    **cli,
) -> Any:
    """A RunConfig field with what the command line and ``[tool.flwr.app.config]`` need to know about it.

    ``help`` and ``group`` become the flag's help text and section in ``sim.py --help``; ``choices`` are checked by
    ``validate`` and listed in the help. ``registry`` names the registry whose keys are the choices (a strategy,
    an accountant, ...; ``attack``: a comma-separated list of its names): they live in the room that owns the
    registry, are listed in the help and checked against it (``simulation.registries``), never repeated here.
    ``cli`` holds extra argparse keywords (``nargs``).
    """
    meta = {"help": help, "group": group, "choices": choices, "registry": registry, "cli": cli}
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    """Every setting of a run. Defaults follow the original DP run (docs/experiment.md) where it had one.

    Each field is declared once, here: ``sim.py`` builds its flags from these fields (``flag_specs``) and a test
    checks that ``[tool.flwr.app.config]`` in pyproject.toml has the same keys and defaults.
    """

    # --- federation
    clients: int = setting(20, "number of simulated clients", FEDERATION)
    rounds: int = setting(10, "federated rounds", FEDERATION)
    fraction_train: float = setting(1.0, "fraction of clients per round", FEDERATION)
    partition: str = setting(
        "shards",
        "how alphabets are shared out (shards = sorted-by-alphabet blocks; alphabet = whole alphabets, needs "
        "--clients <= 20)",
        FEDERATION,
        PARTITIONS,
    )
    alphabets_per_client: int = setting(2, "shards per client", FEDERATION)
    alpha: float = setting(0.5, "Dirichlet concentration (--partition dirichlet)", FEDERATION)
    limit_per_client: int = setting(0, "cap images per client; 0 = all", FEDERATION)
    val_fraction: float = setting(0.1, "share of each shard for validation", FEDERATION)
    head_mode: str = setting(
        "refit",
        "the server's head: copies = one copy per client per round, averaged (SplitFed v1); refit = the same, then "
        "the server refits the averaged head on fresh activations of a sample of every client's images "
        "(docs/design.md, head modes)",
        FEDERATION,
        HEAD_MODES,
    )
    head_epochs: int = setting(5, "--head-mode refit: epochs over the pooled activations", FEDERATION)
    head_lr: float = setting(1e-3, "--head-mode refit: Adam learning rate of the refit", FEDERATION)
    head_fit_fraction: float = setting(
        0.25, "--head-mode refit: share of each client's training images sent for the refit", FEDERATION
    )
    skew_loss: str = setting(
        "restricted",
        "client loss under label skew: restricted = softmax over the client's own classes (FedRS, alpha 0); "
        "logit-adjust = balanced softmax with the client's class frequencies",
        DP_TRAINING,
        SKEW_LOSSES,
    )
    strategy: str = setting("fedavg", "server aggregation (Flower's strategies)", FEDERATION, registry="strategy")
    server_lr: float = setting(
        0.0,
        "server learning rate: fedavgm's server_learning_rate, fedadam / fedyogi's eta; 0 = Flower's default",
        FEDERATION,
    )
    server_momentum: float = setting(0.9, "fedavgm's server momentum", FEDERATION)
    proximal_mu: float = setting(
        0.0,
        "fedprox's proximal term weight mu (the client adds mu/2 ||w - w_global||^2); 0 = FedProx's default 0.01 "
        "under --strategy fedprox, none otherwise",
        FEDERATION,
    )
    # --- local DP-SGD training
    noise: float = setting(
        0.5,
        "noise multiplier sigma; 0 = no DP (epsilon = inf). Several values: one training + attack each, same seed "
        "and shards, then a leakage-per-epsilon report",
        DP_TRAINING,
        nargs="+",
    )
    target_epsilon: float = setting(0.0, "pick sigma for this epsilon; 0=off", DP_TRAINING)
    max_epsilon: float = setting(
        0.0,
        "budget cap: a client whose next round would pass this epsilon does not train; the run stops when no client "
        "can train; 0 = no cap",
        DP_TRAINING,
    )
    clip: float = setting(1.0, "per-sample gradient L2 clipping bound", DP_TRAINING)
    delta: float = setting(1e-5, "delta of the (epsilon, delta) guarantee", DP_TRAINING)
    accountant: str = setting("rdp", "privacy accountant", DP_TRAINING, registry="accountant")
    local_epochs: int = setting(1, "local epochs per round", DP_TRAINING)
    batch_size: int = setting(32, "expected (Poisson) batch size: the logical batch of one DP-SGD step", DP_TRAINING)
    physical_batch: int = setting(
        0,
        "largest batch computed at once (Opacus's BatchMemoryManager): a logical batch above it is split, its clipped "
        "per-sample gradients summed, then one noisy step; the server's head copy steps per physical batch; 0 = "
        "no split",
        DP_TRAINING,
    )
    lr: float = setting(0.002, "learning rate (0.005 in the 2020 DP runs; levers: docs/results.md)", DP_TRAINING)
    optimizer: str = setting("adam", "optimizer", DP_TRAINING, OPTIMIZERS)
    dropout: float = setting(0.0, "dropout in device and head (0 as in the DP runs)", DP_TRAINING)
    norm_groups: int = setting(1, "GroupNorm groups (1 learns best)", DP_TRAINING)
    input_norm: str = setting(
        "invert",
        "what the device does to pixels first: none, or invert (strokes 1, background 0; ends the chance-level "
        "plateau of the first epochs)",
        DP_TRAINING,
        INPUT_NORMS,
    )
    pretrain: str = setting(
        "none",
        "the device's starting weights: none (random) or public (trained centrally, without DP, on the dataset's "
        "public images first; cached; the server, and so the attacker, knows them)",
        DP_TRAINING,
        PRETRAINING,
    )
    pretrain_epochs: int = setting(3, "--pretrain public: epochs over the public images", DP_TRAINING)
    freeze_blocks: int = setting(
        0,
        "the first N device blocks keep their starting weights (not trained, no per-sample gradients); N = --cut "
        "freezes the whole device (a control)",
        DP_TRAINING,
    )
    train_params: str = setting(
        "all",
        "which device parameters DP-SGD trains: all, or norm = only the GroupNorm scales and shifts (256 numbers at "
        "cut 4; Tramer & Boneh 2021: fewer parameters, less noise in total; meant with --pretrain public)",
        DP_TRAINING,
        TRAIN_PARAMS,
    )
    aug_mult: int = setting(
        0,
        "augmentation multiplicity K: each image of a step is seen as K random small affine views (no flips) whose "
        "gradients are averaged before clipping (fused sampler under DP); K x the compute per step; 0 = off",
        DP_TRAINING,
    )
    ema: float = setting(
        0.0,
        "decay of the server's moving average of the global device over rounds (0 = off): the average is what is "
        "evaluated, attacked and saved; post-processing, so epsilon is unchanged",
        DP_TRAINING,
    )
    grad_sampler: str = setting(
        "fused",
        "per-sample gradients: fused (own backward, no Opacus hooks), fast (Opacus hooks, own conv) or opacus",
        DP_TRAINING,
        registry="grad_sampler",
    )
    # --- the cut
    cut: int = setting(
        4,
        "the device is the first N conv blocks, the server runs the rest and the dense head: activations 32x33x33 "
        "after block 1, 32x13x13 after 2, 32x4x4 after 3, 32x1x1 after 4 (the original)",
        SPLIT,
    )
    cut_clip: float = setting(
        0.0,
        "defense at the cut: clip each image's activations to this L2 norm before sending (0 = no defense); "
        "needs --cut-noise",
        SPLIT,
    )
    cut_noise: float = setting(
        0.0,
        "defense at the cut: Gaussian noise of std cut_noise x cut_clip added to every sent activation, in "
        "training, at inference and in the attacker's own queries (0 = none)",
        SPLIT,
    )
    nopeek: float = setting(
        0.0,
        "defense at the cut: NoPeek, the device adds this weight x the distance correlation between its images and "
        "their activations to its loss (0 = off; needs --noise 0: the term couples a batch's samples)",
        SPLIT,
    )
    detect: float = setting(
        0.0,
        "the client's hijack detector: the share of steps it re-sends with wrong labels, alarming when the gradient "
        "that comes back ignores them (clients/detector.py; 0 = off; never applied to the device)",
        SPLIT,
    )
    detect_threshold: float = setting(
        0.8,
        "--detect: a client round alarms when its probes' mean cosine (real vs wrong labels) is at least this",
        SPLIT,
    )
    # --- run
    dataset: str = setting(
        "omniglot", "the images (data/ registry): clients' private set, attacker's sets", RUN, registry="dataset"
    )
    seed: int = setting(0, "seed for the shards and splits, and for training unless --train-seed is given", RUN)
    train_seed: int = setting(
        -1,
        "seed for training alone: weights, sampling, noise, head fits, interception and attack (-1 = --seed); the "
        "study's --seeds runs each cell again with other training seeds on the same shards",
        RUN,
    )
    data_dir: str = setting("", "Omniglot zips/folders; else $OMNIGLOT_ROOT, ./data/omniglot", RUN)
    out: str = setting("", "run directory; default runs/<timestamp>-c<clients>-s<noise>", RUN)
    device: str = setting("cpu", "torch device", RUN, DEVICES)
    cpus_per_client: float = setting(1.0, "CPU cores per client", RUN)
    gpus_per_client: float = setting(0.0, "GPU share per client", RUN)
    # --- attack (the curious server)
    attack_epochs: int = setting(
        100, "most decoder training epochs over the surrogate (each stops early on a held-out slice)", ATTACK
    )
    attacks: str = setting(
        "seed,cond,whitebox",
        "attacks to run, comma-separated, from attack.registry (figures show the first beside the best)",
        ATTACK,
        registry="attack",
    )
    whitebox_images: int = setting(
        64,
        "unseen small2 images each white-box attack reconstructs (a seeded sample; each client set: 4): about "
        "0.2 s an image on 2 cores",
        ATTACK,
    )
    surrogate: str = setting(
        "small1",
        "the attacker's public images: small1 (2,720) or public (images_background minus small2's alphabets and "
        "files, 16,160)",
        ATTACK,
        registry="surrogate",
    )
    server: str = setting(
        "honest",
        "what the server sends down the cut in training: honest = the task's gradient; hijack = the Feature-Space "
        "Hijacking Attack's adversarial gradient, from a pilot encoder, decoder and critic trained on --surrogate",
        ATTACK,
        registry="server",
    )
    hijack_epochs: int = setting(
        10, "--server hijack: epochs of the pilot autoencoder's warm start on the public images (cached)", ATTACK
    )
    # --- privacy audit
    audit: int = setting(
        0,
        "M gradient-space canaries split over the clients, each in its client's data with probability 1/2; the "
        "server scores them from the returned device weights and writes the one-run lower bound on epsilon to "
        "audit.json (0 = off)",
        AUDIT,
    )

    def validate(self) -> RunConfig:
        """Raise UserError with one line for the first invalid setting; return self."""
        _positive_int(self, "clients", "rounds", "local_epochs", "batch_size", "alphabets_per_client", "attack_epochs")
        _positive_int(self, "whitebox_images")
        _positive_int(self, "head_epochs", "pretrain_epochs", "hijack_epochs")
        _finite(self, "head_lr", "head_fit_fraction")
        if not 0 < self.head_fit_fraction <= 1:
            raise UserError(f"--head-fit-fraction must be in (0, 1], got {self.head_fit_fraction}")
        if self.head_lr <= 0:
            raise UserError(f"--head-lr must be > 0, got {self.head_lr}")
        _finite(self, "noise", "lr", "clip", "delta", "alpha", "target_epsilon", "fraction_train", "val_fraction")
        _finite(self, "dropout", "cpus_per_client", "gpus_per_client", "max_epsilon")
        _finite(self, "server_lr", "server_momentum", "proximal_mu", "ema")
        if isinstance(self.aug_mult, bool) or not isinstance(self.aug_mult, int) or self.aug_mult < 0:
            raise UserError(f"--aug-mult must be an integer >= 0 (0 = off), got {self.aug_mult}")
        if self.aug_mult > 1 and self.noise > 0 and self.grad_sampler != "fused":
            raise UserError(
                "--aug-mult needs --grad-sampler fused under DP (it averages the views' per-sample gradients)"
            )
        if not 0 <= self.ema < 1:
            raise UserError(f"--ema must be in [0, 1) (0 = off), got {self.ema}")
        if self.server_lr < 0 or self.proximal_mu < 0 or not 0 <= self.server_momentum < 1:
            raise UserError("--server-lr and --proximal-mu must be >= 0 and --server-momentum in [0, 1)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"--seed must be an integer >= 0, got {self.seed}")
        if isinstance(self.train_seed, bool) or not isinstance(self.train_seed, int) or self.train_seed < -1:
            raise UserError(f"--train-seed must be an integer >= 0, or -1 for --seed, got {self.train_seed}")
        if self.noise < 0:
            raise UserError(f"--noise must be >= 0 (0 = no DP), got {self.noise}")
        for name in ("lr", "clip", "alpha", "cpus_per_client"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{_flag(name)} must be > 0, got {getattr(self, name)}")
        if not 0 < self.delta < 1:
            raise UserError(f"--delta must be in (0, 1), got {self.delta}")
        if self.target_epsilon < 0:
            raise UserError(f"--target-epsilon must be > 0, got {self.target_epsilon}")
        if self.max_epsilon < 0:
            raise UserError(f"--max-epsilon must be > 0 (0 = no cap), got {self.max_epsilon}")
        if self.max_epsilon and self.noise == 0 and not self.target_epsilon:
            raise UserError(
                "--max-epsilon needs --noise > 0: without noise epsilon is infinite, so no client could train"
            )
        if not 0 < self.fraction_train <= 1:
            raise UserError(f"--fraction-train must be in (0, 1], got {self.fraction_train}")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.physical_batch, bool) or not isinstance(self.physical_batch, int) or self.physical_batch < 0:
            raise UserError(f"--physical-batch must be an integer >= 0 (0 = no split), got {self.physical_batch}")
        if self.limit_per_client < 0 or self.limit_per_client == 1:
            raise UserError(f"--limit-per-client must be 0 (no cap) or >= 2, got {self.limit_per_client}")
        if self.gpus_per_client < 0:
            raise UserError(f"--gpus-per-client must be >= 0, got {self.gpus_per_client}")
        if self.cut_clip < 0 or self.cut_noise < 0:
            raise UserError(f"--cut-clip and --cut-noise must be >= 0, got {self.cut_clip} and {self.cut_noise}")
        if self.cut not in CUT_DEPTHS:
            raise UserError(f"--cut must be one of {', '.join(map(str, CUT_DEPTHS))}, got {self.cut}")
        if isinstance(self.freeze_blocks, bool) or not isinstance(self.freeze_blocks, int):
            raise UserError(f"--freeze-blocks must be an integer, got {self.freeze_blocks}")
        if not 0 <= self.freeze_blocks <= self.cut:
            raise UserError(f"--freeze-blocks must be in 0..--cut ({self.cut}), got {self.freeze_blocks}")
        _finite(self, "cut_clip", "cut_noise", "nopeek", "detect", "detect_threshold")
        if not 0 <= self.detect <= 1 or not -1 <= self.detect_threshold <= 1:
            raise UserError("--detect must be in [0, 1] (0 = off) and --detect-threshold in [-1, 1] (a cosine)")
        if self.nopeek < 0:
            raise UserError(f"--nopeek must be >= 0 (0 = off), got {self.nopeek}")
        if self.nopeek > 0 and self.noise > 0:
            raise UserError(
                "--nopeek needs --noise 0: its distance correlation ties every sample's gradient to the whole batch, "
                "so DP-SGD's per-sample clipping would no longer bound one image's influence"
            )
        if self.cut_noise > 0 and self.cut_clip == 0:
            raise UserError("--cut-noise needs --cut-clip > 0 (the noise is scaled to the clipping norm)")
        if isinstance(self.audit, bool) or not isinstance(self.audit, int) or self.audit < 0:
            raise UserError(f"--audit must be an integer >= 0 (0 = off), got {self.audit}")
        if self.audit and (self.audit < 2 or self.freeze_blocks == self.cut or self.physical_batch):
            raise UserError(
                "--audit needs at least 2 canaries, a trained device (--freeze-blocks < --cut) and no "
                "--physical-batch (a canary is drawn once per logical step)"
            )
        if self.norm_groups < 1 or 32 % self.norm_groups:
            raise UserError(f"--norm-groups must divide 32 (1, 2, 4, 8, 16, 32), got {self.norm_groups}")
        for f in settings():
            if f.metadata["choices"]:
                _choice(self, f.name, f.metadata["choices"])
        return self

    def model_options(self) -> dict:
        """Keywords of ``split.model.build_split`` for this run's model."""
        invert = self.input_norm == "invert"
        return {"dropout": self.dropout, "norm_groups": self.norm_groups, "invert_input": invert, "cut": self.cut}

    @property
    def training_seed(self) -> int:
        """The seed of everything training draws (``--train-seed``, else ``--seed``); the shards use ``seed``."""
        return self.seed if self.train_seed < 0 else self.train_seed

    def settings_dict(self) -> dict:
        """Every setting by field name: what ``config.json`` stores."""
        return {f.name: getattr(self, f.name) for f in settings()}

    def to_flwr(self) -> dict[str, int | float | str | bool]:
        """Flower run-config / ConfigRecord form: kebab-case keys, scalar values."""
        return {flag_name(f.name): getattr(self, f.name) for f in settings()}

    @classmethod
    def from_flwr(cls, values: dict) -> RunConfig:
        """Inverse of ``to_flwr``: missing keys take the defaults; keys that are not settings (the protocol's own,
        such as ``server-round``) are left out. Flower's name for the round count, ``num-server-rounds``, is
        accepted as ``rounds``.
        """
        names = {f.name: f for f in settings()}
        kwargs: dict = {}
        for key, value in values.items():
            name = "rounds" if key == "num-server-rounds" else key.replace("-", "_")
            if name in names:
                kwargs[name] = type(names[name].default)(value)
        return cls(**kwargs)


def settings() -> tuple[dataclasses.Field, ...]:
    """The RunConfig fields, in declaration order: each one a setting."""
    return dataclasses.fields(RunConfig)


def flag_name(name: str) -> str:
    """Field ``local_epochs`` -> flag / run-config key ``local-epochs``."""
    return name.replace("_", "-")


_flag = flag_name


def _positive_int(cfg: RunConfig, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"--{_flag(name)} must be a positive integer, got {value}")


def _finite(cfg: RunConfig, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not math.isfinite(value):
            raise UserError(f"--{_flag(name)} must be a finite number, got {value}")


def _choice(cfg: RunConfig, name: str, allowed: tuple[str, ...]) -> None:
    check_choice(getattr(cfg, name), allowed, f"--{_flag(name)}")
