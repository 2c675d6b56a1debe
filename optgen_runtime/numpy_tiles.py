"""The matrix view of the generated NumPy modules of row/column rules (Adafactor, CAME, SM3)
and matrix rules: every weight as (batch, rows, cols), its tiles, their scratch, the threads
that sweep them and the combining of their partial reductions (element chunks, checks and the
rest: :mod:`optgen_runtime.numpy_support`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from optgen_runtime.checks import (
    check_contiguous,
    check_disjoint,
    check_dtype,
    check_state_keys,
    check_state_shape,
)
from optgen_runtime.common import matrix_dims
from optgen_runtime.numpy_support import (
    _MIN_CHUNKS_PER_THREAD,
    IDENTITY,
    THREADS,
    check_array,
    check_weight,
    combine,
    pool,
    quiet,
)

T = TypeVar("T")

# A rule with row or column vectors (Adafactor's factors) sees every weight as (batch, rows,
# cols): element buffers as 3-D views, a row vector as (batch, rows, 1), a column vector as
# (batch, 1, cols), one value per matrix as (batch, 1, 1), so NumPy broadcasting lines them up.
AXIS_OF = {"r": 1, "c": 2}


@functools.lru_cache(maxsize=4096)
def domain_shape(dims: tuple[int, int, int], domain: str) -> tuple[int, int, int]:
    """The 3-D shape of a value varying along ``domain`` (a subset of "brc")."""
    return tuple(n if a in domain else 1 for n, a in zip(dims, "brc", strict=True))  # type: ignore[return-value]


def matrix_views(
    rule: str,
    weight: Any,
    grad: Any,
    state: Any,
    names: tuple[str, ...],
    axes: dict[str, int],
    host_names: tuple[str, ...] = (),
    checked: bool = False,
) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Check every array, then return 3-D views of weight, grad and the per-element states (in
    that order) and of the vector states (by name): everything is checked before anything is
    written, as ``numpy_support.flat_views`` does. ``checked``: the caller checked them all as
    this would (a compiled module's ``step_prechecked``): the views alone."""
    if not checked:  # first: a weight that is no array has no shape to view it by
        _check_matrix_arrays(rule, weight, grad, state, names, axes, host_names)
    dims = matrix_dims(weight.shape)
    elements = [weight.reshape(dims), grad.reshape(dims)]
    elements += [state[n].reshape(dims) for n in names if n not in axes]
    vectors = {
        n: state[n].reshape(domain_shape(dims, "br" if axes[n] == -1 else "bc")) for n in axes
    }
    return elements, vectors


def _check_matrix_arrays(
    rule: str,
    weight: Any,
    grad: Any,
    state: Any,
    names: tuple[str, ...],
    axes: dict[str, int],
    host_names: tuple[str, ...],
) -> None:
    check_weight(rule, weight)
    check_state_keys(rule, state, names + host_names)
    arrays = [("grad", grad, None)] + [(f"state[{n!r}]", state[n], axes.get(n)) for n in names]
    for label, a, axis in arrays:
        check_array(rule, label, a)
        check_dtype(rule, label, a, (weight.dtype,), f"the weight's ({weight.dtype})")
        check_state_shape(rule, label, a, weight, axis)
    everything = [("weight", weight)] + [(label, a) for label, a, _ in arrays]
    for label, a in everything:
        check_contiguous(rule, label, a)
    for label, a in [everything[0]] + everything[2:]:
        if not a.flags.writeable:
            raise ValueError(f"{rule}: {label} is read-only but is updated in place")
    check_disjoint(rule, everything)


def matrix_tiles(
    dims: tuple[int, int, int], chunk: int
) -> list[tuple[int, int, int, int, int, int]]:
    """(b0, b1, r0, r1, c0, c1) tiles of at most ``chunk`` elements covering the (batch, rows,
    cols) view in order: runs of whole matrices when one fits (a convolution's many 3 x 3
    kernels: a few tiles, not one per kernel), else whole rows of one matrix when a row fits,
    else pieces of one row."""
    batch, rows, cols = dims
    if not (batch and rows and cols):
        return []
    if rows * cols <= chunk:
        per = chunk // (rows * cols)
        return [(b, min(batch, b + per), 0, rows, 0, cols) for b in range(0, batch, per)]
    tiles = []
    per = max(1, chunk // cols)
    for b in range(batch):
        for r0 in range(0, rows, per):
            r1 = min(rows, r0 + per)
            for c0 in range(0, cols, chunk):
                tiles.append((b, b + 1, r0, r1, c0, min(cols, c0 + chunk)))
    return tiles


def tile_scratch(
    scratch: np.ndarray, tile: tuple[int, int, int, int, int, int], rows: int
) -> list[np.ndarray]:
    """The first ``rows`` rows of a worker's ``scratch`` (``for_tiles``) as arrays of
    ``tile``'s (batch, rows, cols) shape."""
    m0, m1, r0, r1, c0, c1 = tile
    shape = (m1 - m0, r1 - r0, c1 - c0)
    size = shape[0] * shape[1] * shape[2]
    return [scratch[k, :size].reshape(shape) for k in range(rows)]


def for_tiles(
    tiles: list[tuple[int, int, int, int, int, int]],
    rows: int,
    dtype: np.dtype,
    fn: Callable[[tuple[int, int, int, int, int, int], np.ndarray], T],
) -> list[T]:
    """``fn(tile, scratch)`` for each tile, results in tile order. As
    ``numpy_support.for_chunks``: a worker thread takes a contiguous run of tiles and its own
    ``rows x tile size`` scratch; the tiles do not depend on the thread count, so neither do
    the results."""
    fn = quiet(fn)
    size = max(((b1 - b0) * (r1 - r0) * (c1 - c0) for b0, b1, r0, r1, c0, c1 in tiles), default=0)
    workers = min(THREADS, len(tiles) // _MIN_CHUNKS_PER_THREAD)

    def run(part: list[tuple[int, int, int, int, int, int]]) -> list[T]:
        scratch = np.empty((rows, size), dtype=dtype)
        return [fn(tile, scratch) for tile in part]

    if workers <= 1:
        return run(tiles)
    per = -(-len(tiles) // workers)
    runs = [tiles[i : i + per] for i in range(0, len(tiles), per)]
    return [r for part in pool().map(run, runs) for r in part]


def combine_tiles(
    kinds: dict[str, str],
    axes: dict[str, str | None],
    names: list[str],
    dims: tuple[int, int, int],
    domain: str,
    tiles: list[tuple[int, int, int, int, int, int]] | None,
    partials: list[tuple[Any, ...]],
    sums: dict[str, float],
    vectors: dict[str, np.ndarray],
    dtype: type,
) -> None:
    """Combine a sweep's partials in order into ``sums`` (whole-tensor reductions: Python
    floats, sums in float64) and ``vectors`` (along an axis: arrays of the reduced domain,
    accumulated in float64, then cast to ``dtype``). ``tiles`` is None for a vector sweep,
    whose one partial per reduction is already whole."""
    for k, name in enumerate(names):
        kind, axis = kinds[name], axes[name]
        if axis is None:
            sums[name] = combine(kinds, [name], [(p[k],) for p in partials])[name]
            continue
        reduced = domain.replace(axis, "")
        acc = np.full(domain_shape(dims, reduced), IDENTITY[kind], dtype=np.float64)
        if tiles is None:
            acc[...] = partials[0][k]
        for tile, partial in zip(tiles or [], partials, strict=False):
            b0, b1, r0, r1, c0, c1 = tile
            where = acc[b0:b1, r0:r1] if axis == "c" else acc[b0:b1, :, c0:c1]
            if kind == "sum":
                where += partial[k]
            else:
                (np.maximum if kind == "max" else np.minimum)(where, partial[k], out=where)
        vectors[name] = acc.astype(dtype)
