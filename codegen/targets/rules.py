"""The rule's metadata module, ``generated/rules/<rule>.py``: the one generated place that holds
its hyperparameters (defaults, legal values, what None means), states, reductions, draws, host
states, torch equivalent and host code. The NumPy, Triton and torch layers all read it.
"""

from __future__ import annotations

import math
import re

import sympy as sp

from codegen import absence
from codegen.lowered import Lowered
from codegen.mxnet import UNCLIPPED_ABOVE
from codegen.ops import f32
from codegen.spec import Rule, State
from codegen.targets import Target
from codegen.targets.host import HostCode, legal_code, literal
from codegen.targets.host_program import (
    _lines,
    host_program,
    legend,
    phases,
    reduce_scalars_name,
    reduction_scalars_name,
    rows_lines,
)


def folds_gradient_scale(lowered: Lowered) -> bool:
    """True when the gradient enters only as ``rescale_grad * grad``.

    Then an AMP loss scale s can be undone by passing ``rescale_grad / s`` to the kernel instead
    of a pass over the gradients: substituting grad -> grad / s, rescale_grad -> rescale_grad * s
    must leave every output and every reduction unchanged (SymPy cancels s in products). An
    ``f32`` rounding counts as its argument here: the folded factor reaches the kernel as a
    float32 scalar either way (MXNet's SGD kernels' ``f32(lr) * f32(rescale_grad)``).
    """
    rule = lowered.rule
    rescale = rule.hypers.get("rescale_grad")
    if rescale is None:
        return False
    s = sp.Symbol("_loss_scale", positive=True)
    swap = {rule.grad: rule.grad / s, rescale.symbol: rescale.symbol * s}
    exprs = [*lowered.inlined.values(), *lowered.raw_summands.values()]
    return all(_cancels(e, swap) for e in exprs)


def _cancels(expr: sp.Expr, swap: dict[sp.Symbol, sp.Expr]) -> bool:
    """``expr`` unchanged by ``swap``, expanded; where it chooses on the host between clipping
    and its absence (``codegen.mxnet``'s ``clipping_off``: its SGD-family scaling),
    in each case: clipping on, and off with the clip by that bound the identity."""
    expr = expr.replace(lambda x: isinstance(x, f32), lambda x: x.args[0]).doit()
    off = {
        r for r in expr.atoms(sp.StrictGreaterThan) if r.rhs == UNCLIPPED_ABOVE and r.lhs.is_Symbol
    }
    cases = [{r: value for r in off} for value in (sp.true, sp.false)] if off else [{}]
    for case in cases:
        value = expr.xreplace(case)
        for r, taken in case.items():
            if taken is sp.true:
                value = _unclipped(value, r.lhs)
        if sp.expand(value.xreplace(swap) - value) != 0:
            return False
    return True


def _unclipped(expr: sp.Expr, c: sp.Expr) -> sp.Expr:
    """``expr`` with each clip by ``c``, ``Min(c, Max(-c, x))``, as ``x`` (``c`` infinite)."""

    def is_clip(x: sp.Basic) -> bool:
        return (
            isinstance(x, sp.Min)
            and c in x.args
            and any(isinstance(a, sp.Max) and -c in a.args for a in x.args)
        )

    def inside(x: sp.Min) -> sp.Expr:
        clamp = next(a for a in x.args if isinstance(a, sp.Max) and -c in a.args)
        return sp.Max(*(a for a in clamp.args if a != -c))

    return expr.replace(is_clip, inside)


def initial_code(rule: Rule, state: State, code: HostCode) -> str:
    """A state buffer's initial value for ``initial_values``: None (a copy of the weight), or a
    number as Python code (hyperparameters are arguments). Checked by the spec model
    (``Rule.state``): the weight itself, or an expression of constants and hyperparameters."""
    if state.init == rule.weight:
        return "None"
    return literal(state.init) if state.init.is_Number else code(state.init)


def torch_equivalent_code(rule: Rule, code: HostCode) -> str:
    """The rule's TorchEquivalent(...) as code; factors become functions of the hyperparameters."""
    if rule.torch is None:
        return "None"
    states = []
    for ours, (theirs, factor) in rule.torch.states.items():
        args = ", ".join([*sorted(str(s) for s in factor.free_symbols), "**_"])
        states.append(f"{ours!r}: ({theirs!r}, lambda {args}: {code(factor)})")
    eq = rule.torch
    return (
        f"TorchEquivalent({eq.class_name!r}, {eq.hyper!r}, {{{', '.join(states)}}}, {eq.fixed!r})"
    )


def exported(lowered: Lowered) -> list[str]:
    """What the NumPy and Triton modules import from the rule's metadata module and re-export."""
    out = [
        "DRAWS", "FOLDS_GRAD_SCALE", "GROUP_REDUCTIONS", "HOST_STATES", "HYPERPARAMS",
        "INIT_HYPERPARAMS", "INPUTS", "LEGAL", "NONE_MEANS", "REDUCTIONS", "RULE", "SCALARS",
        "SPEC", "STATES", "STEP_SCALARS", "host_scalars",
    ]  # fmt: skip
    for k in range(1, len(lowered.reduce_phases) + 1):
        out += [reduce_scalars_name(k), reduction_scalars_name(k)]
    if lowered.summands:
        out += ["REDUCE_KINDS"]
    rule = lowered.rule
    if rule.reductions and rule.vector_values:
        out += ["REDUCE_AXES"]
    if rule.sizes or rule.vector_values:  # the matrix modules always compute the sizes
        out += ["SIZES"]
    if rule.vector_states:
        out += ["STATE_AXES"]
    if rule.absent or rule.special:  # the absent-state test; beside SPECIAL, what it drops
        out += ["ABSENT"]
    if rule.special:
        out += ["SPECIAL"]
    if rows_lines(lowered) is not None:
        out += ["host_scalars_rows"]
    return sorted(out, key=lambda n: natural(n.replace("_", " ")))  # "STATE_AXES" < "STATES"


def natural(name: str) -> list[str | int]:
    """Sort key of ruff's isort and ``__all__`` orders: digit runs as numbers (``_2`` < ``_10``,
    which a rule with ten or more sweeps has)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def variant_context(rule: Rule) -> dict[str, object]:
    """What a module's step functions need to run the rule's variants (:mod:`codegen.variants`),
    in the order they are tried: each one's module, the alias it is imported as, the test of
    the resolved hyperparameters ``hp`` that selects it, a comment, and the tuple of the states
    it has not, as code (``run_variant`` passes it the state without them)."""
    out = []
    for name, values in rule.special.items():
        module = rule.special_name(name)
        setting = absence.describe(values)
        test = f"matches(SPECIAL[{module!r}], hp)"
        absent = absence.special_absent(rule, name)
        out.append(
            {
                "module": module,
                "alias": f"_{name}",
                "test": test,
                "doc": setting,
                "absent_code": repr(tuple(absent)),
            }
        )
    for gone in absence.absent_sets(rule):
        setting = absence.describe(absence.conditions(rule, gone))
        out.append(
            {
                "module": rule.without_name(gone),
                "alias": f"_without_{'_'.join(gone)}",
                "test": f"absent_states(ABSENT, hp) == {gone!r}",
                "doc": f"{setting}: no {', '.join(gone)}",
                "absent_code": repr(gone),
            }
        )
    tests = ["absent_states"] * bool(rule.absent) + ["matches"] * bool(rule.special)
    return {"variants": out, "variant_tests": tests}


def reduced_axis(rule: Rule, reduction: sp.Symbol) -> str:
    """The axis a reduction removes, by name: ``r`` (rows) or ``c`` (columns)."""
    present = [a for a in "brc" if a in rule.domain(rule.reductions[reduction])]
    return present[rule.reduction_axes[reduction]]


def value_code(value: object, code: HostCode) -> str:
    """A Python literal of hyperparameter values (dicts of them): an infinite one as
    ``math.inf`` (its repr, ``inf``, is no Python name), every other by its repr."""
    if isinstance(value, dict):
        items = (f"{k!r}: {value_code(v, code)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, float) and math.isinf(value):
        return code(sp.oo if value > 0 else -sp.oo)
    return repr(value)


def sparse_context(rule: Rule) -> dict[str, str]:
    """``Rule.sparse``'s declaration as the rules module's literals."""
    return {
        "mode": repr(rule.sparse_mode),
        "lazy_update": repr(rule.lazy_update),
        "refused": repr(tuple(rule.sparse_refused)),
        "why": repr(rule.sparse_why),
    }


def context(lowered: Lowered) -> dict[str, object]:
    rule = lowered.rule
    code = HostCode()
    update = lowered.update_scalars
    host_names = [*rule.hypers, *rule.host_states, *rule.scalars, *map(str, rule.sizes)]
    context = {
        "rule": rule,
        "doc": rule.doc,
        "hypers": [
            {
                "name": h.name,
                "default": value_code(h.default, code),
                "legal": legal_code(h.legal, code),
                "none": None if h.none_value is None else code(sp.sympify(h.none_value)),
                "doc": h.doc,
            }
            for h in rule.hypers.values()
        ],
        "states": list(rule.states.values()),
        "inputs": list(rule.inputs.values()),
        "scalar_inputs": list(rule.scalars.values()),
        "init_hypers": rule.init_hypers,
        "initial": {s.name: initial_code(rule, s, code) for s in rule.states.values()},
        "reductions": [str(r) for r in lowered.summands if r in rule.reductions],
        "kinds": {str(r): k for r, k in rule.reduction_kinds.items()},
        "axes": repr(
            {
                str(r): None if a is None else reduced_axis(rule, r)
                for r, a in rule.reduction_axes.items()
            }
        ),
        "matrix": bool(rule.vector_values),
        "state_axes": {s.name: s.axis for s in rule.vector_states},
        "sizes": [str(s) for s in rule.sizes],
        "group": [str(r) for r in rule.group_reductions],
        "phases": phases(lowered, code),
        "draws": [str(d) for d in lowered.draws],
        "host_states": list(rule.host_states.values()),
        "folds_scale": folds_gradient_scale(lowered),
        "torch": torch_equivalent_code(rule, code),
        "sparse": sparse_context(rule),
        "absent": value_code(
            {name: {str(h): v for h, v in when.items()} for name, when in rule.absent.items()},
            code,
        ),
        "without": value_code(
            {gone: rule.without_name(gone) for gone in absence.absent_sets(rule)}, code
        ),
        "special": value_code(
            {
                rule.special_name(name): {str(h): v for h, v in values.items()}
                for name, values in rule.special.items()
            },
            code,
        ),
        "host_args": host_names + [str(r) for r in lowered.summands if r in rule.scalar_reductions],
        "update_code": _lines(lowered, host_program(lowered, update), code),
        "update_names": [s.name for s in update],
        "host_updates": [
            (hs.name, code(lowered.host_updates[hs.new])) for hs in rule.host_states.values()
        ],
        "op_counts": lowered.op_counts(),
        "reduce_op_counts": lowered.op_counts(lowered.reduce_ops),
        "scalar_legend": legend(lowered, update),
    }
    rows = rows_lines(lowered)
    context |= {"rows_code": None, "uses_numpy": False}
    if rows is not None:
        lines, rows_code = rows
        context |= {
            "rows_code": lines,
            "rows_first": str(rule.scalar_reductions[0]),
            "columns_imports": sorted(["scalar_columns", *rows_code.columns]),
            "uses_numpy": True,  # the columns are NumPy arrays
        }
    # after everything is printed
    uses_math = code.uses_math or (rows is not None and rows[1].uses_math)
    runtime = sorted({*code.runtime, *(rows[1].runtime if rows else [])})
    return context | {"uses_math": uses_math, "runtime_imports": runtime}


TARGET = Target(
    "rules",
    "rules",
    "rules_module.py.j2",
    context,
    "metadata and host code, read by every other layer",
)
