"""Input checks (:mod:`optgen_runtime.checks`) and chunked execution for the generated NumPy
reference modules."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
from optgen_runtime.common import check_inputs_given
from optgen_runtime.philox import randn

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
    check_weight(rule, weight)
    check_inputs_given(rule, inputs or {})
    check_state_keys(rule, state, names + host_names)
    arrays = [("grad", grad)] + list((inputs or {}).items())
    arrays += [(f"state[{n!r}]", state[n]) for n in names]
    for label, a in arrays:
        check_array(rule, label, a)
        check_dtype(rule, label, a, (weight.dtype,), f"the weight's ({weight.dtype})")
        check_shape(rule, label, a, weight)
    everything = [("weight", weight)] + arrays
    for label, a in everything:
        check_contiguous(rule, label, a)
    for label, a in [everything[0]] + everything[2 + len(inputs or {}) :]:
        if not a.flags.writeable:
            raise ValueError(f"{rule}: {label} is read-only but is updated in place")
    read = 1 + len(inputs or {})
    check_overlaps(
        rule, [(label, a, k == 0 or k > read) for k, (label, a) in enumerate(everything)]
    )
    return [a.reshape(-1) for _, a in everything]


T = TypeVar("T")

# NumPy's ufuncs release the GIL: chunks run on this many threads (OPTGEN_NUM_THREADS overrides).
THREADS = max(1, int(os.environ.get("OPTGEN_NUM_THREADS", os.cpu_count() or 1)))
_POOL: ThreadPoolExecutor | None = None
_MIN_CHUNKS_PER_THREAD = 4  # below this, threads cost more than they save


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
