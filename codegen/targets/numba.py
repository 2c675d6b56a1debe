"""The numba target: a compiled, multi-threaded CPU module per rule (``generated/numba``).

Each three-address op is one scalar statement in a serial loop over a chunk's elements (LLVM
vectorises it), in the weight's dtype: values load as float32 or float64, host scalars arrive in a
table of that dtype (rounded as the NumPy module rounds them) and every literal is cast to it
(``_T(0.5)``: a bare Python float would promote a float32 expression to float64 in numba). So each
op computes what the NumPy module's ufunc computes on the same operands: +, -, *, /, sqrt,
comparisons, selects, max/min (NumPy's: ``a > b ? a : b`` with a NaN in ``a`` kept) and sign
(NumPy's: sign(-0.0) = 0.0) to the last bit; exp, log, tanh, softplus and pow call the
platform's libm, which may differ from NumPy's own SIMD routines in the last bit, and cbrt is
``numba_support.cbrt`` (float32: float64 Newton and Halley steps that vectorise, rounded once;
NumPy's float32 ``np.cbrt`` is up to 2 ulp off float64's rounded root). Reductions
accumulate each chunk serially (sums in float64) where NumPy sums a chunk pairwise: equal up to
float64 rounding. The update loop reads and writes its buffers through ``load`` and ``store``
(``optgen_runtime.numba_support``): plain indexing on float32 and float64 arrays; on the uint16 bits
of a bfloat16 weight and gradient (the ``_update_bits`` loops of a module with ``step_tables``, for
the torch classes' fast step; ``_update_master``: a bfloat16 gradient of a float32 master copy, the
bfloat16 parameter rounded from the master chunk by chunk) a widening to float32 and a rounding back
to nearest even, the chunk's dtype ``_T`` float32. Noise draws (``RULE.normal``) are the
NumPy module's Philox stream (``numba_support.normals``: its integers and uniforms to the bit,
its normals, through its own float32 log and cos, within 4 ulp), drawn a block at a time before the
block's update loop. A rule with row/column states and axis reductions (Adafactor, CAME, SM3)
gets the NumPy module's stepper with every sweep compiled: its element sweeps and update as
parallel loops over tiles of the (batch, rows, cols) view (``optgen_runtime.numba_tiles``; a
sweep's sums in float64 in lanes of 8, tile after tile, against NumPy's pairwise sums: equal to
float64 rounding), its sweeps over the row and column vectors as loops over each matrix's
vector. Rules the target
cannot express yet get a module that runs the NumPy reference and says so (``COMPILED = False``,
``FALLBACK``): matrix rules (Muon, AdaMuon).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import sympy as sp

from codegen import names, ops
from codegen.lower import Lowered, Op, Operand
from codegen.spec import Rule, SpecError
from codegen.targets import Target
from codegen.targets.host import INFIX_COMPARISONS, CommentedLines, HostCode, literal
from codegen.targets.rules import (
    exported,
    legend,
    natural,
    reduce_scalars_name,
    reduction_scalars_name,
    variant_context,
)

DTYPE = "_T"  # the chunk's dtype (float32 or float64), as a callable: literals are cast to it


def _max(a: list[str]) -> str:  # NumPy's maximum: b when equal or b is NaN; a NaN in a kept
    return f"({a[0]} if ({a[0]} > {a[1]} or {a[0]} != {a[0]}) else {a[1]})"


def _min(a: list[str]) -> str:
    return f"({a[0]} if ({a[0]} < {a[1]} or {a[0]} != {a[0]}) else {a[1]})"


class NumbaOpPrinter(CommentedLines):
    """numba: each op is one scalar statement on the chunk's element ``_i``."""

    FORMS: ClassVar[dict[str, Callable[[list[str]], str]]] = {
        "add": lambda a: f"{a[0]} + {a[1]}",
        "sub": lambda a: f"{a[0]} - {a[1]}",
        "mul": lambda a: f"{a[0]} * {a[1]}",
        "div": lambda a: f"{a[0]} / {a[1]}",  # IEEE; x / 0 is inf (error_model="numpy")
        "neg": lambda a: f"-{a[0]}",
        "copy": lambda a: a[0],
        "sqrt": lambda a: f"np.sqrt({a[0]})",
        "abs": lambda a: f"np.abs({a[0]})",
        "sign": lambda a: (
            f"({DTYPE}(1.0) if {a[0]} > 0 else ({DTYPE}(-1.0) if {a[0]} < 0 else "
            f"({a[0]} if {a[0]} != {a[0]} else {DTYPE}(0.0))))"
        ),
        "max": _max,
        "min": _min,
        "exp": lambda a: f"np.exp({a[0]})",
        "log": lambda a: f"np.log({a[0]})",
        "tanh": lambda a: f"np.tanh({a[0]})",
        # NumPy's logaddexp(0, a): a > 0: a + log1p(exp(-a)); else log1p(exp(a)); NaN stays
        "softplus": lambda a: (
            f"({a[0]} + np.log1p(np.exp(-{a[0]})) if {a[0]} > 0 else "
            f"(np.log1p(np.exp({a[0]})) if {a[0]} <= 0 else {a[0]}))"
        ),
        # numba_support.cbrt: float32's vectorises (libm's cbrtf would be a call per element)
        "cbrt": lambda a: f"({DTYPE}(np.nan) if {a[0]} < 0.0 else cbrt({a[0]}))",
        "pow": lambda a: f"{a[0]} ** {a[1]}",  # NaN guard in op() below
        **INFIX_COMPARISONS,
        "where": lambda a: f"({a[1]} if {a[0]} else {a[2]})",
    }

    def name(self, operand: Operand) -> str:
        """Values and host scalars by name; constants cast to the chunk's dtype."""
        if isinstance(operand, sp.Symbol):
            return operand.name
        if isinstance(operand, sp.logic.boolalg.BooleanAtom):
            return "True" if operand is sp.true else "False"
        return f"{DTYPE}({literal(operand)})"

    def __init__(self, identities: dict[sp.Symbol, Operand] | None = None) -> None:
        self.identities = identities or {}  # clamps printed as a copy of their operand

    def op(self, op: Op) -> str:
        if op.dest in self.identities:  # a clamp by an infinite bound: its operand, unchanged
            return f"{self.name(op.dest)} = {self.name(self.identities[op.dest])}"
        a = [self.name(x) for x in op.args]
        expr = self.FORMS[op.kind](a)
        if op.kind == "pow" and not op.args[1].is_integer:  # NaN for a < 0 (-inf included)
            expr = f"({DTYPE}(np.nan) if {a[0]} < 0.0 else {expr})"
        return f"{self.name(op.dest)} = {expr}"


ops.require("numba", NumbaOpPrinter.FORMS)


def identity_clamps(ops_: list[Op], host: list[sp.Symbol]) -> tuple[dict[sp.Symbol, Operand], str]:
    """The clamps of ``ops_`` by one host scalar (``max(h, x)``, ``min(h, x)``), which are the
    identity, NaN included, when h is -inf (max) or +inf (min): (their destinations, the
    condition under which all of them are), as the NumPy printer's ``identity_bound`` skips
    each such pass. ``clip_gradient=None`` (clip to infinity) then costs nothing per element."""
    copies, conditions = {}, set()
    for op in ops_:
        if op.kind not in ("max", "min") or len(op.args) != 2:
            continue
        bounds = [a for a in op.args if a in host]
        if len(bounds) != 1:
            continue
        copies[op.dest] = next(a for a in op.args if a not in host)
        infinity = "-np.inf" if op.kind == "max" else "np.inf"
        conditions.add(f"{bounds[0].name} == {infinity}")
    return copies, " and ".join(sorted(conditions))


# A chunk's partial of each reduction kind: its identity, and how an element joins it (sums in
# float64, max and min NaN-propagating as NumPy's np.max/np.min).
IDENTITY = {"sum": "0.0", "max": "-np.inf", "min": "np.inf"}
ACCUMULATE = {
    "sum": "{acc} += np.float64({x})",
    "max": "{acc} = {acc} if ({acc} != {acc} or {acc} >= {x}) else np.float64({x})",
    "min": "{acc} = {acc} if ({acc} != {acc} or {acc} <= {x}) else np.float64({x})",
}


def _buf(name: str) -> str:
    """A buffer's chunk in a kernel (``mean_buf``); the element it holds is ``mean``."""
    return names.derived(name, "_buf")


def fallback_reason(rule: Rule) -> str | None:
    """Why the rule runs the NumPy reference in its numba module (None: it is compiled)."""
    if rule.vector_values and variant_context(rule)["variants"]:
        return "variants of a rule with row/column states are not compiled yet"
    if rule.vector_values and rule.draws:
        return "noise draws in a rule with row/column states are not compiled yet"
    return None


# A row or matrix value's element in a tile loop, loaded once per row (a column value: a 1-D view
# of the row's piece, as the element buffers), by its domain (numpy_support.domain_shape's view).
PER_ROW = {"br": "[_m, _r, 0]", "b": "[_m, 0, 0]"}


def _vector_reads(lowered: Lowered, ops_: list[Op]) -> list[tuple[str, str]]:
    """(name, domain) of each row, column or matrix value ``ops_`` read."""
    rule = lowered.rule
    used = {a for op in ops_ for a in op.args if isinstance(a, sp.Symbol)} - {o.dest for o in ops_}
    return [
        (v.name, "".join(a for a in "brc" if a in rule.domain(v)))
        for v in rule.vector_values
        if v in used
    ]


def _float64_vectors(lowered: Lowered) -> frozenset[str]:
    """The vectors a sweep may be handed in float64: the reductions along an axis (where every
    tile spans the axis, ``Tiling.combine`` hands a sweep's own unkept partials on uncast: a long
    1-D weight's per-element column sums, 80 MB at 10 M, not cast to a fresh array each step).
    Their loads cast to the weight's dtype: the bits NumPy's astype gives."""
    rule = lowered.rule
    return frozenset(v.name for v in rule.reductions if rule.reduction_axes[v] is not None)


def tile_sweep(lowered: Lowered, phase: int, printer: NumbaOpPrinter) -> dict[str, object]:
    """An element sweep of a row/column rule, compiled: its tile loop's loads, ops and
    accumulators. A row is taken a block of REDUCE_BLOCK at a time, in a loop that vectorises:
    a per-column partial added there (one per column of the tile), a whole-tensor one into a
    block-wide row of partials (element i of every block of the tile into place i, folded into
    lanes at the tile's end), per-row values stored, then folded into lanes
    (``optgen_runtime.numba_tiles``)."""
    rule = lowered.rule
    ops_ = lowered.reduce_phases[phase - 1]
    values = lowered.phase_reductions(phase)
    if any(v not in rule.reductions for v in values):
        raise SpecError(f"{rule.source}: an element sweep may only reduce (not compiled yet)")
    whole = [v for v in values if rule.reduction_axes[v] is None]
    along = [v for v in values if rule.reduction_axes[v] is not None]
    accs = []
    for k, v in enumerate([*whole, *along]):
        kind = rule.reduction_kinds[v]
        where = "tile" if k < len(whole) else "row" if rule.reduction_axes[v] == -1 else "column"
        acc = {"where": where, "kind": kind, "identity": IDENTITY[kind], "value": v.name}
        acc["lanes"] = None
        if where == "column":  # over the rows: into the tile's partial, a column per element
            acc["accumulate"] = ACCUMULATE[kind].format(acc=f"_cp{k}[_i]", x=v.name)
            acc["slice"] = f"_cp{k} = _parts[{k - len(whole)}, _at + _lo : _at + _lo + _n]"
            acc["fill"] = f"_cp{k}[:] = {IDENTITY[kind]}"
        elif where == "tile":  # over the tile: element i of every block into place i, then
            # those REDUCE_BLOCK partials folded into lanes once, at the tile's end
            acc["lanes"], acc["scratch"] = f"_lanes{k}", f"_wide{k}"
            acc["accumulate"] = ACCUMULATE[kind].format(acc=f"_wide{k}[_i]", x=v.name)
            acc["store"] = f"_whole[_k, {k}] = lanes_{kind}(_lanes{k})"
        else:  # along the row: each block's values folded into lanes, per row
            acc["lanes"], acc["scratch"] = f"_lanes{k}", f"_block{k}"
            acc["store"] = (
                f"_parts[{k - len(whole)}, _offsets[_k, 0] + (_m - _m0) * (_r1 - _r0) + _r - "
                f"_r0] = lanes_{kind}(_lanes{k})"
            )
        accs.append(acc)
    vectors = _vector_reads(lowered, ops_)
    host = lowered.phase_host(phase)
    return {
        "kernel": f"_sweep{phase}",
        "whole": [v.name for v in whole],
        "along": [v.name for v in along],
        "along_domains": ["br" if rule.reduction_axes[v] == -1 else "bc" for v in along],
        "whole_kinds": [rule.reduction_kinds[v] for v in whole],
        "reads_vectors": [n for n, _ in vectors],
        "chain_args": [f"_{s.name}_m" for s in rule.element_inputs]
        + [f"_v_{n}" for n, _ in vectors]
        + [f"_p{phase}_{k}" for k in range(len(host))],
        "params": [_buf(s.name) for s in rule.element_inputs] + [_buf(n) for n, _ in vectors],
        "args": [f"_{s.name}_m" for s in rule.element_inputs]
        + [f'_vectors["{n}"]' for n, _ in vectors]
        + [s.name for s in host],
        "host_names": [s.name for s in host],
        "legend": [f"{n}: {what}" for n, what in legend(lowered, host)],
        "block": REDUCE_BLOCK,
        **_block_loads(
            [s.name for s in lowered.phase_reads(phase)],
            vectors,
            (),
            TILE_VIEW,
            "bc",
            COLUMN_VIEW,
            _float64_vectors(lowered),
        ),
        "ops": printer.lines(ops_),
        "accs": accs,
        "columns": any(a["where"] == "column" for a in accs),
        "kinds": sorted({a["kind"] for a in accs if a["where"] != "column"}),
    }


def _block_loads(
    buffers: list[str],
    vectors: list[tuple[str, str]],
    stored: tuple[str, ...],
    view: str,
    along: str,
    along_view: str,
    cast: frozenset[str],
) -> dict[str, list[tuple[str, str]]]:
    """A blocked loop's loads: per row, the values of the vectors not ``along`` the loop (a
    matrix's, a row's in a tile); per block, a 1-D view (``view``) of each buffer read or
    ``stored`` and (``along_view``) of each vector ``along`` it, indexed from 0 so that the loop
    vectorises; per element, the views' values. A vector in ``cast`` (``_float64_vectors``) is
    loaded cast to the weight's dtype."""

    def load(name: str, at: str) -> str:
        return f"_T({at})" if name in cast else at

    per_row, views, per_element = [], [], []
    for name in dict.fromkeys([*buffers, *stored]):
        views.append((f"_{name}_row", f"{_buf(name)}{view}"))
        if name in buffers:
            per_element.append((name, f"_{name}_row[_i]"))
    for name, domain in vectors:
        if domain == along:
            views.append((f"_{name}_row", f"{_buf(name)}{along_view}"))
            per_element.append((name, load(name, f"_{name}_row[_i]")))
        else:
            per_row.append((name, load(name, f"{_buf(name)}{PER_ROW[domain]}")))
    return {"per_row": per_row, "views": views, "per_element": per_element}


# A tile's row piece, a block at a time (element buffers; column vectors along it).
TILE_VIEW, COLUMN_VIEW = "[_m, _r, _lo : _lo + _n]", "[_m, 0, _lo : _lo + _n]"


def vector_sweep(
    lowered: Lowered, phase: int, printer: NumbaOpPrinter, domain: str
) -> dict[str, object]:
    """A sweep over whole row, column or matrix vectors, compiled: each matrix's vector a block of
    REDUCE_BLOCK at a time (its values in a loop that vectorises; sums along it folded into
    lanes), the new vectors written to arrays the stepper makes."""
    rule = lowered.rule
    ops_ = lowered.reduce_phases[phase - 1]
    values = lowered.phase_reductions(phase)
    maps = [v for v in values if v not in rule.reductions]
    reduced = [v for v in values if v in rule.reductions]
    vectors = _vector_reads(lowered, ops_)
    # a vector's length (its shape's axis: rows, columns, or the one value of a matrix's)
    axis = {"br": 1, "bc": 2, "b": 2}[domain]
    block_view = "[_m, _lo : _lo + _n, 0]" if domain == "br" else COLUMN_VIEW
    stored = tuple(v.name for v in maps)
    loads = _block_loads(
        [], vectors, stored, block_view, domain, block_view, _float64_vectors(lowered)
    )
    accs = [
        {
            "kind": rule.reduction_kinds[v],
            "identity": IDENTITY[rule.reduction_kinds[v]],
            "value": v.name,
            "lanes": f"_lanes{k}",
            "scratch": f"_block{k}",
        }
        for k, v in enumerate(reduced)
    ]
    host = lowered.phase_host(phase)
    first = maps[0].name if maps else next(n for n, d in vectors if d == domain)
    return {
        "kernel": f"_sweep{phase}",
        "domain": domain,
        "reduced_axes": [rule.reduction_axes[v] for v in reduced],
        "reduced_kinds": [rule.reduction_kinds[v] for v in reduced],
        "reads_vectors": [n for n, _ in vectors],
        "chain_args": ["_weight_m"]
        + [f"_v_{n}" for n, _ in vectors]
        + [f"_v_{v.name}" for v in maps]
        + [f"_p{phase}_{k}" for k in range(len(host))],
        "length": f"{_buf(first)}.shape[{axis}]",
        "outs": [v.name for v in maps],
        "reduced": [v.name for v in reduced],
        "params": ["weight_buf", *(_buf(n) for n, _ in vectors), *(_buf(v.name) for v in maps)],
        "args": ["_weight_m", *(f'_vectors["{n}"]' for n, _ in vectors)]
        + [f"_{v.name}_out" for v in maps]
        + [s.name for s in host],
        "host_names": [s.name for s in host],
        "legend": [f"{n}: {what}" for n, what in legend(lowered, host)],
        "block": REDUCE_BLOCK,
        **loads,
        "ops": printer.lines(ops_),
        "stores": [(f"_{v.name}_row", v.name) for v in maps],
        "accs": accs,
        "kinds": sorted({a["kind"] for a in accs}),
    }


def chains(lowered: Lowered, phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sweeps of a weight of one tile whose vectors are short (``Tiling.chained``: most
    weights of a model, each stepped alone) in runs, each run one compiled call (``_chain<k>``)
    instead of a call and a combination in Python per sweep. A run ends before a sweep whose
    host scalars read a sum of the run (they are computed in Python, before its call: a sum of
    the run that their host code takes but does not read is given as NaN). In the
    call each sweep's serial loop, then its partials combined as ``Tiling.combine`` would
    combine one tile's: a whole-tensor sum the identity combined with its partial, a vector
    its partial cast to the weight's dtype; the vectors a run makes are arrays the stepper
    makes and passes."""
    rule = lowered.rule
    runs: list[list[dict[str, Any]]] = []
    made: set[sp.Symbol] = set()  # the sums of the current run
    for p in phases:
        read: set[sp.Symbol] = set()
        for s in lowered.phase_host(p["phase"]):
            read |= lowered.host_value(s).free_symbols
        if not runs or read & made:
            runs.append([])
            made = set()
        # the run's earlier sums: its host code takes them, reads none (given as NaN)
        runs[-1].append({**p, "unread": sorted(v.name for v in made)})
        made |= {v for v in lowered.phase_reductions(p["phase"]) if v in rule.scalar_reductions}
    found = []
    for k, run in enumerate(runs, 1):
        outs: list[tuple[str, str]] = []  # the vectors the run makes, and their domains
        sums: list[str] = []
        steps = []
        helpers: set[str] = set()  # what the run's combinations import from numba_tiles
        for p in run:
            after = []
            if p["kind"] == "tiles":
                for j, (name, kind) in enumerate(zip(p["whole"], p["whole_kinds"], strict=True)):
                    after.append(f"_found[{len(sums)}] = first_{kind}(_whole[0, {j}])")
                    helpers.add(f"first_{kind}")
                    sums.append(name)
                for j, (name, domain) in enumerate(
                    zip(p["along"], p["along_domains"], strict=True)
                ):
                    after.append(f"cast_into(_v_{name}, _parts[{j}])")
                    helpers.add("cast_into")
                    outs.append((name, domain))
            else:
                outs += [(name, p["domain"]) for name in p["outs"]]
                for j, (name, axis, kind) in enumerate(
                    zip(p["reduced"], p["reduced_axes"], p["reduced_kinds"], strict=True)
                ):
                    if axis is None:
                        column = f"_s{p['phase']}[:, {j}]"
                        after.append(f"_found[{len(sums)}] = matrices_{kind}({column})")
                        helpers.add(f"matrices_{kind}")
                        sums.append(name)
                    else:
                        after.append(f"cast_into(_v_{name}, _s{p['phase']}[:, {j}])")
                        helpers.add("cast_into")
                        outs.append((name, "b"))
            steps.append({**p, "after": after})
        made_names = {name for name, _ in outs}
        inputs = list(
            dict.fromkeys(n for p in run for n in p["reads_vectors"] if n not in made_names)
        )
        host = [f"_p{p['phase']}_{j}" for p in run for j in range(len(p["names"]))]
        elements = [f"_{s.name}_m" for s in rule.element_inputs]
        found.append(
            {
                "name": f"_chain{k}",
                "phases": [p["phase"] for p in run],
                "steps": steps,
                "outs": outs,
                "sums": sums,
                "helpers": helpers,
                "params": elements
                + [f"_v_{n}" for n in inputs]
                + [f"_v_{n}" for n, _ in outs]
                + host,
                "call_args": elements
                + [f'_vectors["{n}"]' for n in inputs]
                + [f'_vectors["{n}"]' for n, _ in outs]
                + [f"*_pre{p['phase']}" for p in run if p["names"]],
            }
        )
    return found


def matrix_context(lowered: Lowered, common: dict[str, object]) -> dict[str, object]:
    """A row/column rule's module: the NumPy module's stepper (``_matrix_stepper.j2``), its
    element sweeps and update compiled tile loops."""
    from codegen.targets import numpy as numpy_target

    rule = lowered.rule
    base = numpy_target.context(lowered)
    printer = NumbaOpPrinter()
    phases = base["phases"]
    tiles = {}
    vector_sweeps = []
    for p in phases:  # type: ignore[attr-defined]
        if p["kind"] == "tiles":
            tiles[p["phase"]] = tile_sweep(lowered, p["phase"], printer)
            p.update(tiles[p["phase"]])
        else:
            vector_sweeps.append(vector_sweep(lowered, p["phase"], printer, p["domain"]))
            p.update(vector_sweeps[-1])
    vectors = _vector_reads(lowered, lowered.ops)
    host = lowered.update_scalars
    runs = chains(lowered, phases)  # type: ignore[arg-type]
    helpers = sorted(set().union(*(c["helpers"] for c in runs)))
    kinds = sorted({k for p in [*tiles.values(), *vector_sweeps] for k in p["kinds"]})  # type: ignore[attr-defined]
    stored = {
        cur.name: new.name
        for cur, new in sorted(
            lowered.outputs.items(), key=lambda p: rule.element_inputs.index(p[0])
        )
    }
    return (
        base
        | common
        | {
            "compiled": True,
            "uses_cbrt": any(op.kind == "cbrt" for op in [*lowered.ops, *lowered.reduce_ops]),
            "exports": sorted(
                [*base["exports"], "COMPILED", "FALLBACK", "step_prechecked"],  # type: ignore[list-item]
                key=natural,
            ),
            "sweeps": list(tiles.values()),
            "vector_sweeps": vector_sweeps,
            "chains": runs,
            "block": REDUCE_BLOCK,
            "lane_imports": "".join(
                f", {f}"
                for f in sorted([*helpers, *(f"{f}_{k}" for f in ("fold", "lanes") for k in kinds)])
            ),
            "update_params": [_buf(s.name) for s in rule.element_inputs]
            + [_buf(n) for n, _ in vectors],
            "update_args": [f"_{s.name}_m" for s in rule.element_inputs]
            + [f'_vectors["{n}"]' for n, _ in vectors]
            + [s.name for s in host],
            "host_names": [s.name for s in host],
            "legend": [f"{n}: {what}" for n, what in legend(lowered, host)],
            **_block_loads(
                [s.name for s in lowered.reads],
                vectors,
                tuple(stored),
                TILE_VIEW,
                "bc",
                COLUMN_VIEW,
                _float64_vectors(lowered),
            ),
            "update_ops": printer.lines(lowered.ops),
            "stores": [(f"_{cur}_row", new) for cur, new in stored.items()],
        }
    )


# A reduction pass whose values take a division or a square root computes REDUCE_BLOCK elements'
# values in a loop with no carried dependency (vectorised), then adds them to the sums in element
# order: the bits of one loop doing both, which runs scalar and is bound by those operations
# (LAMB at 10 M float32 elements, `python -m tools.bench --cpu --rule lamb`: 22.6 -> 14.1-14.7
# ms per step). A pass of products and sums alone stays one loop: bound by memory there, the
# block's scratch made it slower (LARS at 10 M: 8.0-8.4 -> 9.2-10.4 ms).
REDUCE_BLOCK = 1024
BLOCKED_WHEN = {"div", "sqrt"}


def phase_context(lowered: Lowered, phase: int, printer: NumbaOpPrinter) -> dict[str, object]:
    """Reduction phase ``phase``: its chunk function's loads, ops and accumulators."""
    rule = lowered.rule
    reductions = lowered.phase_reductions(phase)
    accs = []
    for k, r in enumerate(reductions):
        kind = rule.reduction_kinds[r]
        acc = f"_p{k}"
        accs.append(
            {
                "acc": acc,
                "init": f"{acc} = {IDENTITY[kind]}",
                # (not _s<k>: the reduction phases' CSE temporaries, codegen/names.py)
                "scratch": f"_block{k} = np.empty({REDUCE_BLOCK}, dtype=np.float64)",
                "store": f"_block{k}[_i] = np.float64({r.name})",
                "accumulate": ACCUMULATE[kind].format(acc=acc, x=r.name),
                "accumulate_block": ACCUMULATE[kind].format(acc=acc, x=f"_block{k}[_i]"),
            }
        )
    reads = lowered.phase_reads(phase)
    return {
        "phase": phase,
        "chunk": names.phased("_reduce_chunk", phase),
        "kernel": names.phased("_reduce", phase),
        "reductions": [str(r) for r in reductions],
        "group": [str(r) for r in reductions if r in rule.group_reductions],
        "table": reduce_scalars_name(phase),
        "function": reduction_scalars_name(phase),
        "reads": [(s.name, _buf(s.name), f"_r{k}") for k, s in enumerate(reads)],
        "block": REDUCE_BLOCK,
        "blocked": bool({op.kind for op in lowered.reduce_phases[phase - 1]} & BLOCKED_WHEN),
        "host_names": [s.name for s in lowered.phase_host(phase)],
        "legend": [f"{n}: {what}" for n, what in legend(lowered, lowered.phase_host(phase))],
        "ops": printer.lines(lowered.reduce_phases[phase - 1]),
        "accs": accs,
    }


def context(lowered: Lowered) -> dict[str, object]:
    rule = lowered.rule
    reason = fallback_reason(rule)
    rules_names = exported(lowered)
    common = {
        "matrix": bool(rule.vector_values),
        "rule": rule,
        "doc": rule.doc,
        "fallback": reason,
        "rules_names": rules_names,
    } | variant_context(rule)
    if reason is not None:
        return common | {"exports": sorted(rules_names, key=natural)}
    if rule.vector_values:
        return matrix_context(lowered, common)
    printer = NumbaOpPrinter()
    phases = [phase_context(lowered, k, printer) for k in range(1, len(lowered.reduce_phases) + 1)]
    code = HostCode()
    copies, unclamped_if = identity_clamps(lowered.ops, lowered.update_scalars)
    # a table of host scalars that depends on the hyperparameters and t alone: step_tables
    # (not with noise: its keys depend on the seed, the step and the tensor's stream)
    tables = not (rule.host_states or lowered.summands or rule.sizes or rule.scalars)
    tables = tables and not lowered.draws
    return (
        common
        | {
            "exports": sorted(
                [*rules_names, "COMPILED", "EVEN_CHUNKS", "FALLBACK", "init_state", "step"]
                + ["step_multi"]
                + ["step_buffers"]
                + ["step_tables"] * tables,
                key=natural,
            ),
            "host_fed": bool(rule.host_states and rule.scalar_reductions),
            # host scalars of every tensor at once (codegen.targets.rules.columnwise)
            "columnwise": "host_scalars_rows" in rules_names,
            "buffers": [_buf(s.name) for s in rule.element_inputs],
            "reads": [(s.name, _buf(s.name)) for s in lowered.reads],
            "stores": [
                (_buf(cur.name), new.name)
                for cur, new in sorted(
                    lowered.outputs.items(), key=lambda p: rule.element_inputs.index(p[0])
                )
            ],
            "inputs": list(rule.inputs),
            # (name, draws per element, this one's index): its counter is element * count + index
            "draws": [(d.name, len(rule.draws), rule.draws.index(d)) for d in lowered.draws],
            "scalar_args": list(rule.scalars),
            "host_states": bool(rule.host_states),
            "sizes": bool(rule.sizes),
            "group": [str(r) for r in rule.group_reductions],
            "memo": not (rule.host_states or lowered.summands),
            "tables": tables,
            "host_names": [s.name for s in lowered.update_scalars],
            "legend": [f"{n}: {what}" for n, what in legend(lowered, lowered.update_scalars)],
            # the update loops: without the clamps when every bound is infinite, then in full
            "loops": [(unclamped_if, NumbaOpPrinter(copies).lines(lowered.ops))] * bool(copies)
            + [("", printer.lines(lowered.ops))],
            "phases": phases,
        }
        | {"uses_math": code.uses_math}
        | {"uses_cbrt": any(op.kind == "cbrt" for op in [*lowered.ops, *lowered.reduce_ops])}
    )


TARGET = Target(
    "numba",
    "numba",
    "numba_module.py.j2",
    context,
    "compiled, multi-threaded CPU loops (numba; float32, float64)",
)


def fallback_text(rule: Rule, reason: str) -> str:
    """The numba module of a rule whose other modules come from elsewhere (a matrix rule,
    ``codegen/matrix_targets.py``): the NumPy reference, said so."""
    from codegen.targets import ENV

    return ENV.get_template("numba_module.py.j2").render(
        rule=rule, doc=rule.doc, fallback=reason, rules_names=[], exports=[]
    )
