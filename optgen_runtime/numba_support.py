"""Runtime of the generated numba modules (``generated/numba``): views, chunk tables, the
parallel launch, and the checks they share with the NumPy reference (compile options:
:mod:`optgen_runtime.numba_jit`; bfloat16/float16 loads and stores:
:mod:`optgen_runtime.numba_bits`; noise draws and cube roots: :mod:`optgen_runtime.numba_math`).

A compiled step runs one parallel loop over a chunk table that spans every tensor of the call
(rows: tensor, start, stop), as the Triton multi-tensor kernels do: a tensor's buffers are found
through a table of addresses (``view``), so one call updates any number of tensors without a
per-tensor dispatch, and the loop over a chunk's elements is a plain serial function that LLVM
vectorises. Every array is checked exactly as the NumPy module checks it (``flat_views``,
``check_arrays_across``) before an address is taken.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numba
import numpy as np
from numba.core import cgutils, types
from numba.extending import intrinsic

from optgen_runtime.common import PLAIN, check_lists, of_tensor
from optgen_runtime.numba_bits import LAYOUTS
from optgen_runtime.numba_jit import compiled
from optgen_runtime.numpy_support import check_arrays_across, flat_views

# Elements per chunk, the NumPy module's CHUNK: a reduction's per-chunk partials cover the same
# elements in both modules and are combined in the same order.
CHUNK = 65536


@intrinsic
def _pointer(typingctx: Any, address: Any) -> Any:
    """An int64 address as a void pointer (for ``numba.carray``)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(address), codegen


@compiled()
def view(address: int, start: int, stop: int, like: np.ndarray) -> np.ndarray:
    """Elements [start, stop) of the buffer at ``address``, of ``like``'s dtype."""
    return numba.carray(_pointer(address + start * like.itemsize), (stop - start,), like.dtype)


@compiled()
def view_bits(address: int, start: int, stop: int, like: np.ndarray) -> np.ndarray:
    """Elements [start, stop) of the bfloat16 or float16 buffer at ``address``, as their bits:
    uint16 for bfloat16, int16 for float16 (``like``'s dtype: ``load`` and ``store`` tell the
    two formats apart by it and convert them)."""
    return numba.carray(_pointer(address + start * 2), (stop - start,), like.dtype)


# Below this many chunks per thread, fewer threads: waking a worker costs more than it saves
# (the NumPy module's rule too), and on a loaded machine a parallel region waits a whole
# scheduler slice for a descheduled worker.
MIN_CHUNKS_PER_THREAD = 4

# The most threads numba runs (NUMBA_NUM_THREADS, fixed at its import; ``numba.set_num_threads``
# lowers the count a thread uses, never above this).
MAX_THREADS = numba.config.NUMBA_NUM_THREADS

# An even chunk's elements are a multiple of this (whole 64-byte cache lines of float32 and
# float64 from an aligned buffer; LLVM's vector loop then needs no remainder but the last).
ALIGN = 64


def launch(
    kernel: Any, addresses: np.ndarray, chunks: np.ndarray, *args: Any, serial: Any = None
) -> None:
    """``kernel(addresses, chunks, *args)`` on as many threads as the chunks keep busy (at most
    numba's current setting: ``numba.set_num_threads`` and NUMBA_NUM_THREADS cap it); one
    thread runs the loop on the caller's, with no worker to wake: ``serial`` (the kernel's
    loop compiled without ``parallel``, the same chunks in order) where it is given, else the
    kernel on one thread. (A parallel region costs microseconds to enter even on one thread,
    and changing numba's thread count as many: a step of small tensors' fixed cost.)"""
    if serial is not None and len(chunks) < 2 * MIN_CHUNKS_PER_THREAD:
        serial(addresses, chunks, *args)
        return
    if len(chunks) >= MIN_CHUNKS_PER_THREAD * MAX_THREADS:
        kernel(addresses, chunks, *args)  # every thread numba may run is kept busy: no query
        return
    threads = numba.get_num_threads()
    workers = max(1, min(threads, len(chunks) // MIN_CHUNKS_PER_THREAD))
    if workers == threads:
        kernel(addresses, chunks, *args)
        return
    numba.set_num_threads(workers)
    try:
        kernel(addresses, chunks, *args)
    finally:
        numba.set_num_threads(threads)


def launch_layout(
    drivers: dict[str, Any], layout: str, addresses: np.ndarray, chunks: np.ndarray, *args: Any
) -> None:
    """``launch`` of ``layout``'s driver: ``drivers`` is a module's table keyed PLAIN, BITS,
    MASTER (``_UPDATES``: (parallel, serial) pairs; a reduction's: one driver each), ``LAYOUTS``
    says which entry a layout runs and the format of its bits (the driver's last argument)."""
    kind, extra = LAYOUTS[layout]
    driver = drivers[kind]
    kernel, serial = driver if isinstance(driver, tuple) else (driver, None)
    launch(kernel, addresses, chunks, *args, *extra, serial=serial)


def chunk_table(sizes: Sequence[int], chunk: int = CHUNK, *, even: bool = False) -> np.ndarray:
    """``_chunk_table``'s read-only table, built once per list of sizes (a module's ``step``
    builds the table of its tensors on every call)."""
    return _chunk_table(tuple(sizes), chunk, even, MAX_THREADS)


@functools.lru_cache(maxsize=256)
def _chunk_table(sizes: tuple[int, ...], chunk: int, even: bool, threads: int) -> np.ndarray:
    table = _build_chunk_table(sizes, chunk, even, threads)
    table.setflags(write=False)
    return table


def _build_chunk_table(sizes: Sequence[int], chunk: int, even: bool, threads: int) -> np.ndarray:
    """(tensor, start, stop) of every chunk of every tensor: ``chunk`` elements each, tensor by
    tensor in order (a reduction's per-chunk partials: the NumPy module's chunks).

    ``even``, for loops that read no chunk boundary (no reduction): the tensors, end to end, are
    cut into ``threads`` runs of equal elements (a cut inside a tensor at a multiple of
    ``ALIGN``), each tensor's piece of a run into equal chunks of at most ``chunk`` elements,
    and every run padded with empty rows to the same number of rows, so that numba's static
    schedule, which hands each thread an equal number of consecutive rows, hands each thread
    one run. (Whole chunks of ``chunk`` elements split by their count leave threads unequal
    work: a 1 M-element tensor is 15.3 chunks, 8 for one thread and 7.3 for the other; a list
    of one-chunk tensors of many sizes, far worse.)"""
    if not even:
        rows = [(j, s, min(s + chunk, n)) for j, n in enumerate(sizes) for s in range(0, n, chunk)]
        return np.array(rows, dtype=np.int64).reshape(-1, 3)
    total = sum(sizes)
    runs: list[list[tuple[int, int, int]]] = [[] for _ in range(threads)]
    first = 0  # the tensor's first element, the tensors end to end
    for j, n in enumerate(sizes):
        cuts = {0, n}
        for k in range(1, threads):
            at = k * total // threads - first
            if 0 < at < n:
                cuts.add(min(n, (2 * at + ALIGN) // (2 * ALIGN) * ALIGN))
        bounds = sorted(cuts)
        for lo, hi in zip(bounds, bounds[1:], strict=False):
            run = min(threads - 1, (first + (lo + hi) // 2) * threads // total)
            count = -(-(hi - lo) // chunk)
            # chunk i of the piece starts i/count of the way, rounded to a multiple of ALIGN
            starts = [
                lo + (2 * i * (hi - lo) + count * ALIGN) // (2 * count * ALIGN) * ALIGN
                for i in range(count)
            ]
            runs[run] += [
                (j, a, b) for a, b in zip(starts, [*starts[1:], hi], strict=True) if b > a
            ]
        first += n
    longest = max(map(len, runs))
    rows = [row for run in runs for row in [*run, *[(0, 0, 0)] * (longest - len(run))]]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


class Buffers:
    """Every tensor of a compiled call by address, grouped by dtype and layout (one compiled call
    each).

    ``groups``: (indices of the tensors, their addresses as rows of (weight, grad, inputs,
    states), their chunk table, the dtype); ``shapes``: each tensor's shape (for rules whose
    scalars depend on it); ``layouts``: each group's layout (``common.PLAIN``, ``BITS``,
    ``MASTER``). Built by
    ``prepare`` from checked arrays, or by a caller that checked every buffer itself and knows
    their addresses (``at``: the torch classes)."""

    __slots__ = ("alive", "count", "groups", "layouts", "shapes")

    def __init__(
        self,
        groups: list[tuple[list[int], np.ndarray, np.ndarray, Any]],
        shapes: list[Any],
        layouts: list[str] | None = None,
    ) -> None:
        self.groups = groups
        self.shapes = shapes
        self.count = len(shapes)
        # per group: how its weights and gradients are laid out (only a module's
        # ``step_tables`` takes a group whose layout is not PLAIN)
        self.layouts = layouts or [PLAIN] * len(groups)
        self.alive: object = None  # the arrays ``prepare`` took: alive while writes are queued

    @classmethod
    def at(
        cls,
        rows: Sequence[Sequence[int]],
        shapes: Sequence[Any],
        dtypes: Sequence[Any],
        *,
        even: bool = False,
        layouts: Sequence[str] | None = None,
    ) -> Buffers:
        """The buffers at the addresses ``rows`` (one row per tensor, in buffer order), of
        ``shapes`` and (NumPy) ``dtypes``: nothing is checked. ``even``: chunk tables for
        loops without reductions (``chunk_table``; a module's ``EVEN_CHUNKS``). ``layouts``:
        per tensor, PLAIN (the default), BITS (its weight and gradient bfloat16, its dtype
        float32, the one it computes in) or MASTER (its weight a float32 master copy, its
        gradient bfloat16, its row ending with the bfloat16 parameter's address); each layout
        forms groups of its own."""
        by: dict[Any, list[int]] = {}
        for j, dtype in enumerate(dtypes):
            by.setdefault((np.dtype(dtype), layouts[j] if layouts else PLAIN), []).append(j)
        groups = []
        for (dtype, _), indices in by.items():
            addresses = np.array([rows[j] for j in indices], dtype=np.int64)
            sizes = [math.prod(shapes[j]) for j in indices]
            table = chunk_table(sizes, even=even)
            groups.append((indices, addresses.reshape(len(indices), -1), table, dtype))
        return cls(groups, [tuple(s) for s in shapes], [layout for _, layout in by])


def prepare(
    rule: str,
    weights: Sequence[Any],
    grads: Sequence[Any],
    states: Sequence[Any],
    names: tuple[str, ...],
    host_names: tuple[str, ...],
    inputs: dict[str, Sequence[Any]],
    mode: str,
    *,
    even: bool = False,
) -> Buffers:
    """Every tensor's flat buffers in buffer order (weight, grad, inputs, states), checked, by
    address. ``mode``: "single" (one tensor, checked as the NumPy module's ``step`` checks it),
    "multi" (every tensor so, then across tensors: ``step_multi``), "prechecked" (the caller
    checked them all: only the counts are checked here). ``even``: as ``Buffers.at``."""
    check_lists(rule, weights, grads, states)
    for key, values in inputs.items():
        if values is None:
            continue
        if not isinstance(values, (list, tuple)) or len(values) != len(weights):
            raise ValueError(f"{rule}: {key} must be a list of {len(weights)} arrays, one each")
    flats = None
    if mode == "prechecked":
        flats = [
            [w, g] + [values[j] for values in inputs.values()] + [s[n] for n in names]
            for j, (w, g, s) in enumerate(zip(weights, grads, states, strict=True))
        ]
        # a view of a non-contiguous array would be a copy: the update would be lost
        if not all(type(a) is np.ndarray and a.flags.c_contiguous for f in flats for a in f):
            flats = None  # not what the caller promised: every check, naming the culprit
            mode = "multi"
    if flats is None:
        flats = []
        j = 0
        try:
            for j, (w, g, s) in enumerate(zip(weights, grads, states, strict=True)):
                given = {
                    key: (values[j] if values is not None else None)
                    for key, values in inputs.items()
                }
                flats.append(flat_views(rule, w, g, s, names, host_names, given or None))
        except (TypeError, ValueError) as error:
            raise of_tensor(rule, j, error, len(weights) if mode == "multi" else 1) from None
        if mode == "multi":
            check_arrays_across(rule, weights, grads, states, names)
    buffers = Buffers.at(
        [[b.ctypes.data for b in f] for f in flats],
        [np.shape(w) for w in weights],
        [f[0].dtype for f in flats],
        even=even,
    )
    buffers.alive = flats  # the writes may be queued (optgen_runtime.writes.commit)
    return buffers
