"""The plan of a rule with matrix equations (:mod:`codegen.matrix_targets` prints it): its
stages in dependency order (:func:`plan`: ``element`` segments, per-tensor ``reduce`` sums,
``matrix`` iterations, each with the host scalars first needed there), and for the compiled
targets the passes that write the new states and weight in place once every stage has run
(:func:`in_place`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from codegen import matrix
from codegen.ir import Assign
from codegen.linearize import Linearizer
from codegen.lower import HostExtractor
from codegen.lowered import Op
from codegen.names import Temps
from codegen.spec import Rule, SpecError
from codegen.spec_parts import SCALAR


@dataclass
class Segment:
    """Per-element equations fused into one pass; ``reads``/``writes`` are whole arrays."""

    index: int
    ops: list[Op] = field(default_factory=list)
    reads: list[sp.Symbol] = field(default_factory=list)
    writes: list[sp.Symbol] = field(default_factory=list)
    host: list[sp.Symbol] = field(default_factory=list)  # host scalars the ops use


@dataclass
class Plan:
    rule: Rule
    host_lets: list[tuple[sp.Symbol, sp.Expr]]  # scalars of hyperparameters, t and sizes
    host: dict[sp.Symbol, sp.Expr]  # host scalars of the element ops, by name
    stages: list[tuple[str, object]]  # ("element", Segment) | ("reduce", (sym, summand)) | ...
    outputs: dict[sp.Symbol, sp.Symbol]  # current -> new (states, then the weight)

    def host_before(self, stage: int) -> list[sp.Symbol]:
        """Host scalars first needed by stage ``stage`` (computed right before it)."""
        seen: set[sp.Symbol] = set()
        for i, (kind, what) in enumerate(self.stages):
            needed = list(what.host) if kind == "element" else []  # type: ignore[attr-defined]
            if kind == "matrix":
                exprs = _matrix_scalars(what)  # type: ignore[arg-type]
                needed = [s for s, e in self.host.items() if e in exprs]
            fresh = [s for s in needed if s not in seen]
            seen |= set(fresh)
            if i == stage:
                return fresh
        return []


def _matrix_scalars(iteration: matrix.Iteration) -> set[sp.Symbol]:
    return {s for op in iteration.program if op.scalar is not None for s in [op.scalar]}  # type: ignore[misc]


def plan(rule: Rule) -> Plan:
    """The rule's stages in dependency order (see the module docstring)."""
    iterations = {it.symbol: it for it in matrix.iterations(rule)}
    defined = {eq.target: eq for eq in rule.equations}
    inputs = set(rule.element_inputs)
    host_inputs = set(rule.host_inputs)
    level: dict[sp.Symbol, int] = dict.fromkeys(inputs | host_inputs, 0)
    host_lets: list[tuple[sp.Symbol, sp.Expr]] = []
    element: list[tuple[sp.Symbol, sp.Expr, int]] = []  # (target, expr, level)

    def deps(symbol: sp.Symbol) -> set[sp.Symbol]:
        if symbol in iterations:
            return {iterations[symbol].start}
        return set(defined[symbol].expr.free_symbols) if symbol in defined else set()

    visiting: set[sp.Symbol] = set()

    def visit(symbol: sp.Symbol) -> int:
        if symbol in level:
            return level[symbol]
        if symbol in visiting:
            raise SpecError(f"{rule.source}: the equations form a cycle through {symbol}")
        visiting.add(symbol)
        below = max((visit(d) for d in sorted(deps(symbol), key=str)), default=0)
        visiting.discard(symbol)
        if symbol in iterations or symbol in rule.reductions:
            # the value exists after the stage that computes its input: one level deeper
            level[symbol] = below + 1
            if symbol in rule.reductions:
                element.append((_summand(symbol), defined[symbol].expr, below))
        elif rule.domain(symbol) == SCALAR:
            level[symbol] = 0
            host_lets.append((symbol, defined[symbol].expr))
            host_inputs.add(symbol)
        else:
            level[symbol] = below
            element.append((symbol, defined[symbol].expr, below))
        return level[symbol]

    for eq in rule.ordered_equations():
        visit(eq.target)
    for it in iterations.values():
        visit(it.symbol)
    if any(lv and s in host_inputs and s not in rule.reductions for s, lv in level.items()):
        raise SpecError(f"{rule.source}: a host value may not use a reduction (first slice)")

    temps = Temps()
    scalars = host_inputs | set(rule.reductions)
    extractor = HostExtractor(scalars, lambda: temps.new("host"))
    depth = max((lv for _, _, lv in element), default=0)
    stages: list[tuple[str, object]] = []
    later_reads: dict[sp.Symbol, int] = {}  # array -> the last level reading it
    for _target, expr, lv in element:
        for s in expr.free_symbols:
            later_reads[s] = max(later_reads.get(s, -1), lv)
    outputs = dict(rule.outputs)
    for it in iterations.values():
        later_reads[it.start] = max(later_reads.get(it.start, -1), level[it.symbol])
    for lv in range(depth + 1):
        segment = Segment(lv)
        members = [(t, e) for t, e, v in element if v == lv]
        for target, expr in members:
            extracted = extractor(expr)
            host = scalars | set(extractor.host)
            lin = Linearizer(rule, "element", host, lambda: temps.new("value"))
            assigns = lin.phase([Assign(target, extracted, "element")], {target})
            segment.ops += [Op(a.target, a.op, a.args, a.origin) for a in assigns]  # type: ignore[arg-type]
        produced = {t for t, _ in members}
        for op in segment.ops:
            for a in op.args:
                if isinstance(a, sp.Symbol) and a in extractor.host and a not in segment.host:
                    segment.host.append(a)
                elif (
                    isinstance(a, sp.Symbol)
                    and a not in produced
                    and a not in extractor.host
                    and a not in scalars
                    and a not in {o.dest for o in segment.ops}
                    and a not in segment.reads
                ):
                    segment.reads.append(a)
        finals = set(outputs.values())
        segment.writes = [
            t
            for t, _ in members
            if t in finals or later_reads.get(t, -1) > lv or t in _summands(rule)
        ]
        if segment.ops:
            stages.append(("element", segment))
        for red in rule.reductions:
            if level[red] == lv + 1:
                stages.append(("reduce", (red, _summand(red))))
        for it in iterations.values():
            if level[it.symbol] == lv + 1:
                stages.append(("matrix", it))
    host = dict(extractor.host)
    for it in iterations.values():  # the matrix ops' scalars: hyperparameter expressions
        for op in it.program:
            if op.scalar is not None and op.scalar not in host.values():
                host[temps.new("host")] = op.scalar
    return Plan(rule, host_lets, host, stages, outputs)


def _summand(reduction: sp.Symbol) -> sp.Symbol:
    return sp.Symbol(f"_sum_{reduction.name}", real=True)


def _summands(rule: Rule) -> set[sp.Symbol]:
    return {_summand(r) for r in rule.reductions}


def scalar_name(plan_: Plan, expr: sp.Expr) -> str:
    """The host scalar holding a matrix op's factor."""
    for s, e in plan_.host.items():
        if e == expr:
            return s.name
    raise KeyError(expr)


def _needed(ops_: list[Op], wanted: set[sp.Symbol]) -> list[Op]:
    """The ops of ``ops_`` that computing ``wanted`` takes, in their order (a backward slice)."""
    need, kept = set(wanted), []
    for op in reversed(ops_):
        if op.dest in need:
            kept.append(op)
            need |= {a for a in op.args if isinstance(a, sp.Symbol)}
    return kept[::-1]


@dataclass
class Pass:
    """One loop over the flat elements of a compiled module: its ops, the arrays it loads (each
    loaded as itself), the (value, array) pairs it stores (an array also loaded is the same
    buffer: written in place, each element after its load) and the host scalars it takes."""

    ops: list[Op]
    loads: list[sp.Symbol]
    stores: list[tuple[sp.Symbol, sp.Symbol]]
    host: list[sp.Symbol]
    fresh: list[tuple[sp.Symbol, sp.Symbol | None]] = field(default_factory=list)
    # ^ each array it stores that is not the weight's or a state's, and the buffer it takes
    # (one no later stage reads), or None for a fresh one

    @property
    def arrays(self) -> list[sp.Symbol]:
        return list(dict.fromkeys(self.loads + [array for _, array in self.stores]))


@dataclass
class InPlace:
    """The compiled modules' loops (numba and Triton alike): each element segment's (None where
    its every value is a new one, made at commit) by the segment's index, then ``commit``."""

    segments: dict[int, Pass | None]
    commit: Pass


def in_place(plan_: Plan) -> InPlace:
    """Each element segment as one loop, and the new states and weight made by one more,
    ``commit``, run by the step's writes (every check passed) in place: a new value that no
    later stage reads is not stored by its segment and copied, but computed again there from
    what its segment read (the same ops on the same values: the same bits; the weight and
    states are unchanged until then); one a later stage reads is stored by its segment and
    copied by that loop. No fresh array, no copy pass for the values the step writes; a
    segment's fresh array takes the buffer of one that no later stage reads."""
    finals = {new: cur for cur, new in plan_.outputs.items()}
    segments = [w for k, w in plan_.stages if k == "element"]
    read_after: dict[sp.Symbol, int] = {}  # array -> index of the last stage reading it
    starts = {w.start for k, w in plan_.stages if k == "matrix"}  # type: ignore[attr-defined]
    for i, (kind, what) in enumerate(plan_.stages):
        if kind == "element":
            reads = what.reads  # type: ignore[attr-defined]
        elif kind == "matrix":
            reads = [what.start]  # type: ignore[attr-defined]
        else:
            reads = [what[1]]  # type: ignore[index]  # a reduction: its summand
        for s in reads:
            read_after[s] = i
    recomputed: dict[sp.Symbol, Segment] = {}  # a new value -> the segment that computes it
    index = {id(w): i for i, (_, w) in enumerate(plan_.stages)}
    for seg in segments:
        for t in seg.writes:
            if t in finals and read_after.get(t, -1) <= index[id(seg)]:
                recomputed[t] = seg
    commit_ops: list[Op] = []
    loads: list[sp.Symbol] = []
    host: list[sp.Symbol] = []
    for seg in segments:
        sliced = _needed(seg.ops, {t for t, s in recomputed.items() if s is seg})
        commit_ops += sliced
        used = {a for op in sliced for a in op.args if isinstance(a, sp.Symbol)}
        loads += [s for s in seg.reads if s in used and s not in loads]
        host += [s for s in seg.host if s in used and s not in host]
    loads += [new for new in finals if new not in recomputed]  # stored by a segment: copied
    for s in loads:
        read_after[s] = len(plan_.stages)  # read by the writes
    passes: dict[int, Pass | None] = {}
    born: list[sp.Symbol] = []  # the segments' fresh arrays, whose buffers another may take
    for seg in segments:
        i = index[id(seg)]
        writes = [t for t in seg.writes if t not in recomputed]
        if not writes:
            passes[seg.index] = None  # its every value is a new one, made at commit
            continue
        ops_ = _needed(seg.ops, set(writes))
        used = {a for op in ops_ for a in op.args if isinstance(a, sp.Symbol)}
        reads = [s for s in seg.reads if s in used]
        # a buffer is free once its last reader has run, or in the loop that reads it last (an
        # element's load comes before its store, at the same index); never an iteration's
        # start (the value of no steps is the start itself)
        free = [s for s in born if read_after.get(s, -1) < i or (read_after[s] == i and s in reads)]
        fresh: list[tuple[sp.Symbol, sp.Symbol | None]] = []
        for t in writes:
            if free:
                born.remove(reused := free.pop(0))
                fresh.append((t, reused))
            else:
                fresh.append((t, None))
            if t not in starts:
                born.append(t)
        stores = [(t, t) for t in writes]
        passes[seg.index] = Pass(ops_, reads, stores, [s for s in seg.host if s in used], fresh)
    stores = [(new, cur) for cur, new in plan_.outputs.items()]
    return InPlace(passes, Pass(commit_ops, loads, stores, host))
