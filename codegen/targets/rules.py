"""The rule's metadata module, ``generated/rules/<rule>.py``: the one generated place that holds
its hyperparameters (defaults, legal values, what None means), states, reductions, draws, host
states, torch equivalent and host code. The NumPy, Triton and torch layers all read it.
"""

from __future__ import annotations

import math
import re

import sympy as sp

from codegen import absence, names
from codegen.ir import Assign
from codegen.lowered import Lowered
from codegen.mxnet import UNCLIPPED_ABOVE
from codegen.ops import Guarded, f32
from codegen.spec import Rule, State
from codegen.targets import Target
from codegen.targets.host import (
    HostCode,
    NotColumnwise,
    RowsCode,
    legal_code,
    literal,
    spec_terms,
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


def host_program(lowered: Lowered, wanted: list[sp.Symbol]) -> list[Assign]:
    """The host assignments (lets by name, positional scalars) that compute ``wanted``, in order."""
    news = lowered.rule.host_news
    assigns = [a for a in lowered.block.role("host") if a.target not in news]
    by_target = {a.target: a for a in assigns}
    needed: set[sp.Symbol] = set()
    pending = list(wanted)
    while pending:
        s = pending.pop()
        if s in by_target and s not in needed:
            needed.add(s)
            pending += list(by_target[s].expr.free_symbols)
    return [a for a in assigns if a.target in needed]


def legend(lowered: Lowered, scalars: list[sp.Symbol]) -> list[tuple[str, str]]:
    """What each host scalar a kernel takes is, in the spec's terms: (name, description)."""
    rule = lowered.rule
    lets = {a.target for a in lowered.host_lets}
    out = []
    for s in scalars:
        if s.name in rule.hypers:
            what = "hyperparameter"
        elif s in rule.reductions:
            what = f"reduction ({rule.reduction_kinds[s]} over the tensor)"
        elif s in rule.sizes:
            what = "the tensor's element count"
        elif s.name in rule.host_states:
            what = "host state"
        elif s.name in rule.scalars:
            what = "scalar input (given at each step)"
        elif s in lets:
            what = f"let, computed by host_scalars{let_inputs(lowered, s)}"
        else:
            what = f"= {spec_terms(lowered.host[s])}"
            origin = next((a.origin for a in lowered.block.role("host") if a.target == s), ())
            if origin:  # the equation it is computed for
                what += f", in {origin[0].file}:{origin[0].line}"
            used = lowered.host[s].free_symbols & {a.target for a in lowered.block.role("host")}
            if used:  # it uses a let (LARS's local_lr): name what that comes from too
                what += f",{let_inputs(lowered, s)}"
        out.append((s.name, what))
    return out


def let_inputs(lowered: Lowered, let: sp.Symbol) -> str:
    """What a host ``let`` is computed from, in the spec's terms (hyperparameters, the step
    count, host states, scalar inputs, reductions), through the lets it uses, as the legend's
    tail (" from a, b"): a refusal naming the let (``check_scalars``) then names what to
    change."""
    rule = lowered.rule
    free: set[sp.Symbol] = set()
    for a in host_program(lowered, [let]):
        free |= a.expr.free_symbols
    named = {*rule.hypers, *rule.host_states, *rule.scalars}
    inputs = sorted(
        x.name for x in free if x.name in named or x in rule.reductions or x.name == "t"
    )
    return f" from {', '.join(inputs)}" if inputs else ""


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


def reduction_scalars_name(phase: int) -> str:
    """The host function of reduction phase ``phase``: ``reduction_scalars``, then ``_2``, ..."""
    return names.phased("reduction_scalars", phase)


def reduce_scalars_name(phase: int) -> str:
    return names.phased("REDUCE_SCALARS", phase)


def phases(lowered: Lowered, code: HostCode) -> list[dict[str, object]]:
    """Each reduction phase: its reductions, host function, arguments and code."""
    rule = lowered.rule
    host_names = [*rule.hypers, *rule.host_states, *rule.scalars, *map(str, rule.sizes)]
    out, earlier = [], []
    for k in range(1, len(lowered.reduce_phases) + 1):
        wanted = lowered.phase_host(k)
        found = [r for r in lowered.phase_reductions(k) if r in lowered.rule.scalar_reductions]
        reductions = [str(r) for r in found]
        out.append(
            {
                "phase": k,
                "reductions": reductions,
                "kinds": [lowered.rule.reduction_kinds[r] for r in found],
                "function": reduction_scalars_name(k),
                "table": reduce_scalars_name(k),
                "args": host_names + earlier,
                "code": _lines(lowered, host_program(lowered, wanted), code),
                "names": [s.name for s in wanted],
                "legend": legend(lowered, wanted),
                "op_counts": lowered.op_counts(lowered.reduce_phases[k - 1]),
            }
        )
        earlier = earlier + reductions
    return out


def _lines(lowered: Lowered, assigns: list[Assign], code: HostCode) -> list[str]:
    """A host program as code. A let only Piecewise branches use (:func:`guarded_lets`) is
    computed in a ``try``: where it cannot be (``1/n`` at ``n == 0``) it holds
    ``unavailable(...)``, which raises only if the branch taken uses it."""
    guarded = guarded_lets(lowered, assigns)
    lines: list[str] = []
    said: list[str] = []
    for a in assigns:
        comments = [f"# {o.comment()}" for o in a.origin]
        if comments != said:  # a run of scalars from one equation: its line once
            lines += comments
            said = comments
        if a.target not in guarded:
            lines.append(f"{a.target} = {code(a.expr)}")
            continue
        code.printer.runtime.add("unavailable")
        lines += [
            "try:",
            f"    {a.target} = {code(a.expr)}",
            "except (ArithmeticError, ValueError) as _error:  # used only under a guard",
            f"    {a.target} = unavailable({a.target.name!r}, _error)",
        ]
    return lines


def guarded_lets(lowered: Lowered, assigns: list[Assign]) -> set[sp.Symbol]:
    """The lets of ``assigns`` used only in Piecewise branches' values (host code's ``a if c
    else b`` evaluates only the branch taken) or only by such lets: never in a condition, a
    host state's update, or as a scalar a function returns."""
    lets = {a.target for a in lowered.host_lets}
    returned = {a.target for a in assigns if a.target not in lets}
    updates = {x for e in lowered.host_updates.values() for x in e.free_symbols}
    guarded: set[sp.Symbol] = set()
    for a in reversed(assigns):  # a let's users come after it
        if a.target not in lets or a.target in returned or a.target in updates:
            continue
        users = [b for b in assigns if a.target in b.expr.free_symbols]
        if users and all(b.target in guarded or _only_in_branches(a.target, b.expr) for b in users):
            guarded.add(a.target)
    return guarded


def _only_in_branches(symbol: sp.Symbol, expr: sp.Basic, guarded: bool = False) -> bool:
    """True when every occurrence of ``symbol`` in ``expr`` lies in a Piecewise branch's value
    or a ``Guarded`` value (the lowering's scalar of one branch, computed only where its
    condition holds)."""
    if expr == symbol:
        return guarded
    if isinstance(expr, Guarded):
        value, cond = expr.args
        return _only_in_branches(symbol, value, True) and _only_in_branches(symbol, cond, guarded)
    if isinstance(expr, sp.Piecewise):
        return all(
            _only_in_branches(symbol, value, True) and _only_in_branches(symbol, cond, guarded)
            for value, cond in expr.args
        )
    return all(_only_in_branches(symbol, a, guarded) for a in expr.args)


def columnwise(lowered: Lowered) -> bool:
    """True when the rule's multi-tensor steps can compute every tensor's host scalars at once
    (``host_scalars_rows``): per-tensor sums in one reduction phase that takes the step count
    and hyperparameters alone, no group sums, host states, sizes, row or column states."""
    rule = lowered.rule
    plain = not (rule.group_reductions or rule.host_states or rule.sizes or rule.vector_values)
    return bool(rule.scalar_reductions and plain and len(lowered.reduce_phases) == 1)


def rows_lines(lowered: Lowered) -> tuple[list[str], RowsCode] | None:
    """``host_scalars_rows``'s body, the host program of ``host_scalars`` over columns of sums
    (:class:`codegen.targets.host.RowsPrinter`), and its printer; None where the rule is not
    :func:`columnwise` or a sum enters an operation NumPy would not do to the same bits."""
    if not columnwise(lowered):
        return None
    varying = set(lowered.rule.scalar_reductions)
    code = RowsCode(varying, f"len({lowered.rule.scalar_reductions[0]})")
    lines = []
    try:
        for a in host_program(lowered, lowered.update_scalars):
            lines += [f"# {o.comment()}" for o in a.origin]
            lines.append(f"{a.target} = {code(a.expr)}")
            if code.printer.varies(a.expr):
                varying.add(a.target)
    except NotColumnwise:
        return None
    return lines, code


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
