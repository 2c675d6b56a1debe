"""Input checks (:mod:`optgen_runtime.checks`) and chunked execution for the generated NumPy
reference modules."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from typing import Any, TypeVar

import numpy as np

from optgen_runtime.checks import (
    check_contiguous,
    check_dtype,
    check_kind,
    check_overlaps,
    check_shape,
    check_state_keys,
)
from optgen_runtime.common import check_distinct_states
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
    fn = quiet(fn)
    bounds = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    workers = min(THREADS, len(bounds) // _MIN_CHUNKS_PER_THREAD)
    if workers <= 1:
        scratch = np.empty((rows, min(n, chunk)), dtype=dtype)
        return [fn(lo, hi, scratch) for lo, hi in bounds]

    def run(part: list[tuple[int, int]]) -> list[T]:
        scratch = np.empty((rows, chunk), dtype=dtype)
        return [fn(lo, hi, scratch) for lo, hi in part]

    size = -(-len(bounds) // workers)
    parts = [bounds[i : i + size] for i in range(0, len(bounds), size)]
    return [r for part in pool().map(run, parts) for r in part]


def pool() -> ThreadPoolExecutor:
    """The worker threads of every chunked or tiled NumPy step (``for_chunks``,
    ``numpy_tiles.for_tiles``), THREADS of them, made on first use."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="optgen")
    return _POOL


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
