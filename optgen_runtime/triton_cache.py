"""The chunk table of a multi-tensor step kept between steps (``prepared_table``): rebuilt only
when the buffers change, but for the gradients' addresses (taken with no pass over the buffers
where the caller vouches for them: :mod:`optgen_runtime.triton_vouched`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from itertools import chain
from operator import attrgetter, eq, itemgetter, or_
from typing import Any

import numpy as np
import torch

from optgen_runtime.common import (
    check_distinct_states,
    host_state_values,
)
from optgen_runtime.triton_checks import check_copies, check_tensors_each
from optgen_runtime.triton_chunks import ChunkTable
from optgen_runtime.triton_compat import interpreting
from optgen_runtime.triton_vouched import Vouched  # the generated modules import it from here

CACHE = 8  # tables kept per rule by ``prepared_table`` (several optimizers, param groups)
TABLES: dict[str, list[_Prepared]] = {}  # per rule, most recent first


def prepared_table(
    rule: str,
    weights: Sequence[Any],
    grads: Sequence[Any],
    states: Sequence[Any],
    names: Sequence[str],
    host_names: Sequence[str],
    inputs: Sequence[dict[str, Any]] | None,
    block: int,
    ints: Sequence[Sequence[int]] | None = None,
    prechecked: bool | Vouched = False,
    copies: Sequence[Any] | None = None,
) -> ChunkTable:
    """The chunk table of a multi-tensor step, every buffer checked (``check_tensors_each``,
    :func:`check_across`) before it is returned; the table of an earlier call when the
    buffers are those it was built from (:class:`_Prepared`: one pass over the buffers), with
    only the pointer rows of the read-only buffers (gradients, inputs) rewritten when only
    those moved, as ``zero_grad()`` and a backward pass make them every step.

    ``prechecked``: the caller has checked every buffer as ``check_tensors`` and
    :func:`check_across` would (the torch classes check each parameter, its state and every
    buffer of the step against every other before any write); the pass then reads only what
    the table is built from (addresses; the weights' devices; the sizes and dtypes of the
    weights, gradients and inputs: a gradient of another size is never read out of
    bounds, but one of another shape and the same size is not refused) and skips the
    overlap check of moved gradients. A :class:`Vouched` ``prechecked`` also vouches that
    nothing but the gradients' addresses changed since the call that filled it in: its
    table is taken without a pass over the buffers.

    ``copies``: as the class says, checked (:func:`check_copies`) whenever a table is built.
    """
    vouched = prechecked if isinstance(prechecked, Vouched) else None
    if vouched is not None and inputs is None:
        table = vouched.table(rule, weights, grads, states, names, block, ints, copies)
        if table is not None:
            return table
    prechecked = bool(prechecked)
    # before the cache: empty tensors' buffers all sit at address 0, so a table built for
    # two state dicts would otherwise be reused for one dict given twice
    check_distinct_states(rule, states)
    entries = TABLES.setdefault(rule, [])
    found = _Prepared.signature(
        weights, grads, states, names, host_names, inputs, prechecked, copies
    )
    if found is not None:
        for k, entry in enumerate(entries):
            if entry.table.block == block and entry.reuse(found):
                entries.insert(0, entries.pop(k))  # most recent first
                table = entry.table
                table._retarget(found, ints)
                table.launches = 0
                found.release()
                if vouched is not None:
                    vouched.entry, vouched.rule = entry, rule
                return table
    for s in states:  # the errors of a step without a cache, in the same order
        host_state_values(rule, s, tuple(host_names))
    tables = check_tensors_each(rule, weights, grads, states, names, host_names, inputs)
    check_copies(rule, weights, copies)
    table = ChunkTable(tables, block, ints, copies)  # check_across, before any launch
    if found is not None:
        entries.insert(0, _Prepared(found, table))
        del entries[CACHE:]
        found.release()
        if vouched is not None:
            vouched.entry, vouched.rule = entries[0], rule
    table.launches = 0
    return table


_PLAIN = {torch.Tensor, torch.nn.Parameter}
_POINTER = torch.Tensor.data_ptr
_CONTIGUOUS = torch.Tensor.is_contiguous
_IS_NEG = torch.Tensor.is_neg
_NUMEL = torch.Tensor.numel
_SHAPE, _DTYPE, _DEVICE = attrgetter("shape"), attrgetter("dtype"), attrgetter("device")


@dataclass
class _Signature:
    """One pass over the buffers of a multi-tensor step (``_Prepared.signature``): ``columns``
    [weights, grads, *inputs, *states] (a list of ``n`` tensors each), ``pointers`` their
    addresses column after column, ``looks`` everything else the checks and the table depend
    on (shapes, dtypes, devices; in a prechecked call only what the table depends on) as
    (getter, tensors) pairs, read when compared (:meth:`same_looks`) or kept (:meth:`kept`):
    a step that keeps no list of shapes makes little garbage for the collector to scan."""

    n: int
    reads: int  # read-only columns after the weights: the gradients and the inputs
    prechecked: bool
    interpreting: bool
    columns: list[list[torch.Tensor]]
    pointers: list[int]
    looks: tuple[tuple[Any, list[torch.Tensor]], ...]
    kept_looks: tuple[list[Any], ...] = ()
    # ``copies`` given: the last column holds each tensor's copy, or its weight where it has
    # none (a stand-in: the pointers then say which tensors have one)
    copied: bool = False
    copies: list[Any] | None = None

    def same_looks(self, old: tuple[list[Any], ...]) -> bool:
        """Whether every look equals the one ``old`` (a :meth:`kept` of the same layout) holds."""
        return all(
            all(map(eq, map(get, xs), seen))
            for (get, xs), seen in zip(self.looks, old, strict=True)
        )

    def release(self) -> None:
        """Keep the looks, drop the tensors: a cached table holds no tensor of a step alive."""
        self.kept()
        self.columns, self.looks, self.copies = [], (), None

    def kept(self) -> tuple[list[Any], ...]:
        """The looks read into lists, to be compared with a later step's."""
        if not self.kept_looks:
            self.kept_looks = tuple(list(map(get, xs)) for get, xs in self.looks)
        return self.kept_looks

    def __getitem__(self, j: int) -> list[torch.Tensor]:
        """Tensor j's buffers (``ChunkTable._retarget`` types a group's pointers by them)."""
        columns = self.columns[:-1] if self.copied else self.columns
        return [column[j] for column in columns]

    def copy(self, j: int) -> Any:
        """Tensor j's copy (None: it has none)."""
        return self.copies[j] if self.copies is not None else None


_FEW = 64  # gradients whose addresses _grads_moved takes as a list, not an array


def spans_overlap(low: np.ndarray, high: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> bool:
    """Whether a nonempty span ``[starts[i], ends[i])`` overlaps one of the disjoint spans
    ``[low[k], high[k])`` sorted by start (the buffers a step writes, which passed the checks):
    vectorised, as the last written span starting before a span ends is its only candidate
    (``np.searchsorted``). Byte addresses of one device; for moved gradients against the
    weights and states (``prepared_table``; the torch classes may do the same)."""
    if not len(low):
        return False
    last = low.searchsorted(ends) - 1  # -1 (wrapping in ``take``) where none: masked out
    hit = high.take(last) > starts
    hit &= ends > low[0]
    hit &= ends > starts
    return bool(hit.any())


class _Prepared:
    """A chunk table and the buffers it was built from, all checked (``prepared_table``).

    A later step reuses it when every buffer is a plain contiguous tensor with the same shape,
    dtype and device as then (what every check of ``check_tensors`` depends on), the weights
    and states at the same addresses; read-only buffers (gradients, inputs) may have moved:
    then none may now overlap a buffer the step writes (a vectorised interval test over the
    written buffers, sorted by address; any overlap found goes to the full checks, which name
    it), and their pointer rows are rewritten in the cached table, which is uploaded again.
    A moved buffer that changes a tensor's alignment class (``vectorisable``) rebuilds the
    table."""

    def __init__(self, found: _Signature, table: ChunkTable) -> None:
        self.found = found
        self.table = table
        n, reads = found.n, found.reads
        flat = list(chain.from_iterable(found.columns))
        nbytes = np.array([x.numel() * x.element_size() for x in flat], dtype=np.int64)
        starts = np.array(found.pointers, dtype=np.int64)
        devices = {d: k for k, d in enumerate(dict.fromkeys(x.device for x in found.columns[0]))}
        code = np.array([devices[w.device] for w in found.columns[0]], dtype=np.int64)
        written = np.ones(len(flat), dtype=bool)
        written[n : n * (1 + reads)] = False
        codes = np.tile(code, len(found.columns))
        live = written & (nbytes > 0)
        # the written buffers of each device, sorted by address (disjoint: they passed)
        self.written: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for k in devices.values():
            mine = live & (codes == k)
            order = np.argsort(starts[mine], kind="stable")
            self.written[k] = (starts[mine][order], (starts + nbytes)[mine][order])
        self.read_bytes = nbytes[n : n * (1 + reads)]
        self.read_codes = codes[n : n * (1 + reads)]
        # each tensor's alignment class but for its read buffers, and whether it is in a group
        sizes = nbytes[:n] // np.array([w.element_size() for w in found.columns[0]])
        aligned = sizes % ChunkTable.VECTOR == 0
        for k in [0, *range(1 + reads, len(found.columns))]:  # the written columns
            aligned &= starts[k * n : (k + 1) * n] % ChunkTable.VECTOR == 0
        self.base_aligned = aligned
        self.nonempty = sizes > 0
        self.aligned = aligned & self._reads_aligned(starts[n : n * (1 + reads)])
        # the alignment classes stay while every read buffer is aligned (``_grads_moved``)
        self.classes_kept = np.array_equal(aligned[self.nonempty], self.aligned[self.nonempty])
        for group in table.groups:
            group.whole = group.members == list(range(n))

    def _reads_aligned(self, reads: np.ndarray) -> np.ndarray:
        return np.all(reads.reshape(-1, self.found.n) % ChunkTable.VECTOR == 0, axis=0)

    @staticmethod
    def signature(
        weights: Sequence[Any],
        grads: Sequence[Any],
        states: Sequence[Any],
        names: Sequence[str],
        host_names: Sequence[str],
        inputs: Sequence[dict[str, Any]] | None,
        prechecked: bool,
        copies: Sequence[Any] | None = None,
    ) -> _Signature | None:
        """The step's buffers in one pass (C-level maps, no Python loop per tensor), or None
        when they cannot be cached (a state that is not a plain dict with exactly the rule's
        entries, a tensor subclass such as a DTensor, a strided or sparse buffer): checked in
        full every call."""
        n = len(weights)
        try:
            entries = {len(names) + len(host_names)}  # exactly the rule's (each read below)
            plain = not set(map(type, states)) - {dict} and not set(map(len, states)) - entries
            if not prechecked and not plain:
                return None
            columns = [list(weights), list(grads)]
            if inputs:
                columns += [list(map(itemgetter(k), inputs)) for k in inputs[0]]
            reads = len(columns) - 1
            columns += [list(map(itemgetter(k), states)) for k in names]
            if copies is not None:  # a written column, the weight standing in for a None
                if not isinstance(copies, list | tuple) or len(copies) != n:
                    return None  # refused by the full checks
                pairs = zip(weights, copies, strict=True)
                columns.append([w if c is None else c for w, c in pairs])
            if n and not prechecked and host_names:
                list(map(itemgetter(*host_names), states))  # every host state there
            flat = list(chain.from_iterable(columns))
            if set(map(type, flat)) - _PLAIN:
                return None
            pointers = list(map(_POINTER, flat))
            if prechecked:
                read = flat[: n * (1 + reads)]  # the weights, the gradients, the inputs
                looks = ((_NUMEL, read), (_DEVICE, columns[0]), (_DTYPE, read))
                if copies is not None:  # the copies' dtypes type their groups
                    looks += ((_DTYPE, columns[-1]),)
            else:
                if not all(map(_CONTIGUOUS, flat)) or any(map(_IS_NEG, flat)):
                    return None  # (refused by the full checks, naming it)
                looks = ((_SHAPE, flat), (_DTYPE, flat), (_DEVICE, flat))
        except (KeyError, IndexError, TypeError, RuntimeError, ValueError):
            return None
        found = _Signature(n, reads, prechecked, interpreting(), columns, pointers, looks)
        if copies is not None:
            found.copied, found.copies = True, list(copies)
        return found

    def reuse(self, new: _Signature) -> bool:
        """Whether the cached table serves ``new``'s step (its read-only pointer rows rewritten
        where they moved); False: rebuild, with every check."""
        old = self.found
        n = old.n
        if (new.n, new.reads, new.prechecked, new.interpreting, new.copied) != (
            n,
            old.reads,
            old.prechecked,
            old.interpreting,
            old.copied,
        ) or len(new.pointers) != len(old.pointers):
            return False
        split = n * (1 + old.reads)
        if new.pointers[:n] != old.pointers[:n] or new.pointers[split:] != old.pointers[split:]:
            return False  # another list of weights, or a weight or state moved
        if not new.same_looks(old.kept_looks):
            return False
        if new.pointers[n:split] != old.pointers[n:split] and not self._moved(new):
            return False
        new.kept_looks = old.kept_looks
        self.found = new
        return True

    def _grads_moved(self, pointers: list[int]) -> bool:
        """``_moved`` of a vouched call (``Vouched.table``: the gradients alone moved, the
        caller tested them for overlaps): True when the table is rewritten for them; in one
        NumPy pass where every gradient is aligned and the alignment classes stay."""
        found = self.found
        few = len(pointers) <= _FEW
        starts = pointers if few else np.array(pointers, dtype=np.int64)
        either = reduce(or_, starts, 0) if few else int(np.bitwise_or.reduce(starts))
        if not self.classes_kept or either % ChunkTable.VECTOR:
            moved = [*found.pointers[: found.n], *pointers, *found.pointers[2 * found.n :]]
            return self._moved(_Signature(found.n, 1, True, found.interpreting, [], moved, ()))
        for group in self.table.groups:
            m = len(group.members)  # row 1: the gradients' pointers
            if group.whole:
                group.rewrite(m, 2 * m, starts)
            else:
                group.rewrite(m, 2 * m, np.asarray(starts, dtype=np.int64)[group.index])
        return True

    def _moved(self, new: _Signature) -> bool:
        """The read-only buffers moved: True when the table is rewritten for them, False when
        the step must be checked in full (an overlap with a written buffer, to be named) or the
        table rebuilt (a tensor's alignment class changed)."""
        n, split = new.n, new.n * (1 + new.reads)
        starts = np.array(new.pointers[n:split], dtype=np.int64)
        aligned = self.base_aligned & self._reads_aligned(starts)
        if not np.array_equal(aligned[self.nonempty], self.aligned[self.nonempty]):
            return False
        if not new.prechecked:
            ends = starts + self.read_bytes
            for code, (low, high) in self.written.items():
                mine = self.read_codes == code
                if spans_overlap(low, high, starts[mine], ends[mine]):
                    return False
        columns = starts.reshape(new.reads, n)
        for group in self.table.groups:
            m = len(group.members)  # rows 1 to reads: the read buffers' pointers
            group.rewrite(m, (1 + new.reads) * m, columns[:, group.index].ravel())
        return True
