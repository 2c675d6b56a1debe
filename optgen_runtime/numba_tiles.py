"""Tiles of the compiled row/column rules (Adafactor, CAME, SM3: ``generated/numba``).

Such a rule sees every weight as (batch, rows, cols), as its NumPy module does
(``numpy_tiles.matrix_views``). Its element sweeps (per-row and per-column sums, a whole
tensor's sums) and its update are compiled loops over tiles of that view, one tile per
iteration of a parallel loop (its sweeps over the row and column vectors loop over each
matrix's vector; their sums are ``Tiling.combine_vectors``'s). A tile is a run of whole
matrices where one is small, else a block of whole rows (a matrix at least as tall as it is
wide) or of whole columns (a wider one) of one matrix, at most ``SPLIT`` blocks per matrix:
so a tile's partial of a
per-column reduction (from a block of rows) or of a per-row one (from a block of columns) has
at most ``SPLIT`` times the vector's values, never the weight's count (a 10 M-element weight:
a few MB of partials, not 80). The tiles depend on the shape alone, never on the thread count,
and their partials are combined in tile order: the same sums on every run and machine. Each
tile's partial sums in float64 in a fixed order (the NumPy module sums a tile's rows pairwise):
equal to NumPy's to float64 rounding. A sum along a row folds each block of the row's values
into lanes (``fold_sum``); a whole tensor's adds element i of every block of the tile into
place i of a block-wide row, in the loop that computes them (it vectorises), and folds that row
into lanes once, at the tile's end.
"""

from __future__ import annotations

import math
import threading
from functools import lru_cache
from typing import Any

import numpy as np

from optgen_runtime.numba_bits import compute_type
from optgen_runtime.numba_jit import compiled
from optgen_runtime.numpy_support import IDENTITY, combine
from optgen_runtime.numpy_tiles import domain_shape

TILE = 65536  # elements per tile, at least (the NumPy module's CHUNK)
SPLIT = 64  # blocks per matrix, at most: enough parallel work for 64 threads

# A reduction's kind as the compiled combination takes it.
KIND_CODE = {"sum": 0, "max": 1, "min": 2}

# Each thread's partials buffer (Tiling.partials), grown to the largest sweep it has run, up to
# KEEP float64 values (32 MiB); a larger one (a long 1-D weight's per-column partials, one per
# element) is made for its sweep alone, not kept, and its whole vectors go on to the next sweeps
# in float64 (Tiling.combine).
_SCRATCH = threading.local()
KEEP = 1 << 22


def _blocks(n: int, pieces: int) -> list[tuple[int, int]]:
    """``[0, n)`` in ``pieces`` near-equal consecutive blocks."""
    return [(n * k // pieces, n * (k + 1) // pieces) for k in range(pieces)]


@lru_cache(maxsize=256)
def _tiles(dims: tuple[int, int, int]) -> np.ndarray:
    batch, rows, cols = dims
    if not (batch and rows and cols):
        return np.zeros((0, 6), dtype=np.int64)
    size = rows * cols
    if size <= TILE:  # runs of whole matrices
        per = TILE // size
        found = [(b, min(batch, b + per), 0, rows, 0, cols) for b in range(0, batch, per)]
    else:
        pieces = min(SPLIT, -(-size // TILE))
        found = []
        for b in range(batch):
            if cols <= rows:  # blocks of whole rows
                found += [(b, b + 1, r0, r1, 0, cols) for r0, r1 in _blocks(rows, pieces)]
            else:  # blocks of whole columns
                found += [(b, b + 1, 0, rows, c0, c1) for c0, c1 in _blocks(cols, pieces)]
    table = np.array(found, dtype=np.int64).reshape(-1, 6)
    table.flags.writeable = False
    return table


class Tiling:
    """The tiles of one weight's (batch, rows, cols) view and where each tile's partials go.

    ``table``: a row (b0, b1, r0, r1, c0, c1) per tile; ``offsets``: per tile, where its
    partial of a per-row reduction (one value per row of the tile) and of a per-column one (one
    per column) start in a sweep's ``parts`` (its row per reduction along an axis)."""

    @staticmethod
    @lru_cache(maxsize=1024)
    def of(dims: tuple[int, int, int]) -> Tiling:
        """The tiling of ``dims``, made once (its arrays read-only)."""
        return Tiling(dims)

    def __init__(self, dims: tuple[int, int, int]) -> None:
        self.dims = dims
        self.table = _tiles(dims)
        t = self.table
        rows = (t[:, 1] - t[:, 0]) * (t[:, 3] - t[:, 2])
        cols = (t[:, 1] - t[:, 0]) * (t[:, 5] - t[:, 4])
        self.offsets = np.zeros((len(t), 2), dtype=np.int64)
        self.offsets[1:, 0] = np.cumsum(rows)[:-1]
        self.offsets[1:, 1] = np.cumsum(cols)[:-1]
        self.offsets.flags.writeable = False
        self.width = int(max(rows.sum(initial=0), cols.sum(initial=0)))
        # one tile: the loops over tiles run on the caller's thread (their ``_serial`` twins: a
        # parallel region costs microseconds to enter, a small weight's whole sweep); likewise a
        # sweep over vectors (of a domain, numpy_tiles.domain_shape) of at most TILE values
        self.serial = len(t) < 2
        batch, rows, cols = dims
        self.serial_along = {
            "b": batch <= TILE,
            "br": batch * rows <= TILE,
            "bc": batch * cols <= TILE,
        }
        # one tile and short vectors: the sweeps run in chains (codegen/targets/numba_rows.py,
        # chains: each run of sweeps one compiled call, not a call and a combination each)
        self.chained = len(t) == 1 and all(self.serial_along.values())
        # per reduced axis: does every tile span it (each value of the vector gets one partial,
        # already laid out as the vector, (batch, rows) or (batch, cols), in order)?
        self.whole_along = {
            "c": len(t) > 0 and bool(np.all((t[:, 4] == 0) & (t[:, 5] == dims[2]))),
            "r": len(t) > 0 and bool(np.all((t[:, 2] == 0) & (t[:, 3] == dims[1]))),
        }

    def partials(self, whole: int, along: int) -> tuple[np.ndarray, np.ndarray]:
        """A sweep's partials: ``whole`` per tile (whole-tensor reductions) and ``along`` rows of
        per-tile vectors (reductions along an axis); each tile writes its own (no fill). The
        calling thread's buffers, reused up to KEEP values: a sweep's partials are combined
        (``combine``, which keeps no view of them) before the thread runs another sweep, and
        fresh pages cost more than the sweep's own work."""
        kept = getattr(_SCRATCH, "buffer", None)
        size = len(self.table) * whole + along * self.width
        if kept is None or kept.size < size:
            kept = np.empty(size, dtype=np.float64)
            if size <= KEEP:
                _SCRATCH.buffer = kept
        cut = len(self.table) * whole
        return (
            kept[:cut].reshape(len(self.table), whole),
            kept[cut:size].reshape(along, self.width),
        )

    def combine(
        self,
        kinds: dict[str, str],
        axes: dict[str, str | None],
        names: list[str],
        whole: np.ndarray,
        parts: np.ndarray,
        sums: dict[str, float],
        vectors: dict[str, np.ndarray],
        dtype: type,
    ) -> None:
        """A sweep's partials combined in tile order (``names``: its whole-tensor reductions,
        then those along an axis, each in the order of the sweep's ``whole`` and ``parts``):
        into ``sums`` (Python floats, as ``numpy_support.combine``) and ``vectors`` (arrays of
        the reduced domain, accumulated in float64, then cast to ``dtype``; a partial that is
        the whole vector, from a buffer not kept, handed on in float64)."""
        at = {"whole": 0, "along": 0}
        for name in names:
            kind, axis = kinds[name], axes[name]
            if axis is None:
                k = at["whole"]
                sums[name] = combine(kinds, [name], [(x,) for x in whole[:, k].tolist()])[name]
                at["whole"] += 1
                continue
            shape = domain_shape(self.dims, "br" if axis == "c" else "bc")
            part = parts[at["along"]]
            at["along"] += 1
            if self.whole_along[axis]:  # the identity combined with one partial: the partial
                whole_part = part[: math.prod(shape)].reshape(shape)
                # uncast where it is the sweep's own buffer (over KEEP): the sweeps load such a
                # vector cast to the weight's dtype (codegen/targets/numba_rows.py), the bits of
                # astype, without a fresh array of the vector's size each step; a copy out of
                # the kept scratch, which the next sweep overwrites
                kept = whole_part.base is getattr(_SCRATCH, "buffer", None)
                vectors[name] = whole_part.astype(dtype) if kept else whole_part
                continue
            acc = np.full(shape, IDENTITY[kind], dtype=np.float64)
            _fold(
                self.table,
                self.offsets,
                part,
                acc.reshape(shape[0], shape[1] * shape[2]),
                KIND_CODE[kind],
                axis == "c",
            )
            vectors[name] = acc.astype(dtype)

    def combine_vectors(
        self,
        kinds: dict[str, str],
        axes: dict[str, str | None],
        names: list[str],
        found: np.ndarray,
        sums: dict[str, float],
        vectors: dict[str, np.ndarray],
        dtype: type,
    ) -> None:
        """A vector sweep's reductions (column k of ``found``: each matrix's, float64): along
        the vector, one value per matrix into ``vectors`` (cast to ``dtype``); over the whole
        tensor, the matrices' combined in order into ``sums`` (``numpy_support.combine``)."""
        for k, name in enumerate(names):
            if axes[name] is None:
                column = [(x,) for x in found[:, k].tolist()]
                sums[name] = combine(kinds, [name], column)[name]
            else:
                shape = domain_shape(self.dims, "b")
                vectors[name] = found[:, k].astype(dtype).reshape(shape)


@compiled(inline="always")
def _pick_max(a: float, b: float) -> float:
    """NaN-propagating maximum, the earlier value on a tie (``numpy_support.COMBINE``)."""
    return a if (a != a or a >= b) else b


@compiled(inline="always")
def _pick_min(a: float, b: float) -> float:
    """NaN-propagating minimum, the earlier value on a tie."""
    return a if (a != a or a <= b) else b


@compiled()
def _fold(
    tiles: np.ndarray, offsets: np.ndarray, part: np.ndarray, acc: Any, kind: int, rows: bool
) -> None:
    """Each tile's partial (of a per-row reduction where ``rows``, else a per-column one) into
    ``acc`` (batch, vector), tile after tile: sums added, max and min NaN-propagating, the
    earlier value on a tie (``numpy_support.COMBINE``)."""
    for k in range(tiles.shape[0]):
        m0, m1 = tiles[k, 0], tiles[k, 1]
        lo, hi = (tiles[k, 2], tiles[k, 3]) if rows else (tiles[k, 4], tiles[k, 5])
        at = offsets[k, 0] if rows else offsets[k, 1]
        for m in range(m0, m1):
            for x in range(lo, hi):
                a = acc[m, x]
                b = part[at + (m - m0) * (hi - lo) + (x - lo)]
                if kind == 0:
                    acc[m, x] = a + b
                else:
                    acc[m, x] = _pick_max(a, b) if kind == 1 else _pick_min(a, b)


# A tile sweep's sums and extrema along a row piece (and a whole tensor's block-wide row, once
# per tile): its values computed a block at a time (a loop that vectorises), each block then
# folded into LANES running partials, element p of the row piece into lane p % LANES
# (independent chains: one vector operation per LANES elements, no reassociation), the lanes
# combined pairwise at the end. A fixed order: the same bits on every run and machine.
LANES = 8


@compiled()
def fold_sum(lanes: np.ndarray, values: np.ndarray, n: int) -> None:
    """``values[:n]`` added into ``lanes`` (value i into lane i % LANES)."""
    full = n - n % LANES
    for i in range(0, full, LANES):
        for lane in range(LANES):
            lanes[lane] += values[i + lane]
    for i in range(full, n):
        lanes[i - full] += values[i]


@compiled()
def fold_max(lanes: np.ndarray, values: np.ndarray, n: int) -> None:
    """``fold_sum`` for a maximum: NaN-propagating, the earlier value on a tie."""
    full = n - n % LANES
    for i in range(0, full, LANES):
        for lane in range(LANES):
            lanes[lane] = _pick_max(lanes[lane], values[i + lane])
    for i in range(full, n):
        lanes[i - full] = _pick_max(lanes[i - full], values[i])


@compiled()
def fold_min(lanes: np.ndarray, values: np.ndarray, n: int) -> None:
    """``fold_sum`` for a minimum: NaN-propagating, the earlier value on a tie."""
    full = n - n % LANES
    for i in range(0, full, LANES):
        for lane in range(LANES):
            lanes[lane] = _pick_min(lanes[lane], values[i + lane])
    for i in range(full, n):
        lanes[i - full] = _pick_min(lanes[i - full], values[i])


@compiled()
def lanes_sum(lanes: np.ndarray) -> float:
    """The lanes' total, pairwise: ((0 + 1) + (2 + 3)) + ((4 + 5) + (6 + 7))."""
    return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + (
        (lanes[4] + lanes[5]) + (lanes[6] + lanes[7])
    )


@compiled()
def lanes_max(lanes: np.ndarray) -> float:
    """The lanes' maximum, pairwise as ``lanes_sum`` (NaN-propagating)."""
    low = _pick_max(_pick_max(lanes[0], lanes[1]), _pick_max(lanes[2], lanes[3]))
    high = _pick_max(_pick_max(lanes[4], lanes[5]), _pick_max(lanes[6], lanes[7]))
    return _pick_max(low, high)


@compiled()
def lanes_min(lanes: np.ndarray) -> float:
    """The lanes' minimum, pairwise as ``lanes_sum`` (NaN-propagating)."""
    low = _pick_min(_pick_min(lanes[0], lanes[1]), _pick_min(lanes[2], lanes[3]))
    high = _pick_min(_pick_min(lanes[4], lanes[5]), _pick_min(lanes[6], lanes[7]))
    return _pick_min(low, high)


# A chain's combinations (codegen/targets/numba_rows.py chains): a weight of one tile, so each sum's
# partials are one tile's, combined as Tiling.combine (numpy_support.combine) combines them.


@compiled()
def first_sum(x: float) -> float:
    """A one-tile sum: the identity plus the tile's partial (-0.0 becomes 0.0, as in combine)."""
    return 0.0 + x


@compiled()
def first_max(x: float) -> float:
    """A one-tile maximum: the identity's combined with the tile's partial."""
    return _pick_max(-math.inf, x)


@compiled()
def first_min(x: float) -> float:
    """A one-tile minimum: the identity's combined with the tile's partial."""
    return _pick_min(math.inf, x)


@compiled()
def matrices_sum(column: np.ndarray) -> float:
    """A whole-tensor sum from each matrix's (``Tiling.combine_vectors``): in matrix order."""
    acc = 0.0
    for m in range(column.shape[0]):
        acc = acc + column[m]
    return acc


@compiled()
def matrices_max(column: np.ndarray) -> float:
    """A whole-tensor maximum from each matrix's, in matrix order, NaN kept."""
    acc = -math.inf
    for m in range(column.shape[0]):
        acc = _pick_max(acc, column[m])
    return acc


@compiled()
def matrices_min(column: np.ndarray) -> float:
    """A whole-tensor minimum from each matrix's, in matrix order, NaN kept."""
    acc = math.inf
    for m in range(column.shape[0]):
        acc = _pick_min(acc, column[m])
    return acc


@compiled()
def cast_into(vector: np.ndarray, partial: np.ndarray) -> None:
    """A vector (3-D, C order) from its one-tile partial (float64, its values in that order),
    each value cast to the vector's dtype: the bits of ``astype``."""
    flat = vector.reshape(vector.size)
    cast = compute_type(vector)
    for i in range(flat.shape[0]):
        flat[i] = cast(partial[i])
