"""core/registry.py: one idiom for every registry. A name is registered once; an unknown name, in any registry and
through any of its lookups, is one UserError line naming every choice."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from attack.registry import ATTACKS, build_attack, parse_attacks, register_attack
from clients.grad_samplers import SAMPLERS, install, register_sampler
from core.config import RunConfig, settings
from core.errors import UserError
from core.privacy import ACCOUNTANTS, make_accountant, register_accountant
from core.registry import lookup, register
from data.base import DATASETS, SURROGATES, get_dataset, register_dataset, surrogate_role
from data.omniglot import SETS, load_set
from simulation.registries import check_registered, choices
from split.cut import DEFENSES, build_cut, register_defense
from split.decoders import DECODERS, build_decoder, register_decoder
from split.server import SERVERS, build_server, register_server
from strategy.registry import REGISTRY, build_strategy, entry, register_strategy


def test_register_adds_once_and_lookup_names_the_choices() -> None:
    registry: dict[str, int] = {"a": 1}
    assert register(registry, "b")(2) == 2 and registry == {"a": 1, "b": 2}
    with pytest.raises(ValueError, match="^'a' is already registered"):
        register(registry, "a")(3)
    assert registry == {"a": 1, "b": 2}  # the refused entry left no trace
    assert lookup(registry, "b", "--thing") == 2
    with pytest.raises(UserError, match=r"^--thing must be one of a, b, got 'c'$"):
        lookup(registry, "c", "--thing")


UNKNOWN: dict[str, tuple[Callable[[str], object], dict, str]] = {
    "strategy": (entry, REGISTRY, "--strategy"),
    "strategy (built)": (lambda name: build_strategy(RunConfig(strategy=name)), REGISTRY, "--strategy"),
    "accountant": (make_accountant, ACCOUNTANTS, "--accountant"),
    "grad sampler": (lambda name: install(None, name), SAMPLERS, "--grad-sampler"),
    "dataset": (get_dataset, DATASETS, "--dataset"),
    "surrogate": (surrogate_role, SURROGATES, "--surrogate"),
    "omniglot set": (load_set, SETS, "Omniglot set"),
    "server": (build_server, SERVERS, "--server"),
    "defense": (build_cut, DEFENSES, "defense"),
    "decoder": (build_decoder, DECODERS, "decoder"),
    "attack": (build_attack, ATTACKS, "--attacks"),
    "attack list": (lambda name: parse_attacks(f"seed,{name}"), ATTACKS, "--attacks"),
}


@pytest.mark.parametrize("kind", UNKNOWN)
def test_an_unknown_name_is_one_user_error_line_naming_the_choices(kind: str) -> None:
    find, registry, what = UNKNOWN[kind]
    with pytest.raises(UserError) as raised:
        find("nope")
    assert str(raised.value) == f"{what} must be one of {', '.join(registry)}, got 'nope'"


REGISTERS = [
    (register_attack, ATTACKS),
    (register_sampler, SAMPLERS),
    (register_accountant, ACCOUNTANTS),
    (register_dataset, DATASETS),
    (register_defense, DEFENSES),
    (register_decoder, DECODERS),
    (register_server, SERVERS),
    (register_strategy, REGISTRY),
]


@pytest.mark.parametrize(("add", "registry"), REGISTERS, ids=[add.__name__ for add, _ in REGISTERS])
def test_every_register_refuses_a_name_twice(add: Callable, registry: dict) -> None:
    first = next(iter(registry))
    before = dict(registry)
    with pytest.raises(ValueError, match=f"'{first}' is already registered"):
        add(first)(registry[first])
    assert registry == before


def test_every_registry_backed_setting_refuses_an_unknown_name_by_its_flag() -> None:
    backed = [f for f in settings() if f.metadata["registry"] and f.metadata["registry"] != "attack"]
    kinds = {f.metadata["registry"] for f in backed}
    assert kinds == {"strategy", "accountant", "grad_sampler", "dataset", "surrogate", "server"}
    for f in backed:
        flag = f"--{f.name.replace('_', '-')}"
        allowed = ", ".join(choices(f.metadata["registry"]))
        with pytest.raises(UserError, match=f"^{flag} must be one of {allowed}, got 'nope'$"):
            check_registered(RunConfig(**{f.name: "nope"}))
