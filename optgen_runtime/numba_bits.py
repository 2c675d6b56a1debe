"""bfloat16 and float16 in the compiled loops (``load``, ``store``, ``compute_type``,
``round_into``), and whether numba's target converts float16 in hardware (``HALF_NATIVE``)."""

from __future__ import annotations

import platform
from typing import Any

import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic, overload

from optgen_runtime.common import BITS, HALF_BITS, HALF_MASTER, MASTER, PLAIN
from optgen_runtime.numba_jit import bits_of, compiled, float32_of

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
        return lambda buffer, i: float32_of(np.uint32(buffer[i]) << _SIXTEEN)
    if buffer.dtype == types.int16:
        return lambda buffer, i: _from_float16(buffer[i])
    return lambda buffer, i: buffer[i]


@overload(store, inline="always")
def _store(buffer, i, value):  # type: ignore[no-untyped-def]
    if buffer.dtype == types.uint16:

        def rounded(buffer, i, value):  # type: ignore[no-untyped-def]
            buffer[i] = _to_bfloat16(bits_of(np.float32(value)))

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
