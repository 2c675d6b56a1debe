"""The Triton target's kernels for rules with row or column values (Adafactor, CAME, SM3, ...):
sweeps over a domain of the weight's (batch, rows, cols) view, their reductions along an axis,
and the context the Triton template renders them from (``matrix_context``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import sympy as sp

from codegen import names
from codegen.lowered import Lowered, Op
from codegen.spec import Rule
from codegen.targets.host_program import reduce_scalars_name, reduction_scalars_name

if TYPE_CHECKING:
    from codegen.targets.triton import TritonOpPrinter

# A block's partial of each reduction kind (masked lanes hold the kind's identity; max and min
# keep a NaN, as NumPy's do). Sums are exact fixed-point sums rounded to float32 (fixed_sum):
# tl.sum's order follows the register layout, which differs between a multi-tensor kernel's
# vectorised and scalar variants, and with it the last bits of a float32 sum.
PARTIAL: dict[str, str] = {
    "sum": "fixed_sum(tl.where(mask, {}, 0.0))",
    "max": 'tl.reduce(tl.where(mask, {}, -float("inf")), 0, nan_max)',
    "min": 'tl.reduce(tl.where(mask, {}, float("inf")), 0, nan_min)',
}


# A rule with row or column vectors sees the weight as (batch, rows, cols). A sweep over a
# domain (elements "brc", rows "br", columns "bc", matrices "b") runs over flat indices `offs`
# of that domain; a value of a smaller domain is gathered at its own index, computed from offs.
INDEX: dict[tuple[str, str], str] = {
    ("brc", "br"): "offs // n_cols",
    ("brc", "bc"): "offs // (n_rows * n_cols) * n_cols + offs % n_cols",
    ("brc", "b"): "offs // (n_rows * n_cols)",
    ("br", "b"): "offs // n_rows",
    ("bc", "b"): "offs // n_cols",
}
# The length of the axis a LAST kernel reduces (the domain's last), per domain.
_LAST = {"brc": "n_cols", "br": "n_rows", "bc": "n_cols"}
IDENTITY = {"sum": "0.0", "max": '-float("inf")', "min": 'float("inf")'}
ACCUMULATE = {
    "sum": "{acc} + tl.where(mask, {x}, 0.0)",
    "max": 'nan_max({acc}, tl.where(mask, {x}, -float("inf")))',
    "min": 'nan_min({acc}, tl.where(mask, {x}, float("inf")))',
}
FINISH = {
    "sum": "tl.sum({acc}, axis=0)",
    "max": "tl.reduce({acc}, 0, nan_max)",
    "min": "tl.reduce({acc}, 0, nan_min)",
}


def _dom(domain: frozenset[str]) -> str:
    return "".join(a for a in "brc" if a in domain)


def _loads(lowered: Lowered, ops_: list[Op], domain: str) -> list[str]:
    """A kernel's loads: element buffers at offs, vectors at their index."""
    rule = lowered.rule
    used = {a for op in ops_ for a in op.args if isinstance(a, sp.Symbol)} - {o.dest for o in ops_}
    lines = []
    for s in [*rule.element_inputs, *rule.vector_values]:
        if s not in used:
            continue
        own = _dom(rule.domain(s)) if s not in rule.element_inputs else "brc"
        index = "offs" if own == domain else INDEX[(domain, own)]
        ptr = names.derived(s.name, "_ptr")
        lines.append(f"{s.name} = tl.load({ptr} + {index}, mask=mask, other=0.0).to(tl.float32)")
    return lines


def needed(ops_: list[Op], outputs: list[sp.Symbol]) -> list[Op]:
    """The ops ``outputs`` depend on, in order."""
    want = set(outputs)
    kept = []
    for op in reversed(ops_):
        if op.dest in want:
            kept.append(op)
            want |= {a for a in op.args if isinstance(a, sp.Symbol)}
    return kept[::-1]


def matrix_kernels(
    lowered: Lowered, phase: int, printer: TritonOpPrinter
) -> list[dict[str, object]]:
    """The kernels of sweep ``phase``: one over flat indices of its domain (maps and whole
    reductions, if any), one per reduced axis (along the last: a program per outer index looping
    over it; along the rows of the elements: a program per block of columns looping over rows)."""
    rule = lowered.rule
    domain = _dom(lowered.sweep_domain(phase))
    ops_ = lowered.reduce_phases[phase - 1]
    values = lowered.phase_reductions(phase)
    base = names.phased(names.derived(rule.name, "_reduce_kernel"), phase)
    host_names = [s.name for s in lowered.phase_host(phase)]

    def code(outputs: list[sp.Symbol]) -> tuple[list[str], list[str]]:
        kept = needed(ops_, outputs)  # each kernel computes only what its outputs need
        return _loads(lowered, kept, domain), printer.lines(kept)

    flat_maps = [v for v in values if v not in rule.reductions]
    whole = [v for v in values if v in rule.reductions and rule.reduction_axes[v] is None]
    kernels = []
    if flat_maps or whole:
        loads, lines = code(flat_maps + whole)
        kernels.append(
            {
                "shape": "flat",
                "name": base,
                "domain": domain,
                "loads": loads,
                "ops": lines,
                "stores": [(names.derived(v.name, "_ptr"), v.name) for v in flat_maps],
                "partials": [PARTIAL[rule.reduction_kinds[v]].format(v.name) for v in whole],
                "host_names": host_names,
                "whole": [v.name for v in whole],
            }
        )
    for axis_kind in ("last", "middle"):
        outs = []
        for v in values:
            if v not in rule.reductions or rule.reduction_axes[v] is None:
                continue
            present = [a for a in "brc" if a in domain]
            removed = present[rule.reduction_axes[v]]
            last = removed == present[-1]
            if (axis_kind == "last") == last:
                kind = rule.reduction_kinds[v]
                acc = f"_acc_{v.name}"
                outs.append(
                    {
                        "acc": acc,
                        "init": f"{acc} = tl.full((BLOCK_SIZE,), {IDENTITY[kind]}, tl.float32)",
                        "accumulate": f"{acc} = " + ACCUMULATE[kind].format(acc=acc, x=v.name),
                        "finish": FINISH[kind].format(acc=acc) if last else acc,
                        "ptr": names.derived(v.name, "_ptr"),
                        "value": v,
                    }
                )
        if outs:
            loads, lines = code([o["value"] for o in outs])
            suffix = "_row_reduce_kernel" if axis_kind == "last" else "_col_reduce_kernel"
            kernels.append(
                {
                    "shape": axis_kind,
                    "domain": domain,
                    "name": names.phased(names.derived(rule.name, suffix), phase),
                    "length": _LAST.get(domain, ""),
                    "loads": loads,
                    "ops": lines,
                    "outs": outs,
                    "host_names": host_names,
                    "whole": [],
                }
            )
    return kernels


def matrix_context(lowered: Lowered, printer: TritonOpPrinter) -> dict[str, object]:
    """The template's view of a rule with row or column vectors: its sweeps' kernels, the
    buffers every kernel takes (elements, then vectors), the update's loads."""
    rule = lowered.rule
    count = len(lowered.reduce_phases) + 1
    phases = []
    for k in range(1, count):
        kernels = matrix_kernels(lowered, k, printer)
        phases.append(
            {
                "phase": k,
                "domain": _dom(lowered.sweep_domain(k)),
                "computes": [v.name for v in lowered.phase_reductions(k)],
                "table": reduce_scalars_name(k),
                "function": reduction_scalars_name(k),
                "kernels": kernels,
            }
        )
    buffers = [*rule.element_inputs, *rule.vector_values]
    states = [s.name for s in rule.states.values()]
    index = {"weight": 0, "grad": 1, **{n: 2 + i for i, n in enumerate(states)}}
    vector_states = {s.symbol for s in rule.vector_states}
    staged = [v for v in rule.vector_values if v not in vector_states]
    args = [f"buffers[{index[s.name]}]" for s in [*rule.element_inputs, *vector_states_in(rule)]]
    args += [f'_vectors["{v.name}"]' for v in staged]
    return {
        "matrix": True,
        "all_ptrs": [names.derived(s.name, "_ptr") for s in buffers],
        "matrix_kernels": [kernel for p in phases for kernel in p["kernels"]],
        "matrix_phases": phases,
        "staged_vectors": [(v.name, _dom(rule.domain(v))) for v in staged],
        "tensor_args": args,
        "vector_states": [(s.name, s.new.name) for s in rule.vector_states],
        "update_loads": _loads(lowered, lowered.ops, "brc"),
    }


def vector_states_in(rule: Rule) -> list[sp.Symbol]:
    """The vector states' symbols, in :attr:`Rule.vector_values` order."""
    states = {s.symbol for s in rule.vector_states}
    return [v for v in rule.vector_values if v in states]
