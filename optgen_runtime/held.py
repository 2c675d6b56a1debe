"""The formats a matrix iteration may be held in (``matrix.iterate(..., precision=choice)``).

At ``"weight"`` the iteration runs in the weight's dtype. At ``"bfloat16"`` or ``"float16"`` it
runs as ``torch.optim.Muon`` runs its Newton-Schulz iteration in bfloat16: the held values (the
start, every product's operands, each step's result: ``codegen.matrix.held_values``) are stored
in the format, rounded once to nearest, ties to even; the values between are computed in float32
(the weight's dtype), a held ``s C + t A B`` as one ``addmm`` (gemm's single rounding). Each
generated op says whether its result is held (its last argument).

- NumPy emulation (:class:`HeldNumPy`) keeps the values in the weight's dtype and rounds them
  (:func:`held_in`): bfloat16 by its bits (float32's upper 16 bits, rounded to nearest even; NaN
  stays NaN), float16 by NumPy's own conversion, both from float32 as torch converts (a float64
  value is first rounded to float32, as torch's ``.bfloat16()`` of a float64 tensor does).
- torch (:class:`HeldTorch` on torch tensors: the GPU path's loop; :class:`HeldTorchArrays` for
  NumPy arrays) stores the held values as tensors of that dtype: a held product runs in it
  (float32 accumulation, one rounding), ``addmm`` too; a product that is not held (never in the
  generated Muon) multiplies the held operands' float32 values.

The NumPy module's iteration runs its ops through :func:`held_ops`: NumPy's own in the weight's
format; for a float32 weight in a held format torch's CPU ops where torch is installed (NumPy
has no bfloat16 or float16 product: the emulation's products are float32 ones, at float32's
speed), else the emulation; for a float64 weight the emulation (its ops compute in float64 before
rounding, where torch's compute in float32). The GPU path's loop takes :func:`held_torch_ops`.
The two agree but for the order a product's sum is accumulated in (and gemm's own order of
``s C + t A B``), which decides the rounding of a result near the midpoint of two neighbours (as
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


class WeightOps:
    """The matrix ops in the weight's dtype: NumPy's own (``held`` changes nothing)."""

    def start(self, values: np.ndarray) -> np.ndarray:
        return values

    def finish(self, values: np.ndarray, like: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(values)

    def transpose(self, a: np.ndarray) -> np.ndarray:
        return np.transpose(a)

    def matmul(self, a: np.ndarray, b: np.ndarray, held: bool) -> np.ndarray:
        return self.round(np.matmul(a, b), held)

    def add(self, a: np.ndarray, b: np.ndarray, held: bool) -> np.ndarray:
        return self.round(np.add(a, b), held)

    def multiply(self, scale: Any, a: np.ndarray, held: bool) -> np.ndarray:
        return self.round(np.multiply(scale, a), held)

    def addmm(self, c: np.ndarray, a: np.ndarray, b: np.ndarray, s: Any, t: Any) -> np.ndarray:
        """``s c + t (a @ b)`` (None: 1), each term in the weight's dtype, then held."""
        product = np.matmul(a, b)
        return self.round(
            np.add(
                c if s is None else np.multiply(s, c),
                product if t is None else np.multiply(t, product),
            ),
            True,
        )

    def round(self, values: np.ndarray, held: bool) -> np.ndarray:
        return values


class HeldNumPy(WeightOps):
    """The ops in a held format, emulated: NumPy's in the weight's dtype, each held result
    rounded to the format (:func:`held_in`)."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt

    def start(self, values: np.ndarray) -> np.ndarray:
        return held_in(values, self.fmt)

    def round(self, values: np.ndarray, held: bool) -> np.ndarray:
        return held_in(values, self.fmt) if held else values


def _torch_module() -> Any:
    """torch, imported when an iteration first runs on it (the NumPy module imports this file)."""
    import torch

    return torch


class TorchOps:
    """The matrix ops on torch tensors in their dtype (the GPU path at ``"weight"``)."""

    def __init__(self) -> None:
        self.torch = _torch_module()

    def start(self, values: Any) -> Any:
        return values

    def finish(self, values: Any, like: Any) -> Any:
        return values.to(like.dtype).contiguous()

    def transpose(self, a: Any) -> Any:
        return self.torch.t(a)

    def matmul(self, a: Any, b: Any, held: bool) -> Any:
        return self.torch.matmul(a, b)

    def add(self, a: Any, b: Any, held: bool) -> Any:
        return self.torch.add(a, b)

    def multiply(self, scale: Any, a: Any, held: bool) -> Any:
        return self.torch.mul(a, scale)

    def addmm(self, c: Any, a: Any, b: Any, s: Any, t: Any) -> Any:
        product = self.torch.matmul(a, b)
        return self.torch.add(
            c if s is None else self.torch.mul(c, s),
            product if t is None else self.torch.mul(product, t),
        )


class HeldTorch(TorchOps):
    """The ops in a held format on torch tensors (CPU or CUDA): held values are tensors of the
    format's dtype, the others float32."""

    def __init__(self, fmt: str) -> None:
        super().__init__()
        self.dtype = {"bfloat16": self.torch.bfloat16, "float16": self.torch.float16}[fmt]

    def start(self, values: Any) -> Any:
        return values.to(self.dtype)

    def _computed(self, values: Any, held: bool) -> Any:
        return values.to(self.dtype) if held else values.to(self.torch.float32)

    def matmul(self, a: Any, b: Any, held: bool) -> Any:
        if held:  # the format's product: float32 accumulation, one rounding
            return self.torch.matmul(a.to(self.dtype), b.to(self.dtype))
        return self.torch.matmul(a.to(self.torch.float32), b.to(self.torch.float32))

    def add(self, a: Any, b: Any, held: bool) -> Any:
        f32 = self.torch.float32
        return self._computed(self.torch.add(a.to(f32), b.to(f32)), held)

    def multiply(self, scale: Any, a: Any, held: bool) -> Any:
        return self._computed(self.torch.mul(a.to(self.torch.float32), float(scale)), held)

    def addmm(self, c: Any, a: Any, b: Any, s: Any, t: Any) -> Any:
        one = 1.0
        return self.torch.addmm(
            c, a, b, beta=one if s is None else float(s), alpha=one if t is None else float(t)
        )


class HeldTorchArrays(HeldTorch):
    """:class:`HeldTorch` for the NumPy module: NumPy arrays in and out, torch CPU ops between."""

    def start(self, values: np.ndarray) -> Any:
        return super().start(self.torch.from_numpy(values))  # a transposed view: its strides

    def finish(self, values: Any, like: np.ndarray) -> np.ndarray:
        out = np.empty(values.shape, dtype=like.dtype)
        self.torch.from_numpy(out).copy_(values)
        return out


WEIGHT_OPS = WeightOps()
HAVE_TORCH = importlib.util.find_spec("torch") is not None
_HELD: dict[tuple[str, str], Any] = {}


def _format(fmt: str) -> str:
    if fmt not in ("weight", "bfloat16", "float16"):
        raise ValueError(f"unknown matrix format {fmt!r}")
    return fmt


def held_ops(fmt: str, like: np.ndarray) -> WeightOps | HeldTorchArrays:
    """The NumPy module's ops of an iteration held in ``fmt`` on arrays like ``like`` (see the
    module docstring for which)."""
    if _format(fmt) == "weight":
        return WEIGHT_OPS
    kind = "torch" if HAVE_TORCH and like.dtype == np.float32 else "numpy"
    ops = _HELD.get((fmt, kind))
    if ops is None:
        ops = _HELD[fmt, kind] = HeldTorchArrays(fmt) if kind == "torch" else HeldNumPy(fmt)
    return ops


def held_torch_ops(fmt: str) -> TorchOps:
    """The GPU path's ops of an iteration held in ``fmt`` (torch tensors of float32 values)."""
    key = (_format(fmt), "tensors")
    ops = _HELD.get(key)
    if ops is None:
        ops = _HELD[key] = TorchOps() if fmt == "weight" else HeldTorch(fmt)
    return ops
