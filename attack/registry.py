"""Attacks by name: what ``--attacks`` (and RunConfig ``attacks``) may list.

A new attack is one new module with an ``attack.base.Attack`` subclass, plus one entry in ``ATTACKS`` below (or
``@register_attack("name")`` on the class, for attacks that live outside this package, e.g. in a test).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from attack.base import Attack
from attack.decoder_attack import ConditionedDecoderAttack, SeedDecoderAttack, UpDecoderAttack
from attack.hijack import HijackAttack
from attack.whitebox import LatentWhiteBoxAttack, RMLEAttack
from core.errors import UserError
from core.registry import lookup, register

# Insertion order is the order of the choices in --help.
ATTACKS: dict[str, type[Attack]] = {
    "seed": SeedDecoderAttack,
    "up": UpDecoderAttack,
    "cond": ConditionedDecoderAttack,
    "rmle": RMLEAttack,
    "whitebox": LatentWhiteBoxAttack,
    "hijack": HijackAttack,
}


def register_attack(name: str) -> Callable[[type[Attack]], type[Attack]]:
    """Class decorator: make ``cls`` available as attack ``name``. A name can be registered once."""

    def add(cls: type[Attack]) -> type[Attack]:
        if not (isinstance(cls, type) and issubclass(cls, Attack)):
            raise TypeError(f"attack {name!r} must be a subclass of attack.base.Attack, got {cls!r}")
        return register(ATTACKS, name)(cls)

    return add


def attack_names() -> tuple[str, ...]:
    """Every registered attack name, in registration order."""
    return tuple(ATTACKS)


def parse_attacks(value: str | Sequence[str]) -> tuple[str, ...]:
    """Attack names from ``"seed,up"`` or ``["seed", "up"]`` (items may hold commas too); UserError when a name is
    unknown (the first, naming the choices) or given twice, or none is given, or every one refines another's output.
    Order is kept."""
    items = [value] if isinstance(value, str) else list(value)
    names = tuple(name.strip() for item in items for name in item.split(",") if name.strip())
    for name in names:
        lookup(ATTACKS, name, "--attacks")
    if not names:
        raise UserError(f"no attack given; choose from {', '.join(ATTACKS)}")
    if all(ATTACKS[name].refines for name in names):
        raise UserError(f"attack(s) {', '.join(names)} refine a decoder's output; add a decoder (e.g. seed)")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UserError(f"attack(s) {', '.join(map(repr, twice))} given twice")
    return names


def build_attack(name: str) -> Attack:
    """A fresh, unfitted attack by registered name; UserError naming the choices when the name is unknown."""
    return lookup(ATTACKS, name, "--attacks")()
