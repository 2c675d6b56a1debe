"""Variants of a rule: the update with some states absent (``Rule.state(absent_when=...)``).

torch's SGD keeps no momentum buffer at momentum=0; one update for every setting would read and
write it anyway (20 bytes per float32 element where 12 do). A state declared with
``absent_when={momentum: 0}`` gets a variant rule: every equation with the hyperparameter values
substituted (Piecewise branches decided by them fold away), the state and its equation dropped,
then whatever no output needs any more. The variant is lowered and printed like any rule, into
its own modules (``generated/<target>/<rule>_without_<state>.py``); the rule's own step
functions run it whenever a call's hyperparameters have those values, so the values stay
runtime arguments. A spec whose variant would still read the state is refused, naming the spec
file and the state.
"""

from __future__ import annotations

import copy

import sympy as sp

from codegen.spec import Equation, Rule, SpecError


def variant_name(rule: Rule) -> str:
    """``<rule>_without_<state>[_<state>...]``: the module (and kernel) name of the variant."""
    return rule.variant_name


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


def absent_variant(rule: Rule) -> Rule | None:
    """The rule without its absent states (None when it declares none), finished (checked)."""
    if not rule.absent:
        return None
    unsupported = [
        what
        for what, present in [
            ("per-element inputs", rule.inputs),
            ("per-step scalar inputs", rule.scalars),
            ("noise draws", rule.draws),
            ("group reductions", rule.group_reductions),
            ("row/column states", rule.vector_states),
        ]
        if present
    ]
    if unsupported:
        raise SpecError(
            f"{rule.source}: absent_when ({', '.join(rule.absent)}) is not supported yet in a "
            f"rule with {', '.join(unsupported)}"
        )
    values = next(iter(rule.absent.values()))
    gone = {rule.states[name] for name in rule.absent}
    variant = copy.copy(rule)
    variant.name = variant_name(rule)
    variant.variant_of = rule.name
    variant.states = {k: s for k, s in rule.states.items() if k not in rule.absent}
    variant._updated = {c: n for c, n in rule._updated.items() if c not in {s.symbol for s in gone}}
    substitution = {
        s: sp.Integer(int(v)) if float(v).is_integer() else sp.Float(v) for s, v in values.items()
    }
    equations = [
        Equation(eq.target, eq.expr.subs(substitution), eq.origin)
        for eq in rule.equations
        if eq.target not in {s.new for s in gone}
    ]
    equations = _needed(variant, equations)
    setting = ", ".join(f"{k} = {v:g}" for k, v in values.items())
    for eq in equations:
        read = eq.expr.free_symbols & {x for s in gone for x in (s.symbol, s.new)}
        if read:
            state = ", ".join(sorted(str(x) for x in read))
            raise SpecError(
                f"{rule._at(eq)}: state(s) {', '.join(rule.absent)} are absent at {setting} "
                f"(absent_when), but the equation for {eq.target} still reads {state} there"
            )
    kept = {eq.target for eq in equations}
    variant.equations = equations
    variant.lets = {s: n for s, n in rule.lets.items() if s in kept}
    variant.reductions = {r: e for r, e in rule.reductions.items() if r in kept}
    variant.reduction_kinds = {r: k for r, k in rule.reduction_kinds.items() if r in kept}
    variant.reduction_axes = {r: a for r, a in rule.reduction_axes.items() if r in kept}
    variant.group_reductions = [r for r in rule.group_reductions if r in kept]
    variant.doc = (
        f"`{rule.name}` at {setting}, where {', '.join(rule.absent)} does not exist: "
        f"its step functions run this module then (codegen/variants.py).\n\n{rule.doc}"
    )
    variant.absent = {}
    variant.torch = None
    variant.drop_ins = []
    variant.test_cases = []
    variant.mxnet = None
    variant._finished = False
    return variant.finish()
