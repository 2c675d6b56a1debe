"""Input checks (:mod:`optgen_runtime.checks`) and chunked execution for the generated NumPy
reference modules."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from typing import Any, TypeVar

import numpy as np

from optgen_runtime.checks import (
    check_contiguous,
    check_disjoint,
    check_dtype,
    check_kind,
    check_overlaps,
    check_shape,
    check_state_keys,
    check_state_shape,
)
from optgen_runtime.common import check_distinct_states, matrix_dims
from optgen_runtime.hyperparams import check_inputs_given
from optgen_runtime.philox import randn
from optgen_runtime.sharding import across_shards, shards_combined
from optgen_runtime.writes import advance, finish_steps

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# ndarray subclasses that index, reshape and take ufunc ``out=`` as ndarray does. Others
# (np.matrix: always 2-D, ``*`` is a matrix product; masked arrays; recarrays, chararrays, user
# subclasses) would be updated with other semantics, part-way: refused.
PLAIN_ARRAYS = (np.ndarray, np.memmap)


def check_array(rule: str, label: str, x: Any) -> None:
    """``x`` is a numpy.ndarray (or a np.memmap), not a subclass with its own semantics."""
    check_kind(rule, label, x, np.ndarray, "numpy.ndarray")
    if type(x) not in PLAIN_ARRAYS:
        kind = f"{type(x).__module__}.{type(x).__qualname__}"
        raise TypeError(
            f"{rule}: {label} must be a plain numpy.ndarray, got a {kind} (an ndarray subclass "
            "with its own semantics; np.asarray gives the plain array)"
        )


def check_weight(rule: str, weight: Any) -> None:
    check_array(rule, "weight", weight)
    check_dtype(rule, "weight", weight, DTYPES, "float32 or float64")


def normal_chunk(
    key: int, start: int, stop: int, count: int, index: int, dtype: np.dtype
) -> np.ndarray:
    """Draw ``index`` of ``count`` per element for elements [start, stop): Philox normals."""
    counters = np.arange(start, stop, dtype=np.int64) * count + index
    return randn(key, counters).astype(dtype, copy=False)


def flat_views(
    rule: str,
    weight: Any,
    grad: Any,
    state: Any,
    names: tuple[str, ...],
    host_names: tuple[str, ...] = (),
    inputs: dict[str, Any] | None = None,
) -> list[np.ndarray]:
    """Check every array, then return 1-D views of weight, grad, the inputs (the rule's
    per-element inputs besides the gradient, read-only like it) and the states, in that order.

    Everything is checked before anything is written: dtype (all equal, float32 or float64),
    shape, C-contiguity, writability, and that no buffer the step writes (weight, states) shares
    memory with another (the gradient and the inputs, only read, may share memory).
    """
    given = inputs or {}
    if _all_fine(weight, grad, state, names, host_names, given):
        return [weight.reshape(-1), grad.reshape(-1)] + [
            a.reshape(-1) for a in chain(given.values(), map(state.__getitem__, names))
        ]
    check_weight(rule, weight)
    check_inputs_given(rule, given)
    check_state_keys(rule, state, names + host_names)
    arrays = [("grad", grad)] + list(given.items())
    arrays += [(f"state[{n!r}]", state[n]) for n in names]
    for label, a in arrays:
        check_array(rule, label, a)
        check_dtype(rule, label, a, (weight.dtype,), f"the weight's ({weight.dtype})")
        check_shape(rule, label, a, weight)
    everything = [("weight", weight)] + arrays
    for label, a in everything:
        check_contiguous(rule, label, a)
    for label, a in [everything[0]] + everything[2 + len(given) :]:
        if not a.flags.writeable:
            raise ValueError(f"{rule}: {label} is read-only but is updated in place")
    read = 1 + len(given)
    check_overlaps(
        rule, [(label, a, k == 0 or k > read) for k, (label, a) in enumerate(everything)]
    )
    return [a.reshape(-1) for _, a in everything]


def _all_fine(
    weight: Any,
    grad: Any,
    state: Any,
    names: tuple[str, ...],
    host_names: tuple[str, ...],
    given: dict[str, Any],
) -> bool:
    """True when ``flat_views``'s checks would all pass, found in one quick pass that names no
    culprit: plain C-contiguous arrays of one float dtype and shape, the written ones writable,
    the state dict's entries exactly ``names`` and ``host_names``, and no written buffer sharing
    memory with another (``np.may_share_memory``: the same extent test as ``check_overlaps``
    for contiguous arrays, empty ones sharing nothing). False: the full checks run, and raise
    naming the culprit (or pass: this pass is stricter, a np.memmap among them, say)."""
    if type(weight) is not np.ndarray or weight.dtype not in DTYPES or type(state) is not dict:
        return False
    if len(state) != len(names) + len(host_names) or not all(map(state.__contains__, names)):
        return False
    if not all(map(state.__contains__, host_names)):
        return False
    read = [grad, *given.values()]
    written = [weight, *map(state.__getitem__, names)]
    dtype, shape = weight.dtype, weight.shape
    for a in chain(read, written):
        if type(a) is not np.ndarray or a.dtype != dtype or a.shape != shape:
            return False
        if not a.flags.c_contiguous:
            return False
    if not all(a.flags.writeable for a in written):
        return False
    for k, a in enumerate(written):
        for b in chain(read, written[k + 1 :]):
            if np.may_share_memory(a, b):
                return False
    return True


T = TypeVar("T")

# NumPy's ufuncs release the GIL: chunks run on this many threads (OPTGEN_NUM_THREADS overrides).
THREADS = max(1, int(os.environ.get("OPTGEN_NUM_THREADS", os.cpu_count() or 1)))
_POOL: ThreadPoolExecutor | None = None
_MIN_CHUNKS_PER_THREAD = 4  # below this, threads cost more than they save


def quiet(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` without NumPy's floating-point warnings, on whichever thread calls it: a step
    computes both sides of a select (a division by zero in the branch not taken is normal) and
    returns IEEE results, NaN and inf included, silently, as the Triton kernels and torch do."""

    def call(*args: Any) -> T:
        with np.errstate(all="ignore"):
            return fn(*args)

    return call


def for_chunks(
    n: int, chunk: int, rows: int, dtype: np.dtype, fn: Callable[[int, int, np.ndarray], T]
) -> list[T]:
    """Call ``fn(start, stop, scratch)`` on consecutive chunks of ``[0, n)``; results in order.

    Chunks are split into contiguous runs, one per worker thread, each with its own
    ``rows x chunk`` scratch buffer: memory is bounded by threads x rows x chunk, never by ``n``.
    The chunk boundaries do not depend on the thread count, and results come back in chunk order,
    so a reduction summed over them is the same on every run and every machine.
    """
    global _POOL
    fn = quiet(fn)
    bounds = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    workers = min(THREADS, len(bounds) // _MIN_CHUNKS_PER_THREAD)
    if workers <= 1:
        scratch = np.empty((rows, min(n, chunk)), dtype=dtype)
        return [fn(lo, hi, scratch) for lo, hi in bounds]

    def run(part: list[tuple[int, int]]) -> list[T]:
        scratch = np.empty((rows, chunk), dtype=dtype)
        return [fn(lo, hi, scratch) for lo, hi in part]

    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="optgen")
    size = -(-len(bounds) // workers)
    parts = [bounds[i : i + size] for i in range(0, len(bounds), size)]
    return [r for part in _POOL.map(run, parts) for r in part]


# Each reduction kind's value over no elements, and how two partials combine (max and min
# propagate NaN, as the kernels' do).
IDENTITY = {"sum": 0.0, "max": -math.inf, "min": math.inf}
COMBINE: dict[str, Callable[[float, float], float]] = {
    "sum": lambda a, b: a + b,
    "max": lambda a, b: a if math.isnan(a) or a >= b else b,
    "min": lambda a, b: a if math.isnan(a) or a <= b else b,
}


def combine(
    kinds: dict[str, str], names: list[str], partials: list[tuple[float, ...]]
) -> dict[str, float]:
    """Per-chunk partials (in chunk order) combined per reduction, in chunk order: sums add in
    float64 one chunk after the other, max/min keep a NaN. The same result on every run. A
    sharded tensor's are then combined across its shards (``optgen_runtime.sharding``)."""
    return across_shards(kinds, [_combine(kinds, names, partials)])[0]


def partials_of(partials: np.ndarray, owners: np.ndarray, count: int) -> list[list[tuple]]:
    """Each of ``count`` tensors' rows of per-chunk partials (row i is tensor ``owners[i]``'s),
    in chunk order (as NumPy's ``for_chunks``)."""
    out: list[list[tuple]] = [[] for _ in range(count)]
    for row, j in zip(partials.tolist(), owners.tolist(), strict=True):
        out[j].append(tuple(row))
    return out


# Tensors with more chunks than this combine their partials in a Python loop (as ``combine``);
# the rest step through their k-th chunks together, one NumPy operation per k and reduction.
_SHORT = 16


def combine_rows(
    kinds: dict[str, str], names: list[str], partials: np.ndarray, owners: np.ndarray, count: int
) -> np.ndarray:
    """:func:`combine` of every tensor at once: ``partials`` (float64, a row per chunk, a
    column per name) belong to tensor ``owners[i]`` of ``count``, in chunk order; returns a
    float64 row per tensor (the identity where a tensor has no chunk). The same bits as
    ``combine`` tensor by tensor: each tensor's partials are combined one after the other in
    row order, the k-th of every short tensor by one NumPy operation (IEEE addition; max/min
    keep a NaN and the earlier value on a tie, as ``COMBINE``). A sharded tensor's go through
    ``combine`` one by one (its across-shard combination as before)."""
    width = len(names)
    out = np.empty((count, width), dtype=np.float64)
    out[:] = [IDENTITY[kinds[name]] for name in names]
    if shards_combined():
        for j, each in enumerate(partials_of(partials, owners, count)):
            found = combine(kinds, names, each)
            out[j] = [found[name] for name in names]
        return out
    runs = np.bincount(owners, minlength=count)
    order = np.argsort(owners, kind="stable")  # each tensor's rows together, in chunk order
    owner, rows = owners[order], partials[order]
    rank = np.arange(len(owner)) - (np.cumsum(runs) - runs)[owner]  # k: the tensor's k-th chunk
    short = runs[owner] <= _SHORT
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf, overflow: as Python's floats
        for k in range(min(int(runs.max(initial=0)), _SHORT)):
            at = short & (rank == k)
            who, values = owner[at], rows[at]
            for c, name in enumerate(names):
                a, b = out[who, c], values[:, c]
                kind = kinds[name]
                if kind == "sum":
                    out[who, c] = a + b
                elif kind == "max":
                    out[who, c] = np.where(np.isnan(a) | (a >= b), a, b)
                else:
                    out[who, c] = np.where(np.isnan(a) | (a <= b), a, b)
    for j in np.flatnonzero(runs > _SHORT).tolist():
        found = _combine(kinds, names, list(map(tuple, rows[owner == j].tolist())))
        out[j] = [found[name] for name in names]
    return out


def combine_group(
    kinds: dict[str, str], names: list[str], partials: list[tuple[float, ...]]
) -> dict[str, float]:
    """A group's totals from its tensors' reductions, in tensor order. Each tensor's were
    combined across its shards already (``combine``): no second combination."""
    return _combine(kinds, names, partials)


def _combine(
    kinds: dict[str, str], names: list[str], partials: list[tuple[float, ...]]
) -> dict[str, float]:
    out = {name: IDENTITY[kinds[name]] for name in names}
    for partial in partials:
        for name, value in zip(names, partial, strict=True):
            out[name] = COMBINE[kinds[name]](out[name], value)
    return out


# ---------------------------------------------------------------------------------- matrices
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
    written, as :func:`flat_views` does. ``checked``: the caller checked them all as this would
    (a compiled module's ``step_prechecked``): the views alone."""
    dims = matrix_dims(weight.shape)
    if not checked:
        _check_matrix_arrays(rule, weight, grad, state, names, axes, host_names)
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
    """``fn(tile, scratch)`` for each tile, results in tile order. As :func:`for_chunks`: a
    worker thread takes a contiguous run of tiles and its own ``rows x tile size`` scratch;
    the tiles do not depend on the thread count, so neither do the results."""
    global _POOL
    fn = quiet(fn)
    size = max(((b1 - b0) * (r1 - r0) * (c1 - c0) for b0, b1, r0, r1, c0, c1 in tiles), default=0)
    workers = min(THREADS, len(tiles) // _MIN_CHUNKS_PER_THREAD)

    def run(part: list[tuple[int, int, int, int, int, int]]) -> list[T]:
        scratch = np.empty((rows, size), dtype=dtype)
        return [fn(tile, scratch) for tile in part]

    if workers <= 1:
        return run(tiles)
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="optgen")
    per = -(-len(tiles) // workers)
    runs = [tiles[i : i + per] for i in range(0, len(tiles), per)]
    return [r for part in _POOL.map(run, runs) for r in part]


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


# ---------------------------------------------------------------------------------- groups
def run_group(rule: str, steppers: list[Iterator[Any]], kinds: dict[str, str]) -> None:
    """Drive the steps of the tensors updated together, phase by phase: each yields its group
    reductions after a phase and is sent the group's totals (sums added in tensor order, max
    and min NaN-propagating); each then yields None once checked, and only when all have does
    any write (a refusal of any tensor leaves every tensor as it was)."""
    pending = [advance(rule, steppers, j) for j in range(len(steppers))]
    while pending and pending[0] is not None:
        names = list(pending[0])
        totals = _combine(kinds, names, [tuple(p[n] for n in names) for p in pending])
        pending = [advance(rule, steppers, j, totals) for j in range(len(steppers))]
    finish_steps(rule, steppers)


def check_arrays_across(
    rule: str,
    weights: Sequence[Any],
    grads: Sequence[Any],
    states: Sequence[Any],
    names: tuple[str, ...],
) -> None:
    """No buffer a many-tensor step writes (a weight, a state) shares memory with any buffer of
    any tensor (the same weight twice, a gradient that is another tensor's weight); gradients,
    only read, may share memory with each other. Each tensor's own buffers are checked by its
    step; this needs them to be arrays. One state dict given twice is refused whatever it holds
    (a variant's view without its absent states, an empty dict)."""
    check_distinct_states(rule, states)
    buffers = []
    for j, (w, g, s) in enumerate(zip(weights, grads, states, strict=True)):
        buffers.append((f"tensor {j}'s weight", w, True))
        buffers.append((f"tensor {j}'s grad", g, False))
        if isinstance(s, dict):
            buffers += [(f"tensor {j}'s state[{n!r}]", s[n], True) for n in names if n in s]
    arrays = [(label, x, written) for label, x, written in buffers if isinstance(x, np.ndarray)]
    check_overlaps(rule, arrays)
