"""Scalar functions of the compiled loops that libm would make a call per element: the noise
draws' Philox words and Box-Muller normals (``normals``), and float32 cube roots (``cbrt``), in
float64 arithmetic that vectorises."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba.core import types
from numba.extending import overload

from optgen_runtime import philox
from optgen_runtime.numba_jit import bits_of, compiled, float32_of, float64_bits, float64_of

_SIXTY_THREE = np.int64(63)
_LOW_32 = np.int64(0xFFFFFFFF)

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
    bits_ = float64_bits(a)
    e = np.float64((bits_ >> _FIFTY_TWO) - _BIAS)
    m = float64_of((bits_ & _MANTISSA) | _ONE_BITS)  # in [1, 2)
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
    y = float64_of(np.int64(np.float64(float64_bits(a)) * _THIRD) + _CBRT_MAGIC)
    y = (y + y + a / (y * y)) * _THIRD
    y = (y + y + a / (y * y)) * _THIRD
    cube = y * y * y
    root = bits_of(np.float32(y * (cube + a + a) / (cube + cube + a)))
    given = bits_of(x)
    m = np.int64(given) - 1  # in [0, 0x7F7FFFFE] for a positive finite x
    keep = np.uint32(((_LARGEST_BELOW - m) >> _SIXTY_THREE | m >> _SIXTY_THREE) & _LOW_32)
    return float32_of(root ^ ((root ^ given) & keep))  # all ones in keep: x itself


@overload(cbrt, inline="always")
def _cbrt(x):  # type: ignore[no-untyped-def]
    if x != types.float32:
        return lambda x: np.cbrt(x)
    return lambda x: _cbrt32(x)
