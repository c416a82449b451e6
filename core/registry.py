"""The one idiom of every registry (strategies, accountants, datasets, attacks, defenses, ...), as Opacus's
``register_grad_sampler`` / ``create_accountant``: a plain dict from name to entry in the room that owns it, a
``register_*`` decorator that adds to it, and a ``build_*`` / ``get_*`` that reads a name from it with ``lookup``.

Insertion order is the order of the choices in ``sim.py --help`` and in the error for an unknown name.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import TypeVar

from core.errors import UserError

T = TypeVar("T")


def check_choice(name: object, choices: Collection[str], what: str) -> None:
    """UserError (one line naming the choices) when ``name`` is not one of ``choices``; ``what``: the flag
    (``--strategy``) or the noun (``defense``) the user knows the name by."""
    if name not in choices:
        raise UserError(f"{what} must be one of {', '.join(choices)}, got {name!r}")


def lookup(registry: Mapping[str, T], name: str, what: str) -> T:
    """``registry[name]``; UserError (one line naming the choices) when ``name`` is not registered."""
    check_choice(name, tuple(registry), what)
    return registry[name]


def register(registry: dict[str, T], name: str) -> Callable[[T], T]:
    """Decorator adding its argument (a class, a builder, an entry) to ``registry`` as ``name`` and returning it
    unchanged. A name can be registered once: ValueError, and nothing added, for a second one (a programming error,
    not a user's)."""

    def add(entry: T) -> T:
        if name in registry:
            held = registry[name]
            raise ValueError(f"{name!r} is already registered ({getattr(held, '__name__', repr(held))})")
        registry[name] = entry
        return entry

    return add
