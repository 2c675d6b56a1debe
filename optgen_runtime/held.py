"""The formats a matrix iteration may be held in (``matrix.iterate(..., precision=choice)``).

At ``"weight"`` the iteration runs in the weight's dtype. At ``"bfloat16"`` or ``"float16"`` it
runs as ``torch.optim.Muon`` runs its Newton-Schulz iteration in bfloat16: the start is rounded to
the format and so is every op's result (a product accumulated in at least float32, then rounded
once), to nearest, ties to even.

- NumPy emulation (:class:`HeldNumPy`) keeps the values in the weight's dtype and rounds them
  (:func:`held_in`): bfloat16 by its bits (float32's upper 16 bits, rounded to nearest even; NaN
  stays NaN), float16 by NumPy's own conversion, both from float32 as torch converts (a float64
  value is first rounded to float32, as torch's ``.bfloat16()`` of a float64 tensor does).
- torch (:class:`HeldTorch`; the GPU path's loop, :func:`held_tensor`) holds the iteration in
  that dtype: its products accumulate in float32 and its element ops compute in float32, each
  result rounded once.

The NumPy module's iteration runs its ops through :func:`held_ops`: NumPy's own in the weight's
format; for a float32 weight in a held format torch's CPU ops where torch is installed (NumPy
has no bfloat16 or float16 product: the emulation's products are float32 ones, at float32's
speed), else the emulation; for a float64 weight the emulation (its ops compute in float64 before
rounding, where torch's compute in float32). The two agree but for the order a product's sum is
accumulated in, which decides the rounding of a result near the midpoint of two neighbours (as
any two BLAS libraries differ): tests/test_muon.py runs both.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

_BF16_KEEP = np.uint32(0xFFFF0000)


def held_in(values: np.ndarray, fmt: str) -> np.ndarray:
    """``values`` rounded to the format ``fmt`` (kept in their dtype); ``"weight"``: themselves."""
    if fmt == "weight":
        return values
    with np.errstate(over="ignore"):  # beyond a format's range: infinite, as torch's
        single = np.asarray(values, dtype=np.float32)
        if fmt == "float16":
            return single.astype(np.float16).astype(values.dtype)
        if fmt != "bfloat16":
            raise ValueError(f"unknown matrix format {fmt!r}")
        bits = single.view(np.uint32)
        odd = (bits >> np.uint32(16)) & np.uint32(1)
        # a NaN's bits may wrap here: it is put back below
        rounded = ((bits + np.uint32(0x7FFF) + odd) & _BF16_KEEP).view(np.float32)
    rounded = np.where(np.isnan(single), np.float32(np.nan), rounded)
    return rounded.astype(values.dtype, copy=False)


def held_tensor(values: Any, fmt: str) -> Any:
    """A torch tensor in the format ``fmt`` (``"weight"``: itself)."""
    if fmt == "weight":
        return values
    import torch

    return values.to({"bfloat16": torch.bfloat16, "float16": torch.float16}[fmt])


class WeightOps:
    """The matrix ops in the weight's dtype: NumPy's own."""

    def start(self, values: np.ndarray) -> np.ndarray:
        return values

    def finish(self, values: np.ndarray, like: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(values)

    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.matmul(a, b)

    def transpose(self, a: np.ndarray) -> np.ndarray:
        return np.transpose(a)

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.add(a, b)

    def multiply(self, scale: Any, a: np.ndarray) -> np.ndarray:
        return np.multiply(scale, a)


class HeldNumPy(WeightOps):
    """The ops in a held format, emulated: NumPy's in the weight's dtype, each result rounded."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt

    def start(self, values: np.ndarray) -> np.ndarray:
        return held_in(values, self.fmt)

    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return held_in(np.matmul(a, b), self.fmt)

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return held_in(np.add(a, b), self.fmt)

    def multiply(self, scale: Any, a: np.ndarray) -> np.ndarray:
        return held_in(np.multiply(scale, a), self.fmt)


class HeldTorch:
    """The ops in a held format on torch CPU tensors of that dtype (NumPy arrays in and out)."""

    def __init__(self, fmt: str) -> None:
        import torch

        self.torch, self.fmt = torch, fmt

    def start(self, values: np.ndarray) -> Any:
        return held_tensor(self.torch.from_numpy(np.ascontiguousarray(values)), self.fmt)

    def finish(self, values: Any, like: np.ndarray) -> np.ndarray:
        out = np.empty(values.shape, dtype=like.dtype)
        self.torch.from_numpy(out).copy_(values)
        return out

    def matmul(self, a: Any, b: Any) -> Any:
        return self.torch.matmul(a, b)

    def transpose(self, a: Any) -> Any:
        return self.torch.t(a)

    def add(self, a: Any, b: Any) -> Any:
        return self.torch.add(a, b)

    def multiply(self, scale: Any, a: Any) -> Any:
        return self.torch.mul(a, float(scale))


WEIGHT_OPS = WeightOps()
HAVE_TORCH = importlib.util.find_spec("torch") is not None
_HELD: dict[tuple[str, bool], WeightOps | HeldTorch] = {}


def held_ops(fmt: str, like: np.ndarray) -> WeightOps | HeldTorch:
    """The ops of an iteration held in ``fmt`` on arrays like ``like`` (see the module
    docstring for which)."""
    if fmt == "weight":
        return WEIGHT_OPS
    if fmt not in ("bfloat16", "float16"):
        raise ValueError(f"unknown matrix format {fmt!r}")
    by_torch = HAVE_TORCH and like.dtype == np.float32
    ops = _HELD.get((fmt, by_torch))
    if ops is None:
        ops = _HELD[fmt, by_torch] = HeldTorch(fmt) if by_torch else HeldNumPy(fmt)
    return ops
