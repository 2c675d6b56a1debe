"""The rules module's host programs: the host assignments that compute a kernel's scalars, in
order (:func:`host_program`), what each scalar is (:func:`legend`), each reduction phase's host
function (:func:`phases`) and the ``host_scalars_rows`` form over columns of sums
(:func:`rows_lines`). Split from :mod:`codegen.targets.rules`, which prints them.
"""

from __future__ import annotations

import sympy as sp

from codegen import names
from codegen.ir import Assign
from codegen.lowered import Lowered
from codegen.ops import Guarded
from codegen.targets.host import HostCode, NotColumnwise, RowsCode, spec_terms


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
