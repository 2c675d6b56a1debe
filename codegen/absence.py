"""Which states exist where: the settings of the hyperparameters that ``absent_when`` and
``special_case`` name, each state's presence there, and the check that a special case keeps
every state that exists wherever it runs.

A state's ``absent_when`` is its own condition (torch's RMSprop keeps ``momentum_buffer`` only
at momentum > 0 and ``grad_avg`` only when centered), so a step's absent states are any subset
of them: the generator emits one variant per subset some setting gives
(:mod:`codegen.variants`). The settings are finite: each hyperparameter named takes the values
named for it and one more that none names (a flag its two values, a choice its choices).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import sympy as sp

from codegen.errors import SpecError

if TYPE_CHECKING:
    from codegen.spec import Rule

# A setting: each named hyperparameter's value, None for one that no condition names.
Setting = dict[sp.Symbol, float | None]


def settings(rule: Rule) -> list[Setting]:
    """Every setting of the hyperparameters the rule's ``absent_when`` and special cases name,
    in a fixed order (the values as declared, the unnamed value last)."""
    named: dict[sp.Symbol, list[float]] = {}
    for values in [*rule.absent.values(), *rule.special.values()]:
        for h, v in values.items():
            if v not in named.setdefault(h, []):
                named[h].append(v)
    by_symbol = {h.symbol: h for h in rule.hypers.values()}
    domains: list[list[float | None]] = []
    for h, values in named.items():
        legal = by_symbol[h].legal
        if legal.flag:
            domains.append([0.0, 1.0])
        elif legal.choices:
            domains.append([float(i) for i in range(len(legal.choices))])
        else:
            domains.append([*values, None])
    return [dict(zip(named, combo, strict=True)) for combo in itertools.product(*domains)]


def holds(values: dict[sp.Symbol, float], setting: Setting) -> bool:
    """Whether ``setting`` has every value of ``values`` (a condition or a special case)."""
    return all(setting.get(h) == v for h, v in values.items())


def absent_at(rule: Rule, setting: Setting) -> tuple[str, ...]:
    """The states absent at ``setting``, in declaration order."""
    return tuple(name for name, when in rule.absent.items() if holds(when, setting))


def absent_sets(rule: Rule) -> list[tuple[str, ...]]:
    """Each set of absent states some setting gives (not the empty one), in the order the
    settings first give them: the variants without them."""
    out: list[tuple[str, ...]] = []
    for setting in settings(rule):
        gone = absent_at(rule, setting)
        if gone and gone not in out:
            out.append(gone)
    return out


def conditions(rule: Rule, gone: tuple[str, ...]) -> dict[sp.Symbol, float]:
    """The values that make the states ``gone`` absent: their conditions together."""
    out: dict[sp.Symbol, float] = {}
    for name in gone:
        out.update(rule.absent[name])
    return out


def special_absent(rule: Rule, name: str) -> list[str]:
    """The states special case ``name`` has not: those whose ``absent_when`` its values
    include (the others exist wherever it runs: :func:`check_special_cases`)."""
    return [state for state, when in rule.absent.items() if holds(when, rule.special[name])]


def describe(values: Setting) -> str:
    """``h = v, ...`` (a value no condition names: ``h = another value``)."""
    return ", ".join(
        f"{h} = {'another value' if v is None else f'{v:g}'}" for h, v in values.items()
    )


def check_special_cases(rule: Rule, where: str) -> None:
    """Refuse a special case that runs (the first that matches) at a setting where a state it
    keeps is absent: it would read a state that is not there. (One never drops a state that
    exists where it runs: it drops those whose condition its own values include.)"""
    for setting in settings(rule):
        first = next((n for n, v in rule.special.items() if holds(v, setting)), None)
        if first is None:
            continue
        kept = [s for s in absent_at(rule, setting) if s not in special_absent(rule, first)]
        if kept:
            which = ", ".join(repr(s) for s in kept)
            raise SpecError(
                f"{where}: special case {first!r} runs at {describe(setting)}, where state(s) "
                f"{which} are absent (absent_when), but keeps them; a special case must include "
                "an absent_when's values or exclude them, or follow special cases that run "
                "where it would not"
            )
