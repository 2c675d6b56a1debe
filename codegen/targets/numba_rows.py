"""The numba target's row/column rules (Adafactor, CAME, SM3): the NumPy module's stepper
(``_matrix_stepper.j2``) with every sweep compiled (``_numba_matrix.j2``). An element sweep and
the update are loops over tiles of the weight's (batch, rows, cols) view
(``optgen_runtime.numba_tiles``), a sweep over the row and column vectors a loop over each
matrix's vector, and a weight of one tile runs its sweeps in chains (``chains``). The ops print
as the flat rules' (``codegen.targets.numba``)."""

from __future__ import annotations

from typing import Any

import sympy as sp

from codegen.lowered import Lowered, Op
from codegen.spec import SpecError
from codegen.targets.host_program import legend
from codegen.targets.numba import (
    ACCUMULATE,
    IDENTITY,
    REDUCE_BLOCK,
    NumbaOpPrinter,
    _buf,
)
from codegen.targets.rules import natural

# A row or matrix value's element in a tile loop, loaded once per row (a column value: a 1-D view
# of the row's piece, as the element buffers), by its domain (numpy_tiles.domain_shape's view).
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
    """The vectors a sweep may be handed in float64: an element sweep's reductions along an axis
    (where every tile spans the axis, ``Tiling.combine`` hands a sweep's own unkept partials on
    uncast: a long 1-D weight's per-element column sums, 80 MB at 10 M, not cast to a fresh
    array each step). Their loads cast to the weight's dtype: the bits NumPy's astype gives."""
    rule = lowered.rule
    return frozenset(
        v.name
        for phase in range(1, len(lowered.reduce_phases) + 1)
        if len(lowered.sweep_domain(phase)) == 3  # an element sweep: over (batch, rows, cols)
        for v in lowered.phase_reductions(phase)
        if v in rule.reductions and rule.reduction_axes[v] is not None
    )


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
