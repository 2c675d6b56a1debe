"""The buffer checks, each written once.

The generated NumPy modules (through :mod:`optgen_runtime.numpy_support`), the generated Triton
modules (through :mod:`optgen_runtime.triton_support`) and the ``torch.optim``-style classes
(:mod:`optgen_runtime.optim.state`) check the same facts of a weight, its gradient and its state
with these functions, every one before anything is written. They take NumPy arrays and torch
tensors alike and import neither (the NumPy modules run without torch).

Messages read ``"{where}: {label} ..."``: ``where`` names the rule or the optimizer class,
``label`` the buffer (``"grad"``, ``"parameter 3's state['mean']"``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any


def check_kind(where: str, label: str, x: Any, kind: type, kind_name: str) -> None:
    """``x`` is an instance of ``kind`` (``numpy.ndarray``, ``torch.Tensor``)."""
    if not isinstance(x, kind):
        raise TypeError(f"{where}: {label} must be a {kind_name}, got {type(x).__name__}")


def check_dtype(where: str, label: str, x: Any, allowed: Collection[Any], wanted: str) -> None:
    """``x.dtype`` is one of ``allowed`` (``wanted`` says which, in words)."""
    if x.dtype not in allowed:
        raise TypeError(f"{where}: {label} dtype must be {wanted}, got {x.dtype}")


def check_shape(where: str, label: str, x: Any, like: Any, like_label: str = "weight") -> None:
    """``x`` has the shape of ``like``."""
    if tuple(x.shape) != tuple(like.shape):
        raise ValueError(
            f"{where}: {label} shape is {tuple(x.shape)}, {like_label}'s is {tuple(like.shape)}"
        )


def check_device(where: str, label: str, x: Any, like: Any, like_label: str = "weight") -> None:
    """``x`` is on the device of ``like`` (tensors)."""
    if x.device != like.device:
        raise ValueError(f"{where}: {label} is on {x.device}, {like_label} is on {like.device}")


def check_dense(where: str, label: str, x: Any) -> None:
    """``x`` is a dense (strided) tensor with data: not sparse in any layout (COO, CSR, CSC,
    BSR, BSC), not a meta tensor. NumPy arrays always are."""
    layout = getattr(x, "layout", None)
    if getattr(x, "is_sparse", False) or (layout is not None and "sparse" in str(layout)):
        kind = f" ({layout})" if layout is not None else ""
        raise TypeError(f"{where}: {label} is sparse{kind}; only dense tensors are supported")
    if layout is not None and str(layout) != "torch.strided":
        raise TypeError(f"{where}: {label} has layout {layout}; only dense tensors are supported")
    if getattr(x, "is_meta", False):
        raise ValueError(
            f"{where}: {label} is a meta tensor (shape and dtype only, no data); "
            "only tensors with data can be updated"
        )


def check_contiguous(where: str, label: str, x: Any) -> None:
    """``x`` is contiguous (C order for NumPy arrays), as the kernels index it flat."""
    if hasattr(x, "is_contiguous"):
        if not x.is_contiguous():
            raise ValueError(f"{where}: {label} must be contiguous")
    elif not x.flags.c_contiguous:
        raise ValueError(f"{where}: {label} must be C-contiguous")


def _span(x: Any) -> tuple[int, int]:
    """(first byte, size in bytes) of a contiguous array or tensor."""
    if hasattr(x, "data_ptr"):
        return x.data_ptr(), x.numel() * x.element_size()
    return x.__array_interface__["data"][0], x.nbytes


def check_disjoint(where: str, buffers: Sequence[tuple[str, Any]]) -> None:
    """No two of the (contiguous) ``(label, buffer)`` pairs share memory; empty ones never do."""
    spans = []
    for label, x in buffers:
        start, size = _span(x)
        if size:
            spans.append((start, start + size, label))
    spans.sort(key=lambda span: span[0])  # stable: equal starts keep the callers' order
    for (_, end, a), (start, _, b) in zip(spans, spans[1:], strict=False):
        if start < end:
            raise ValueError(f"{where}: {a} and {b} share memory")


def state_key_problems(
    state: Mapping[str, Any], names: Sequence[str], optional: Collection[str] = ()
) -> tuple[list[str], list[str]]:
    """(missing, unexpected) entries of a state that must hold ``names`` and may hold
    ``optional``."""
    missing = [n for n in names if n not in state]
    extra = [n for n in state if n not in names and n not in optional]
    return missing, extra


def check_state_keys(
    where: str,
    state: Any,
    names: Sequence[str],
    optional: Collection[str] = (),
    label: str = "state",
) -> None:
    """``state`` is a dict with exactly the entries ``names`` (and maybe ``optional`` ones)."""
    if not isinstance(state, Mapping):
        raise TypeError(
            f"{where}: {label} must be a dict of {tuple(names)}, got {type(state).__name__}"
        )
    missing, extra = state_key_problems(state, names, optional)
    if missing or extra:
        may = f" (and may have {tuple(optional)})" if optional else ""
        raise ValueError(
            f"{where}: {label} must have exactly the entries {tuple(names)}{may}; "
            f"missing {missing}, unexpected {extra}"
        )
