"""Where each per-element value of a NumPy module's chunk lives (:func:`allocate`): the chunk
of an input buffer, a reused scratch buffer or a mask. Split from :mod:`codegen.targets.numpy`.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from codegen import ops
from codegen.lowered import Lowered


@dataclass(frozen=True)
class Allocation:
    """Where each per-element value lives while a chunk is computed.

    ``storage[v]`` is ``("array", x)`` (the chunk of input buffer x: outputs are written over
    their own buffer as soon as its old value is dead), ``("scratch", k)`` (a chunk-sized scratch
    buffer, reused once its value is dead) or ``("bool", v)`` (a mask, allocated per chunk).
    ``copies`` are (buffer, scratch) pairs copied back at the end of a chunk, for outputs computed
    while their old value was still needed.
    """

    storage: dict[sp.Symbol, tuple[str, object]]
    scratch: int
    copies: list[tuple[sp.Symbol, int]]


def _masks(operands: tuple, storage: dict) -> bool:
    """True when ``operands`` are masks (a select between comparisons is itself a mask)."""
    return all(
        isinstance(x, sp.logic.boolalg.BooleanAtom)
        or (isinstance(x, sp.Symbol) and storage.get(x, ("",))[0] == "bool")
        for x in operands
    )


def allocate(lowered: Lowered, phase: int = 0) -> Allocation:
    """Storage for the update ops, or for reduction phase ``phase``'s ops (1-based)."""
    reduce = phase > 0
    ops_ = lowered.reduce_phases[phase - 1] if reduce else lowered.ops
    last_read: dict[sp.Symbol, int] = {}
    for i, op in enumerate(ops_):
        for a in op.args:
            if isinstance(a, sp.Symbol):
                last_read[a] = i
    if reduce:  # each summand is reduced after the last op: live to the end of the phase
        last_read.update(dict.fromkeys(lowered.phase_reductions(phase), len(ops_)))
    current_of = {} if reduce else {new: cur for cur, new in lowered.outputs.items()}
    rule = lowered.rule
    storage: dict[sp.Symbol, tuple[str, object]] = {
        s: ("array", s) for s in [*rule.element_inputs, *rule.draws, *rule.vector_values]
    }
    free: list[int] = []
    pinned: set[int] = set()
    count = 0
    copies: list[tuple[sp.Symbol, int]] = []

    def take() -> int:
        nonlocal count
        if free:
            free.sort()
            return free.pop(0)
        count += 1
        return count - 1

    for i, op in enumerate(ops_):
        for a in set(op.args):
            where = storage.get(a) if isinstance(a, sp.Symbol) else None
            if where and where[0] == "scratch" and last_read[a] == i and where[1] not in pinned:
                free.append(where[1])  # type: ignore[arg-type]
        if op.dest in current_of:
            cur = current_of[op.dest]
            if last_read.get(cur, -1) <= i:
                storage[op.dest] = ("array", cur)
            else:
                k = take()
                pinned.add(k)
                storage[op.dest] = ("scratch", k)
                copies.append((cur, k))
        elif op.kind in ops.BOOLEAN or (op.kind == "where" and _masks(op.args[1:], storage)):
            storage[op.dest] = ("bool", op.dest)
        else:
            storage[op.dest] = ("scratch", take())
    return Allocation(storage, count, copies)
