"""Parameters that are not contiguous: how the torch classes show them to the modules.

The NumPy, numba and Triton modules index every buffer flat, so they take contiguous arrays
only. A torch user's parameters need not be: ``model.to(memory_format=torch.channels_last)``
gives a convolution's weight strides ``(27, 1, 9, 3)`` for shape ``(8, 3, 3, 3)``, and its
gradient and torch.optim's state buffers the same strides; a parameter can be a transposed or
sliced view. The classes take any parameter that does not overlap itself (an in-place update
of one that does would write one element through several indices; refused before anything is
written) and show each parameter's buffers to the module as ``Shown`` says:

- a rule whose update sees each element alone (no per-row or per-column states or sums, no
  matrix values, no per-element noise, which is drawn by element index) is shown every buffer
  of the parameter in the parameter's memory order (``memory_order``: a permutation of the
  dims under which the parameter is contiguous). Its whole-tensor and group sums then add the
  elements in memory order too, as torch's own reductions over such a tensor do. The state
  buffers the class creates for such a parameter take its strides (as torch.optim's do), so
  channels_last weights, gradients and states are all shown as they lie: no copy;
- any other rule (Adafactor's row and column factors, Muon's matrix, SGLD's draws) is shown
  the parameter as it is indexed (its state buffers are made C-contiguous);
- a buffer that is still not contiguous once shown (a sliced view, a gradient or loaded state
  of other strides) goes through a contiguous copy: a copy of a buffer the step only reads, a
  working copy of one it writes, written back once the module's writes are done (``done``).
"""

from __future__ import annotations

from functools import cache
from types import ModuleType

import torch


def memory_order(x: torch.Tensor) -> tuple[int, ...] | None:
    """A permutation of ``x``'s dims under which it is contiguous (channels_last's
    ``(0, 2, 3, 1)``), or None where there is none (a view with gaps between its elements)."""
    perm = tuple(sorted(range(x.dim()), key=lambda d: (-x.stride(d), d)))
    return perm if x.permute(perm).is_contiguous() else None


def overlap_problem(x: torch.Tensor, label: str) -> str | None:
    """Why ``x`` cannot be updated in place (two of its indices may reach one element), or
    None."""
    if not overlaps_itself(x):
        return None
    return (
        f"{label} overlaps itself (shape {tuple(x.shape)}, strides {tuple(x.stride())}): an "
        "in-place update would write one element through several indices"
    )


def overlaps_itself(x: torch.Tensor) -> bool:
    """Whether two of ``x``'s indices may reach one element (an ``expand``ed tensor, a stride
    of 0): the dims of more than one element, by increasing stride, must each step past all of
    the previous ones' elements. Conservative: an interleaving that never collides but breaks
    this order counts as overlapping."""
    reach = 1
    for stride, size in sorted((s, n) for s, n in zip(x.stride(), x.shape, strict=True) if n > 1):
        if stride < reach:
            return True
        reach = stride * size
    return False


def real_view(x: torch.Tensor) -> torch.Tensor:
    """A complex tensor's real view (``torch.view_as_real``), any other as it is."""
    return torch.view_as_real(x) if x.is_complex() else x


def takes_complex(meta: ModuleType) -> bool:
    """Whether the rule updates a complex parameter as torch.optim does: on its real view,
    each real and imaginary part alone (an elementwise rule without per-element inputs;
    whole-tensor sums then add both parts' squares: ``|z|**2``)."""
    return elementwise(meta) and not meta.INPUTS


@cache
def elementwise(meta: ModuleType) -> bool:
    """Whether the rule's update sees each element alone (so any order of the elements is
    the same update): no per-row or per-column states or sums, no sizes but the element count,
    no matrix values, no per-element draws (noise is drawn by element index)."""
    return not (
        meta.STATE_AXES
        or meta.DRAWS
        or getattr(meta, "MATRIX_VALUES", ())
        or set(getattr(meta, "SIZES", ())) - {"numel"}
        or any(axis is not None for axis in getattr(meta, "REDUCE_AXES", {}).values())
    )


class Shown:
    """One parameter's buffers as its module is shown them: each permuted by ``perm`` (None:
    as indexed), then made contiguous; a written buffer that is not contiguous by then through
    a working copy, written back by ``done``."""

    __slots__ = ("copies", "perm")

    def __init__(self, perm: tuple[int, ...] | None) -> None:
        self.perm = perm
        self.copies: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _view(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` permuted; a complex tensor as its real view (``torch.view_as_real``: real and
        imaginary parts as a last dim of 2, each updated alone, as torch.optim does)."""
        if x.is_complex():
            x = real_view(x)
            return x.permute((*self.perm, x.dim() - 1)) if self.perm else x
        return x.permute(self.perm) if self.perm else x

    def read(self, x: torch.Tensor) -> torch.Tensor:
        """A buffer the step only reads (the gradient, a step input)."""
        return self._view(x).contiguous()

    def written(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A buffer the step writes (the weight, a state tensor); ``dtype``: the one the module
        computes it in (a fp16/bf16 weight on the CPU: float32, rounded back by ``done`` to
        the nearest, ties to even, as a kernel's store)."""
        view = self._view(x)
        if view.is_contiguous() and (dtype is None or dtype == view.dtype):
            return view
        work = view.to(dtype or view.dtype, memory_format=torch.contiguous_format, copy=True)
        self.copies.append((view, work))
        return work

    def done(self) -> None:
        """The working copies written back (after the module's writes)."""
        for view, work in self.copies:
            view.copy_(work)
        self.copies.clear()
