"""Which update a step runs: a rule's special cases (``SPECIAL``) and the variants without its
absent states (``ABSENT``, ``WITHOUT``), chosen from the resolved hyperparameters, and a
variant's step run on the states without the absent entries (codegen/variants.py)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Mapping, MutableMapping, Sequence
from typing import Any


def absent_states(
    absent: Mapping[str, Mapping[str, float]], hp: Mapping[str, float]
) -> tuple[str, ...]:
    """The rule's ``ABSENT`` states that the resolved hyperparameters ``hp`` make absent (each
    by its spec's ``state(absent_when=...)``), in order: where there are some, the step runs the
    rule's variant modules without them (its ``WITHOUT``)."""
    return tuple(k for k, when in absent.items() if all(hp[n] == v for n, v in when.items()))


def matches(when: Mapping[str, float], hp: Mapping[str, float]) -> bool:
    """True when the resolved hyperparameters ``hp`` have the values ``when`` (a rule's
    ``SPECIAL`` case: its spec's ``special_case``): the step then runs that case's modules."""
    return all(hp[n] == v for n, v in when.items())


def running_variant(meta: Any, hp: Mapping[str, float]) -> str | None:
    """The variant a rules module ``meta``'s step functions run at the resolved ``hp``: its
    first matching special case, else the variant without its absent states, else None."""
    for name, when in meta.SPECIAL.items():
        if matches(when, hp):
            return name
    gone = absent_states(meta.ABSENT, hp)
    return meta.WITHOUT[gone] if gone else None


def running_module(module: Any, meta: Any, hp: Mapping[str, float]) -> Any:
    """The module of ``module``'s package (a rule's rules, numba or Triton module) whose update
    runs at the resolved ``hp``: ``running_variant``'s, else ``module`` itself."""
    variant = running_variant(meta, hp)
    if variant is None:
        return module
    package = module.__name__.rsplit(".", 1)[0]
    return importlib.import_module(f"{package}.{variant}")


def run_variant(
    function: Callable[..., Any],
    weights: Any,
    grads: Any,
    states: Any,
    t: Any,
    absent: Collection[str],
    **kwargs: Any,
) -> Any:
    """``function`` (a variant's step function) on ``states`` without the ``absent`` entries: a
    state that has them (momentum switched off mid-run) keeps them, untouched; what the variant
    sets (host states) is written back. States that are not dicts go as they are (refused)."""
    single = isinstance(states, Mapping)
    given = [states] if single else list(states) if isinstance(states, Sequence) else []
    if not any(isinstance(s, Mapping) and any(k in s for k in absent) for s in given):
        return function(weights, grads, states, t, **kwargs)
    made: dict[int, dict[str, Any]] = {}  # one view per state dict: a dict given twice stays
    views = []  # one object, so the variant's step refuses it as it refuses the dict itself
    for s in given:
        if isinstance(s, Mapping):
            if id(s) not in made:
                made[id(s)] = {k: v for k, v in s.items() if k not in absent}
            views.append(made[id(s)])
        else:
            views.append(s)
    result = function(weights, grads, views[0] if single else views, t, **kwargs)
    for s, view in zip(given, views, strict=True):
        if isinstance(s, MutableMapping):
            s.update(view)
    return result
