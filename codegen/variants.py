"""Variants of a rule: the update at given hyperparameter values, substituted exactly.

Two kinds, each a variant rule lowered and printed like any rule into its own modules; the
rule's own step functions run it whenever a call's hyperparameters have those values, so the
values stay runtime arguments (no recompilation):

- without absent states (``Rule.state(absent_when=...)``; ``<rule>_without_<state>[_...]``, one
  per set of absent states some setting gives: :mod:`codegen.absence`): torch's SGD keeps no
  momentum buffer at momentum=0, and one update for every setting would read and write it
  anyway (20 bytes per float32 element where 12 do);
- special cases (``Rule.special_case``; ``<rule>_<name>``): plain SGD at ``wd = 0`` and
  ``rescale_grad = 1`` is one multiply and one add per element where the whole update computes
  five operations whatever the values.

A variant has every equation with the values substituted (as exact numbers: ``0 * w``
vanishes, Piecewise branches decided by them fold away), its absent states and their equations
dropped, then whatever no output needs any more; its hyperparameters at those values take only
them. A spec whose variant would still read an absent state is refused, naming the spec file
and the state.
"""

from __future__ import annotations

import copy
import dataclasses

import sympy as sp

from codegen import absence
from codegen.ir import Origin
from codegen.spec import Equation, Hyper, Rule, SpecError


def _needed(rule: Rule, equations: list[Equation]) -> list[Equation]:
    """The equations the outputs (weight, states, host states) still depend on, in order."""
    defined = {eq.target: eq for eq in equations}
    roots = [*rule.outputs.values(), *rule.host_news]
    keep: set[sp.Symbol] = set()
    todo = [r for r in roots if r in defined]
    while todo:
        target = todo.pop()
        if target in keep:
            continue
        keep.add(target)
        todo += [s for s in defined[target].expr.free_symbols if s in defined]
    return [eq for eq in equations if eq.target in keep]


def absent_variants(rule: Rule) -> list[Rule]:
    """The rule without each set of absent states some setting gives (none when it declares
    none; :func:`codegen.absence.absent_sets`), each finished (checked)."""
    out = []
    for gone in absence.absent_sets(rule):
        values = absence.conditions(rule, gone)
        doc = (
            f"`{rule.name}` at {absence.describe(values)}, where {', '.join(gone)} does not exist: "
            f"its step functions run this module then (codegen/variants.py)."
        )
        name = rule.without_name(gone)
        out.append(_variant(rule, name, values, set(gone), "absent_when", doc))
    return out


def special_variants(rule: Rule) -> list[Rule]:
    """The rule's special cases (``Rule.special_case``), each finished (checked): the update
    with the values substituted exactly, without the states they make absent."""
    out = []
    for name, values in rule.special.items():
        gone = set(absence.special_absent(rule, name))
        doc = (
            f"`{rule.name}` at {absence.describe(values)} (special case {name!r}: "
            f"{rule.special_docs[name]}): the update with those values substituted exactly; "
            f"its step functions run this module then (codegen/variants.py)."
        )
        what = f"special_case {name!r}"
        out.append(_variant(rule, rule.special_name(name), values, gone, what, doc))
    return out


def variants(rule: Rule) -> list[Rule]:
    """Every variant of the rule: its special cases, then those without absent states."""
    return special_variants(rule) + absent_variants(rule)


def _variant(
    rule: Rule, name: str, values: dict[sp.Symbol, float], absent: set[str], what: str, doc: str
) -> Rule:
    """``rule`` with ``values`` substituted exactly and the ``absent`` states dropped; its
    hyperparameters at those values take only them (a direct call at others is refused)."""
    unsupported = [
        kind
        for kind, present in [
            ("per-step scalar inputs", rule.scalars),
            ("noise draws", rule.draws),
            ("group reductions", rule.group_reductions),
            ("row/column states", rule.vector_states),
        ]
        if present
    ]
    if unsupported:
        raise SpecError(
            f"{rule.source}: {what} is not supported yet in a rule with {', '.join(unsupported)}"
        )
    gone = {rule.states[n] for n in absent}
    variant = copy.copy(rule)
    variant.name = name
    variant.variant_of = rule.name
    variant.states = {k: s for k, s in rule.states.items() if k not in absent}
    variant._updated = {c: n for c, n in rule._updated.items() if c not in {s.symbol for s in gone}}
    variant.hypers = {
        n: _only(h, values[h.symbol]) if h.symbol in values else h for n, h in rule.hypers.items()
    }
    substitution = {
        s: sp.Integer(int(v)) if float(v).is_integer() else sp.Float(v) for s, v in values.items()
    }
    at = f"(at {absence.describe(values)})"
    equations = [
        Equation(eq.target, new, _origin(eq, new, at) if new != eq.expr else eq.origin)
        for eq in rule.equations
        if eq.target not in {s.new for s in gone}
        for new in [eq.expr.subs(substitution)]
    ]
    equations = _needed(variant, equations)
    for eq in equations:
        read = eq.expr.free_symbols & {x for s in gone for x in (s.symbol, s.new)}
        if read:
            state = ", ".join(sorted(str(x) for x in read))
            raise SpecError(
                f"{rule._at(eq)}: state(s) {', '.join(sorted(absent))} are absent at "
                f"{absence.describe(values)} ({what}), but the equation for {eq.target} still "
                f"reads {state} there"
            )
    kept = {eq.target for eq in equations}
    variant.equations = equations
    variant.lets = {s: n for s, n in rule.lets.items() if s in kept}
    variant.reductions = {r: e for r, e in rule.reductions.items() if r in kept}
    variant.reduction_kinds = {r: k for r, k in rule.reduction_kinds.items() if r in kept}
    variant.reduction_axes = {r: a for r, a in rule.reduction_axes.items() if r in kept}
    variant.group_reductions = [r for r in rule.group_reductions if r in kept]
    variant.doc = f"{doc}\n\n{rule.doc}"
    variant.absent = {}
    variant.special = {}
    variant.special_docs = {}
    variant.torch = None
    variant.drop_ins = []
    variant.test_cases = []
    variant.mxnet = None
    variant._finished = False
    return variant.finish()


def _origin(eq: Equation, expr: sp.Expr, at: str) -> Origin:
    """The equation's origin, its text the variant's equation (generated code cites it)."""
    return dataclasses.replace(eq.origin, text=f"{eq.target} = {expr} {at}")


def _only(hyper: Hyper, value: float) -> Hyper:
    """``hyper`` taking only ``value`` (a choice by its index, a flag as 0.0/1.0), its default."""
    none = hyper.none_value is not None and value == hyper.none_value  # (None stands for it)
    legal = hyper.legal._replace(lo=value, hi=value, lo_open=False, hi_open=False, allow_none=none)
    if legal.choices:
        default: float | str | bool = legal.choices[int(value)]
    elif legal.flag:
        default = bool(value)
    else:
        default = None if none else value
    return dataclasses.replace(hyper, legal=legal, default=default)
