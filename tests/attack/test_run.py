"""attack/: the registry, the evaluation sets, the run's settings, and run_attack on a tiny fabricated run.

``runs.make_run`` (tests/runs.py) writes a finished run as training leaves it, from an untrained device model, so
these tests need no training.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from runs import CLIENT_ROWS, OMNIGLOT, TRAIN_ROWS, every_20th, make_run, quiet
from skimage.metrics import structural_similarity

from attack.base import Attack, AttackerKnowledge, Payload
from attack.decoder_attack import SeedDecoderAttack
from attack.metrics import PerImage, mean_image_baseline, summarize
from attack.registry import ATTACKS, build_attack, parse_attacks, register_attack
from attack.run import load_run, print_summary, run_attack
from attack.sets import client_sets, small2_sets
from core.errors import UserError
from data.omniglot import SMALL1, SMALL2, ImageSet
from sim import main as sim_main
from split.cut import Cut
from split.model import build_split, device_activations

CHOICES = "seed, up, cond, rmle, whitebox, hijack"


class MeanImageAttack(Attack):
    """The know-nothing attack, written as a plug-in: every reconstruction is the surrogate set's mean image."""

    def fit(self, knowledge: AttackerKnowledge) -> None:
        self.image = mean_image_baseline(knowledge.surrogate, 1)[0]

    def reconstruct(self, intercepted: Payload, start: np.ndarray | None = None) -> np.ndarray:
        return np.broadcast_to(self.image, (len(intercepted.activations), *self.image.shape))


@pytest.fixture
def mean_attack() -> list[AttackerKnowledge]:
    """MeanImageAttack registered as "mean" for one test; yields the knowledge each fit was given."""
    given: list[AttackerKnowledge] = []

    class Recorded(MeanImageAttack):
        def fit(self, knowledge: AttackerKnowledge) -> None:
            given.append(knowledge)
            super().fit(knowledge)

    register_attack("mean")(Recorded)
    yield given
    del ATTACKS["mean"]


def test_registry_names_and_refusals() -> None:
    assert parse_attacks("seed,up") == ("seed", "up") == parse_attacks(["seed", "up"])
    assert parse_attacks(["up, seed"]) == ("up", "seed")  # order kept: the first fills the figures
    assert isinstance(build_attack("seed"), SeedDecoderAttack)
    with pytest.raises(UserError, match=rf"^--attacks must be one of {CHOICES}, got 'nope'$"):
        parse_attacks("seed,nope")
    with pytest.raises(UserError, match=rf"^--attacks must be one of {CHOICES}, got 'nope'$"):
        build_attack("nope")
    with pytest.raises(UserError, match="refine a decoder's output; add a decoder"):
        parse_attacks("whitebox")
    with pytest.raises(UserError, match=r"'up' given twice"):
        parse_attacks(["up", "seed,up"])
    with pytest.raises(UserError, match="no attack given"):
        parse_attacks(" , ")
    with pytest.raises(ValueError, match="'seed' is already registered"):
        register_attack("seed")(MeanImageAttack)
    with pytest.raises(TypeError, match="subclass of attack.base.Attack"):
        register_attack("other")(dict)
    # neither refused registration left a trace
    assert list(ATTACKS) == ["seed", "up", "cond", "rmle", "whitebox", "hijack"]


def test_cli_refuses_unknown_attack_in_one_line(tmp_path: Path, capsys) -> None:
    assert sim_main(["attack", str(tmp_path / "run"), "--attacks", "seed", "nope"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --attacks must be one of {CHOICES}, got 'nope'\n"
    assert not (tmp_path / "run").exists()


def test_load_run_reads_settings_from_config_json(tmp_path: Path, evaluation: ImageSet) -> None:
    run_dir = make_run(tmp_path / "run", evaluation, norm_groups=2, attack_epochs=7, attacks="up")
    run = load_run(run_dir)
    assert (run.config.norm_groups, run.config.attack_epochs, run.config.attacks, run.config.noise) == (2, 7, "up", 0.5)
    norms = [m for m in run.device.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == 2 for m in norms) and not run.device.training
    torch.manual_seed(0)
    expected, _ = build_split(**run.config.model_options(), **OMNIGLOT)
    for name, tensor in expected.state_dict().items():
        torch.testing.assert_close(run.device.state_dict()[name], tensor, rtol=0, atol=0)
    # The attacker's query goes through the run's cut (identity today): exactly the device's own output.
    assert type(run.cut) is Cut
    images = evaluation.as_float(np.arange(3))
    torch.testing.assert_close(run.query(images), device_activations(expected, images), rtol=0, atol=0)
    assert {k for k in run.intercepted if not k.startswith("train_device_")} == {
        f"{p}_{k}" for p in ("inference", "train") for k in ("activations", "partition", "index")
    }
    # Client 0's own last-round device model is the server's copy, not the global one.
    assert sorted(run.client_devices) == [0] and not run.client_devices[0].training
    torch.manual_seed(1)
    own, _ = build_split(**run.config.model_options(), **OMNIGLOT)
    torch.testing.assert_close(run.query(images, run.client_devices[0]), device_activations(own, images))
    # The head the server hosts labels activations.
    assert run.classify(run.query(images)).shape == (3,)


def test_load_run_refuses_a_run_of_another_version(tmp_path: Path, evaluation: ImageSet) -> None:
    run_dir = make_run(tmp_path / "old", evaluation, norm_groups=4)
    assert load_run(run_dir).config.norm_groups == 4
    payload = json.loads((run_dir / "config.json").read_text())
    del payload["format"]  # as every run before the run format was named
    (run_dir / "config.json").write_text(json.dumps(payload))
    with pytest.raises(UserError, match="written by another version of this tool .run format 1, this one reads 2"):
        load_run(run_dir)
    payload |= {"format": 2, "settings": {**payload["settings"], "retired_flag": 1}}
    (run_dir / "config.json").write_text(json.dumps(payload))
    with pytest.raises(UserError, match=r"settings this version does not know \(retired_flag\)"):
        load_run(run_dir)


def test_client_sets_from_intercepted(tmp_path: Path, evaluation: ImageSet) -> None:
    run = load_run(make_run(tmp_path / "run", evaluation))
    sets = client_sets(run.intercepted, evaluation, run.client_devices)
    assert [s.name for s in sets] == ["client_0_inference", "client_1_inference", "client_0_train"]
    assert [(s.kind, s.point, s.partition) for s in sets] == [
        ("client", "inference", 0),
        ("client", "inference", 1),
        ("client", "train", 0),
    ]
    assert [s.figure for s in sets] == ["reconstructions_client_0.png", "reconstructions_client_1.png", None]
    for s, rows in zip(sets, (CLIENT_ROWS[0], CLIENT_ROWS[1], TRAIN_ROWS[0]), strict=True):
        np.testing.assert_array_equal(s.originals_of(np.arange(len(rows))), evaluation.as_float(rows))
        np.testing.assert_array_equal(s.originals, evaluation.as_float(np.unique(rows)))  # distinct candidates
        np.testing.assert_array_equal(s.scored, np.arange(len(rows)))  # fewer rows than PER_CLIENT: all scored
        torch.testing.assert_close(s.activations, run.query(evaluation.as_float(rows)), rtol=0, atol=0)
        got = s.intercepted()
        assert s.files is None and got.partition == s.partition
        torch.testing.assert_close(got.activations, s.activations, rtol=0, atol=0)
    inference, train = sets[0].intercepted(), sets[2].intercepted()
    # Inference sends no labels and comes from the global model; training sends labels, from the client's model.
    assert inference.labels is None and inference.device is None
    np.testing.assert_array_equal(train.labels, evaluation.alphabet[TRAIN_ROWS[0]])
    assert train.device is run.client_devices[0]
    assert len(sets[2].originals) == 4 and list(sets[2].own) == [0, 1, 2, 2, 3]


def test_small2_sets_split_by_overlap(small1: ImageSet, small2: ImageSet) -> None:
    def query(images: np.ndarray) -> torch.Tensor:
        """A stand-in device: each image's ink (number of dark pixels) in all 32 channels."""
        return torch.from_numpy((images < 0.5).sum(axis=(1, 2, 3))).float()[:, None, None, None].expand(-1, 32, 1, 1)

    unseen, seen = small2_sets(query, small1, small2)
    assert (unseen.name, unseen.kind, unseen.point, unseen.partition) == ("unseen", "unseen", None, None)
    assert (seen.name, seen.kind, seen.figure, unseen.figure) == ("seen", "seen", None, "reconstructions_unseen.png")
    assert (len(unseen.originals), len(seen.originals)) == (2120, 1000)
    assert set(seen.files) <= set(small1.files) and not set(unseen.files) & set(small1.files)
    for s in (unseen, seen):
        index = [small2.files.index(f) for f in s.files[:5]]
        np.testing.assert_array_equal(s.originals[:5], small2.as_float(np.asarray(index)))
        assert s.activations.shape == (len(s.files), 32, 1, 1)
        torch.testing.assert_close(s.activations, query(s.originals), rtol=0, atol=0)
        assert s.intercepted().partition is None and s.intercepted().labels is None


def test_registered_attack_is_scored_like_the_baseline(
    tmp_path: Path, evaluation: ImageSet, mean_attack: list[AttackerKnowledge], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("data.omniglot.load_set", every_20th)
    # The run's own settings choose the attack and its epochs: nothing but the registration names "mean".
    run_dir = make_run(tmp_path / "run", evaluation, attacks="mean", attack_epochs=3)
    results = run_attack(run_dir, console=quiet())
    small1, small2 = every_20th(SMALL1), every_20th(SMALL2)

    names = ["unseen", "seen", "client_0_inference", "client_1_inference", "client_0_train"]
    assert list(results) == [*names, "clients_inference", "clients_train"]
    assert json.loads((run_dir / "leakage.json").read_text()) == results
    n = {"unseen": 106, "seen": 50, "client_0_inference": 6, "client_1_inference": 6, "client_0_train": 5}
    n |= {"clients_inference": 12, "clients_train": 5}
    for set_name, methods in results.items():
        assert list(methods) == ["mean", "baseline", "best"]
        assert methods["mean"] == methods["baseline"]  # the plug-in reproduces the baseline to the last bit
        assert methods["best"] == {**methods["mean"], "attack": "mean"}  # the only attack is the worst case
        assert methods["mean"]["n"] == n[set_name]
        for key in ("mse", "ssim", "reid_top1", "reid_top5"):
            assert methods["mean"][f"{key}_lo"] <= methods["mean"][key] <= methods["mean"][f"{key}_hi"]
    # Image 2 was sent twice in training: one candidate, not two.
    assert results["client_0_train"]["mean"]["pool"] == 4
    # The slice of small1's mean image against the unseen slice of small2.
    assert results["unseen"]["mean"]["mse"] == pytest.approx(0.0744294286, rel=1e-6)
    unseen = [i for i, f in enumerate(small2.files) if f not in set(small1.files)]
    mean_image = small1.as_float().mean(axis=0, dtype=np.float64)[0]
    reference = np.mean(
        [
            structural_similarity(
                image[0], mean_image, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1
            )
            for image in small2.as_float(np.asarray(unseen))
        ]
    )
    assert results["unseen"]["mean"]["ssim"] == pytest.approx(reference, abs=1e-5)
    assert results["clients_inference"]["mean"]["ssim"] == pytest.approx(
        np.mean([results[f"client_{k}_inference"]["mean"]["ssim"] for k in (0, 1)])
    )

    (knowledge,) = mean_attack  # fitted once, whatever the number of sets
    assert knowledge.surrogate.shape == (136, 1, 105, 105) and knowledge.epochs == 3 and knowledge.seed == 0
    assert knowledge.surrogate_activations.shape == (136, 32, 1, 1)
    torch.testing.assert_close(knowledge.query(knowledge.surrogate[:4]), knowledge.surrogate_activations[:4])

    with np.load(run_dir / "reconstructions_client_0_inference.npz") as z:
        assert sorted(z.files) == ["originals", "reconstructions_mean", "rows", "rows_mean"]
        np.testing.assert_array_equal(z["rows"], np.arange(6))
        np.testing.assert_array_equal(z["rows_mean"], np.arange(6))
        np.testing.assert_array_equal(z["originals"], np.round(evaluation.as_float(CLIENT_ROWS[0]) * 255))
    with np.load(run_dir / "reconstructions_unseen.npz") as z:
        assert len(z["files"]) == 100 and z["reconstructions_mean"].dtype == np.uint8
    for png in ("reconstructions_unseen.png", "reconstructions_client_0.png", "reconstructions_client_1.png"):
        assert (run_dir / png).read_bytes()[:4] == b"\x89PNG"
    meta = json.loads((run_dir / "attack.json").read_text())
    assert (meta["attacks"], meta["first_attack"], meta["epochs"]) == (["mean"], "mean", 3)
    assert set(meta["timings"]["mean"]) == {"train_seconds", "reconstruct_seconds"}
    assert meta["surrogate"].startswith("small1: images_background_small1")


@pytest.mark.parametrize("terminal", [False, True])
def test_summary_table_is_never_cut(terminal: bool) -> None:
    rng = np.random.default_rng(0)
    part = PerImage(rng.random(50) * 0.1, rng.random(50), rng.integers(0, 9, 50), 2120)
    numbers = summarize(part)
    results = {
        name: {"cond": numbers, "baseline": numbers, "best": {**numbers, "attack": "cond"}}
        for name in ("unseen", "clients_inference")
    }
    out = io.StringIO()
    console = Console(file=out, width=40, force_terminal=terminal, color_system=None)
    print_summary(console, results, ["cond"])
    text = out.getvalue()
    assert "…" not in text and "clients_inference" in text and "best: cond" in text
    interval = f"{numbers['reid_top1']:.3f} [{numbers['reid_top1_lo']:.3f}, {numbers['reid_top1_hi']:.3f}]"
    assert interval in text and max(map(len, text.splitlines())) > 40  # wider than the console: not wrapped


def test_a_refining_attack_starts_from_the_decoder_and_respects_its_caps(
    tmp_path: Path, evaluation: ImageSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("data.omniglot.load_set", every_20th)
    starts: list[np.ndarray] = []

    class Echo(Attack):
        """Refines by returning its start unchanged; 3 unseen images, no seen set, 2 per client."""

        refines = True
        caps = {"unseen": 3, "seen": 0, "client": 2}

        def fit(self, knowledge: AttackerKnowledge) -> None:
            pass

        def reconstruct(self, intercepted: Payload, start: np.ndarray | None = None) -> np.ndarray:
            starts.append(start)
            return start

    register_attack("echo")(Echo)
    register_attack("mean")(MeanImageAttack)
    try:
        # Listed first: it must still run after the attack it starts from.
        run_dir = make_run(tmp_path / "run", evaluation, attacks="echo,mean", attack_epochs=1, whitebox_images=5)
        results = run_attack(run_dir, console=quiet())
    finally:
        del ATTACKS["echo"], ATTACKS["mean"]
    assert "echo" not in results["seen"] and results["seen"]["best"]["attack"] == "mean"
    assert results["unseen"]["echo"]["n"] == 5  # --whitebox-images replaces the unseen cap
    assert results["client_0_inference"]["echo"]["n"] == 2 and results["clients_inference"]["echo"]["n"] == 4
    # It started from the mean image attack's output (the only decoder): one image, repeated.
    assert len(starts) == 4  # one call per set: unseen, two clients' inference sets, client 0's training set
    assert all(np.array_equal(s, np.broadcast_to(s[0], s.shape)) for s in starts)
