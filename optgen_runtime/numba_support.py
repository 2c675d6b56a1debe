"""Runtime of the generated numba modules (``generated/numba``): compile options, buffer tables
and the checks they share with the NumPy reference.

A compiled step runs one parallel loop over a chunk table that spans every tensor of the call
(rows: tensor, start, stop), as the Triton multi-tensor kernels do: a tensor's buffers are found
through a table of addresses (``view``), so one call updates any number of tensors without a
per-tensor dispatch, and the loop over a chunk's elements is a plain serial function that LLVM
vectorises. Every array is checked exactly as the NumPy module checks it (``flat_views``,
``check_arrays_across``) before an address is taken.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.caching import FunctionCache
from numba.extending import intrinsic, overload

from optgen_runtime import philox
from optgen_runtime.common import (
    BITS,
    HALF_BITS,
    HALF_MASTER,
    MASTER,
    PLAIN,
    check_lists,
    of_tensor,
)
from optgen_runtime.numpy_support import check_arrays_across, flat_views

# IEEE arithmetic (no reassociation, no contraction to fused multiply-add: float32 results round
# as NumPy's ufuncs do), NumPy's error model (x / 0 is inf, not ZeroDivisionError: it also keeps
# the element loops free of branches, so they vectorise), the GIL released.
NJIT: dict[str, Any] = {"fastmath": False, "error_model": "numpy", "nogil": True}

# Compiled code is cached in ``__pycache__`` next to the generated module, as Python caches
# bytecode there (numba falls back to its user-wide cache directory when that is not writable;
# NUMBA_CACHE_DIR moves it); OPTGEN_NUMBA_CACHE=0 compiles in every process.
CACHE = os.environ.get("OPTGEN_NUMBA_CACHE", "1") != "0"


def runtime_stamp(folder: Path | None = None) -> str:
    """A digest of the runtime's sources (every ``*.py`` of ``folder``, this package by default).

    numba keys a cached function by its own file only (its modification time and size, its
    bytecode), yet a compiled step holds this runtime's code too: ``load``, ``store`` and the
    views are compiled into it, and the module constants (``CHUNK``, ``PLAIN``, ...) frozen as
    literals. A checkout that changes the runtime and not a generated module (a ``git pull``, an
    edit) would otherwise run the old runtime from the cache; the digest in every cache key makes
    it compile afresh instead."""
    digest = hashlib.sha256()
    for path in sorted((folder or Path(__file__).parent).glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


RUNTIME_STAMP = runtime_stamp()


class _StampedCache(FunctionCache):
    """numba's cache of one function, each entry keyed by ``RUNTIME_STAMP`` too (read when a key is
    made, so a test can change it)."""

    def _index_key(self, sig: Any, codegen: Any) -> Any:
        return (super()._index_key(sig, codegen), RUNTIME_STAMP)


def compiled(**flags: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit`` with ``NJIT``'s options and ``flags``, cached under ``RUNTIME_STAMP``: the
    decorator of every compiled function of the runtime and the generated modules."""

    def decorate(function: Callable[..., Any]) -> Any:
        dispatcher = numba.njit(**NJIT, **flags)(function)
        if CACHE:
            # numba's ``enable_caching`` with the stamped cache in place of its FunctionCache
            dispatcher._cache = _StampedCache(function)
        return dispatcher

    return decorate


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


# bfloat16 and float16 in the compiled loops. NumPy has no bfloat16 and numba no float16 on the
# CPU: a bfloat16 weight and gradient reach a chunk function as uint16 arrays of their bits, a
# float16 one as int16 arrays of theirs (``view_bits``), which ``load`` widens to float32 (exact)
# and ``store`` rounds back to nearest, ties to even, as torch's conversions round (a NaN stays a
# NaN of its sign). ``compute_type`` is float32 for them, the array's dtype otherwise; on float32
# and float64 arrays ``load`` and ``store`` are plain indexing (inlined: the same loop as
# ``a[i]``).

_BFLOAT16 = np.empty(0, np.uint16)  # a driver's last argument: its bits are bfloat16's
_FLOAT16 = np.empty(0, np.int16)  # float16's

# Per layout (``Buffers.layouts``): the drivers that take it (a generated module's ``_UPDATES``
# and reduction tables are keyed PLAIN, BITS, MASTER) and their trailing arguments (the format
# of the bits: one compiled specialisation of a driver each).
LAYOUTS: dict[str, tuple[str, tuple[np.ndarray, ...]]] = {
    PLAIN: (PLAIN, ()),
    BITS: (BITS, (_BFLOAT16,)),
    MASTER: (MASTER, (_BFLOAT16,)),
    HALF_BITS: (BITS, (_FLOAT16,)),
    HALF_MASTER: (MASTER, (_FLOAT16,)),
}


def _bitcast(source: Any, target: Any) -> Any:
    """An intrinsic reading a ``source`` value's bits as a ``target`` (same width)."""

    def typer(typingctx: Any, value: Any) -> Any:
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return builder.bitcast(args[0], context.get_value_type(target))

        return target(source), codegen

    return intrinsic(typer)


_float32_of = _bitcast(types.uint32, types.float32)  # the float32 whose bits are a uint32
_bits_of = _bitcast(types.float32, types.uint32)  # a float32's bits
_float64_of = _bitcast(types.int64, types.float64)  # the float64 whose bits are an int64
_float64_bits = _bitcast(types.float64, types.int64)  # a float64's bits


# Each has a Python body too, the compiled one's in NumPy scalars, so that a chunk function run
# by Python (``py_func``: the tests' reference for a compiled loop's bits) computes as compiled.


def load(buffer: np.ndarray, i: int) -> Any:
    """``buffer[i]`` in the compute type: a bfloat16's or float16's bits widened to float32."""
    if buffer.dtype == np.uint16:
        return np.array(np.uint32(buffer[i]) << _SIXTEEN, dtype=np.uint32).view(np.float32)[()]
    if buffer.dtype == np.int16:
        return np.float32(buffer[i : i + 1].view(np.float16)[0])  # NumPy's conversion: exact
    return buffer[i]


def store(buffer: np.ndarray, i: int, value: Any) -> None:
    """``buffer[i] = value``, rounded to a bfloat16 or float16 buffer's type (to nearest, ties
    to even)."""
    if buffer.dtype == np.uint16:
        bits = np.array(value, dtype=np.float32).view(np.uint32)[()]
        buffer[i] = _to_bfloat16.py_func(bits)
    elif buffer.dtype == np.int16:  # NumPy's conversion: the same bits but a NaN's payload
        with np.errstate(over="ignore"):
            half = np.array(np.float32(value), dtype=np.float16)
        buffer[i] = half.view(np.int16)[()]
    else:
        buffer[i] = value


def compute_type(buffer: np.ndarray) -> Any:
    """The type a chunk of ``buffer`` computes in: float32 for bfloat16 and float16 bits."""
    return np.float32 if buffer.dtype in (np.uint16, np.int16) else buffer.dtype.type


_SIXTEEN = np.uint32(16)
_MAGNITUDE = np.uint32(0x7FFFFFFF)
_INF = np.int64(0x7F800000)
_SIXTY_THREE = np.int64(63)
_LOW_32 = np.int64(0xFFFFFFFF)


@compiled(inline="always")
def _to_bfloat16(bits: Any) -> Any:
    """The bfloat16 bits of the float32 whose bits are ``bits``: to nearest, ties to even (an
    overflow rounds to inf, as torch's); a NaN quiet, its sign kept. ``store``'s rounding,
    compiled and in Python (its ``py_func``). Without a branch or a bool (a NaN's result picked
    by a mask from an integer comparison's sign): inlined into numba's IR, a branch left phi
    nodes that numba's checks warned about on the first compile (NumbaIRAssumptionWarning), and
    a mask made from a bool kept the loop from vectorising."""
    magnitude = np.int64(bits & _MAGNITUDE)
    nan = np.uint32((_INF - magnitude) >> _SIXTY_THREE & _LOW_32)  # all ones for a NaN, else 0
    even = (bits >> _SIXTEEN) & np.uint32(1)
    rounded = (bits + np.uint32(0x7FFF) + even) >> _SIXTEEN
    quiet = (bits >> _SIXTEEN) | np.uint32(0x40)
    return np.uint16(rounded ^ ((rounded ^ quiet) & nan))


# float16 by the hardware's conversions (x86's F16C, as torch's CPU kernels convert; AArch64's
# FCVT): LLVM's ``fpext``/``fptrunc`` of ``half``, one instruction per 8 or 16 elements,
# exact one way and to nearest, ties to even the other (torch's bits, a NaN's included). Where
# numba compiles for a target without them, LLVM calls compiler-rt helpers the JIT does not link
# (``LLVM ERROR: Symbol not found: __extendhfsf2``, the process aborted): the torch classes then
# keep their float32 working copies for float16 (``HALF_NATIVE`` False).


def _half_native(machine: str, cpu_name: str | None, cpu_features: str | None) -> bool:
    """Whether numba's target converts float16 in hardware: AArch64 always; on x86 the host
    with F16C when numba compiles for the host (``NUMBA_CPU_NAME`` unset or "host"), a
    ``NUMBA_CPU_FEATURES`` list naming ``+f16c``, else (another named CPU) not assumed."""
    if machine.lower() in ("aarch64", "arm64"):
        return True
    if cpu_features:
        return "+f16c" in cpu_features.split(",")
    if cpu_name and cpu_name != "host":
        return False
    return bool(llvm.get_host_cpu_features().get("f16c"))


HALF_NATIVE = _half_native(platform.machine(), numba.config.CPU_NAME, numba.config.CPU_FEATURES)


@intrinsic
def _from_float16(typingctx: Any, bits: Any) -> Any:
    """The float32 of the float16 whose bits are the int16 ``bits`` (exact)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.int16), codegen


@intrinsic
def _to_float16(typingctx: Any, value: Any) -> Any:
    """The bits (int16) of the float32 ``value`` rounded to float16: to nearest, ties to even."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.int16(types.float32), codegen


# (the overloads take no annotations: numba compares their signatures with the implementations')
@overload(load, inline="always")
def _load(buffer, i):  # type: ignore[no-untyped-def]
    if buffer.dtype == types.uint16:
        return lambda buffer, i: _float32_of(np.uint32(buffer[i]) << _SIXTEEN)
    if buffer.dtype == types.int16:
        return lambda buffer, i: _from_float16(buffer[i])
    return lambda buffer, i: buffer[i]


@overload(store, inline="always")
def _store(buffer, i, value):  # type: ignore[no-untyped-def]
    if buffer.dtype == types.uint16:

        def rounded(buffer, i, value):  # type: ignore[no-untyped-def]
            buffer[i] = _to_bfloat16(_bits_of(np.float32(value)))

        return rounded

    if buffer.dtype == types.int16:

        def rounded_half(buffer, i, value):  # type: ignore[no-untyped-def]
            buffer[i] = _to_float16(np.float32(value))

        return rounded_half

    def plain(buffer, i, value):  # type: ignore[no-untyped-def]
        buffer[i] = value

    return plain


@compiled()
def round_into(bits: np.ndarray, values: np.ndarray) -> None:
    """``values`` (float32) stored into the bfloat16 or float16 ``bits`` (``store``: to nearest,
    ties to even): such a parameter written from its float32 master copy, chunk by chunk right
    after the chunk's update (the ``_update_master`` loops; the chunk is still in cache)."""
    for i in range(values.shape[0]):
        store(bits, i, values[i])


@overload(compute_type, inline="always")
def _compute_type(buffer):  # type: ignore[no-untyped-def]
    if buffer.dtype in (types.uint16, types.int16):
        return lambda buffer: np.float32
    return lambda buffer: buffer.dtype.type


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
    buffers.alive = flats  # the writes may be queued (optgen_runtime.common.commit)
    return buffers


# Noise draws (``RULE.normal``) in the compiled loops: optgen_runtime.philox's stream, element by
# element. The Philox words, the uniforms and theta are integer or exactly rounded float32
# arithmetic, the same bits as the NumPy module's (and Triton's). Box-Muller's float32 ``log``
# and ``cos`` are computed in float64 arithmetic that vectorises and rounded once (libm's
# ``logf``/``cosf`` are a call per element: SGLD's step took 4x as long): equal to
# ``float32(log(float64(u)))`` and ``float32(cos(float64(theta)))`` on every float32 the stream
# gives them (every one in [2**-24, 1) and in [0, 2 pi]: a one-off exhaustive run; the test
# samples them), where the NumPy module calls NumPy's own float32 SIMD routines, up to a few ulp
# off: a normal is NumPy's to the bit wherever those give float64's rounded, within 4 ulp
# elsewhere (tests/test_numba.py). In two loops per block of DRAW_BLOCK, both vectorised: the
# Philox rounds and uniforms, then Box-Muller.
DRAW_BLOCK = 1024
# optgen_runtime.philox's constants (the words' as uint64)
_PHILOX_A = np.uint64(philox._MUL_A)
_PHILOX_B = np.uint64(philox._MUL_B)
_WEYL_0 = np.uint64(philox._WEYL_A)
_WEYL_1 = np.uint64(philox._WEYL_B)
_WORD = np.uint64(philox._MASK32)
_HALF_WORD = np.uint64(0x80000000)
_THIRTY_TWO = np.uint64(philox._SHIFT32)
_UNIFORM_SCALE = philox._UNIFORM_SCALE
_MIN_U1 = philox._MIN_U1
_TWO_PI = philox._TWO_PI
_MINUS_TWO = np.float32(-2.0)


@compiled(inline="always")
def philox_words(key: int, counter: int) -> tuple[Any, Any, Any, Any]:
    """Philox-4x32-10's four output words (uint64 holding 32 bits each) for the int64 ``key``
    (``stream_seed``'s: in [0, 2**63)) and int64 ``counter``: ``philox.randint4x``'s, in 64-bit
    arithmetic (a 32 x 32-bit product fits; every sum masked to 32 bits)."""
    k = np.uint64(key)
    c = np.uint64(counter)
    k0 = k & _WORD
    k1 = k >> _THIRTY_TWO
    c0 = c & _WORD
    c1 = c >> _THIRTY_TWO
    c2 = np.uint64(0)
    c3 = np.uint64(0)
    for _ in range(10):
        pb = c2 * _PHILOX_B
        pa = c0 * _PHILOX_A
        c0, c1, c2, c3 = (
            (pb >> _THIRTY_TWO) ^ c1 ^ k0,
            pb & _WORD,
            (pa >> _THIRTY_TWO) ^ c3 ^ k1,
            pa & _WORD,
        )
        k0 = (k0 + _WEYL_0) & _WORD
        k1 = (k1 + _WEYL_1) & _WORD
    return c0, c1, c2, c3


@compiled(inline="always")
def _uniform(word: Any) -> Any:
    """``philox.uniform`` of one word: its int32 reading, negative ones complemented, as float32
    times the scale (the integer is below 2**31: converted exactly as NumPy's int32 cast)."""
    magnitude = np.int64(word ^ _WORD) if word >= _HALF_WORD else np.int64(word)
    return np.float32(magnitude) * _UNIFORM_SCALE


# log(m) = 2 atanh(s), s = (m - 1) / (m + 1), m in [sqrt(1/2), sqrt(2)): |s| < 0.172, the series
# to s**21 (its next term below 1e-18 of the sum); ln 2 in fdlibm's two parts.
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_SQRT_TWO = 1.4142135623730951
_MANTISSA = np.int64(0x000FFFFFFFFFFFFF)
_ONE_BITS = np.int64(0x3FF0000000000000)
_FIFTY_TWO = np.int64(52)
_BIAS = np.int64(1023)


@compiled(inline="always")
def _log_of(x: Any) -> Any:
    """``float32(log(x))`` for a positive float32 ``x`` (normal as a float64), the log in
    float64 arithmetic."""
    a = np.float64(x)
    bits_ = _float64_bits(a)
    e = np.float64((bits_ >> _FIFTY_TWO) - _BIAS)
    m = _float64_of((bits_ & _MANTISSA) | _ONE_BITS)  # in [1, 2)
    big = m > _SQRT_TWO
    m = m * 0.5 if big else m
    e = e + 1.0 if big else e
    s = (m - 1.0) / (m + 1.0)
    z = s * s
    p = 1.0 / 21.0
    for k in range(19, 1, -2):  # unrolled by LLVM: 1/19, 1/17, ..., 1/3
        p = p * z + 1.0 / k
    return np.float32(e * _LN2_HI + (2.0 * s + 2.0 * s * z * p + e * _LN2_LO))


# cos(a) for a in [0, 2 pi]: a = k pi/2 + r, |r| <= pi/4 (pi/2 in fdlibm's two parts: k pi/2 exact
# in the first), then +-cos(r) or +-sin(r) by their Taylor series to r**18 and r**17.
_PIO2_HI = 1.57079632673412561417e00
_PIO2_LO = 6.07710050650619224932e-11
_TWO_OVER_PI = 6.36619772367581382433e-01
_COS_TERMS = tuple((-1.0) ** j / math.factorial(2 * j) for j in range(10))
_SIN_TERMS = tuple((-1.0) ** j / math.factorial(2 * j + 1) for j in range(9))


@compiled(inline="always")
def _cos_of(x: Any) -> Any:
    """``float32(cos(x))`` for a float32 ``x`` in [0, 2 pi], in float64 arithmetic."""
    a = np.float64(x)
    k = np.floor(a * _TWO_OVER_PI + 0.5)
    r = (a - k * _PIO2_HI) - k * _PIO2_LO
    z = r * r
    c = _COS_TERMS[9]
    for j in range(8, -1, -1):
        c = c * z + _COS_TERMS[j]
    s = _SIN_TERMS[8]
    for j in range(7, -1, -1):
        s = s * z + _SIN_TERMS[j]
    s = r * s
    q = np.int64(k)
    v = s if (q & 1) == 1 else c  # cos(r + k pi/2): cos r, -sin r, -cos r, sin r
    return np.float32(-v if ((q + 1) & 2) == 2 else v)


@compiled()
def normals(
    key: int, first: int, count: int, index: int, scratch: np.ndarray, out: np.ndarray
) -> None:
    """``out[i]``: the standard normal (float32) of element ``first + i``'s draw ``index`` of
    ``count`` per element (counter ``(first + i) * count + index``), ``philox.randn``'s
    Box-Muller; ``scratch``: float32, two rows of at least ``len(out)``."""
    n = out.shape[0]
    for i in range(n):
        w0, w1, _, _ = philox_words(key, (first + i) * count + index)
        u1 = _uniform(w0)
        scratch[0, i] = u1 if u1 > _MIN_U1 else _MIN_U1
        scratch[1, i] = _TWO_PI * _uniform(w1)
    for i in range(n):
        out[i] = np.sqrt(_MINUS_TWO * _log_of(scratch[0, i])) * _cos_of(scratch[1, i])


# Cube roots in the compiled loops. libm's ``cbrtf`` is a scalar call per element that LLVM does
# not vectorise (26.6 ms per 2**20 float32 elements on one thread against 0.57 ms for NumPy's
# SIMD ``np.cbrt``: MADGRAD ran the NumPy module for it); ``cbrt`` of a float32 is computed in
# float64 arithmetic that vectorises: a first guess from the bits (the exponent divided by three:
# within 4 %), two Newton steps and one Halley step (relative error below 1e-16), rounded to
# float32 once: the correctly rounded cube root wherever the float64 value is not within 1e-16
# of a midpoint between two float32s (equal to ``float32(cbrt(float64(x)))`` on every one of the
# 2**31 - 2**23 - 1 positive finite float32s: a one-off exhaustive run; tests/test_numba.py
# samples them; NumPy's own float32 ``np.cbrt`` is up to 2 ulp off). +-0, inf and NaN are their
# own cube roots, picked by a mask from the bits (a branch, inlined, left phi nodes numba's IR
# checks warn about: NumbaIRAssumptionWarning); a negative x is NaN (the printer's guard, as for
# every fractional power). A float64 takes libm's ``cbrt``.
_THIRD = 1.0 / 3.0
_CBRT_MAGIC = np.int64(0x2A9F7893782DA1CE)  # float64 bits of 1 minus a third of them, tuned
_LARGEST_BELOW = np.int64(0x7F7FFFFE)  # the bits of the largest finite float32, less one


def cbrt(x: Any) -> Any:
    """The cube root of a float32 or float64 ``x`` (>= 0, inf or NaN), in its type (the Python
    body: the compiled one's steps in NumPy scalars)."""
    if np.asarray(x).dtype != np.float32:
        return np.cbrt(x)
    a = np.float64(x)
    if not (a > 0.0 and a < np.inf):
        return x
    bits = np.array(a).view(np.int64)[()]
    y = np.array(np.int64(np.float64(bits) * _THIRD) + _CBRT_MAGIC).view(np.float64)[()]
    y = (y + y + a / (y * y)) * _THIRD
    y = (y + y + a / (y * y)) * _THIRD
    cube = y * y * y
    return np.float32(y * (cube + a + a) / (cube + cube + a))


@compiled(inline="always")
def _cbrt32(x: Any) -> Any:
    """``cbrt`` of a float32, compiled with NJIT's options (an overload's implementation gets
    numba's defaults, whose Python error model tests every division for zero)."""
    a = np.float64(x)
    y = _float64_of(np.int64(np.float64(_float64_bits(a)) * _THIRD) + _CBRT_MAGIC)
    y = (y + y + a / (y * y)) * _THIRD
    y = (y + y + a / (y * y)) * _THIRD
    cube = y * y * y
    root = _bits_of(np.float32(y * (cube + a + a) / (cube + cube + a)))
    given = _bits_of(x)
    m = np.int64(given) - 1  # in [0, 0x7F7FFFFE] for a positive finite x
    keep = np.uint32(((_LARGEST_BELOW - m) >> _SIXTY_THREE | m >> _SIXTY_THREE) & _LOW_32)
    return _float32_of(root ^ ((root ^ given) & keep))  # all ones in keep: x itself


@overload(cbrt, inline="always")
def _cbrt(x):  # type: ignore[no-untyped-def]
    if x != types.float32:
        return lambda x: np.cbrt(x)
    return lambda x: _cbrt32(x)
