"""The buffer checks, each written once.

The generated NumPy modules (through :mod:`optgen_runtime.numpy_support`), the generated Triton
modules (through :mod:`optgen_runtime.triton_checks`) and the ``torch.optim``-style classes
(:mod:`optgen_runtime.optim.state`) check the same facts of a weight, its gradient and its state
with these functions, every one before anything is written. They take NumPy arrays and torch
tensors alike and import neither (the NumPy modules run without torch).

Messages read ``"{where}: {label} ..."``: ``where`` names the rule or the optimizer class,
``label`` the buffer (``"grad"``, ``"parameter 3's state['mean']"``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from optgen_runtime.common import vector_shape


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


def check_state_shape(
    where: str, label: str, x: Any, like: Any, axis: int | None, like_label: str = "weight"
) -> None:
    """``x`` has the shape of ``like``, or (``axis`` -1 or -2) of its row or column vector."""
    if axis is None:
        check_shape(where, label, x, like, like_label)
        return
    want = vector_shape(like.shape, axis)
    if tuple(x.shape) != want:
        per = "row" if axis == -1 else "column"
        of = like_label if like_label.startswith(("its ", "the ")) else f"the {like_label}"
        raise ValueError(
            f"{where}: {label} shape is {tuple(x.shape)}, expected {want} (one value per {per} "
            f"of {of}, {tuple(like.shape)})"
        )


def check_device(where: str, label: str, x: Any, like: Any, like_label: str = "weight") -> None:
    """``x`` is on the device of ``like`` (tensors)."""
    if x.device != like.device:
        raise ValueError(f"{where}: {label} is on {x.device}, {like_label} is on {like.device}")


class SparseRefused(TypeError, RuntimeError):
    """A sparse tensor where only a dense one is taken: a TypeError, and the RuntimeError that
    torch.optim raises for a sparse gradient it refuses (either ``except`` catches it)."""


class SparseSettingRefused(ValueError, RuntimeError):
    """A sparse gradient under a setting that refuses it (weight decay): a ValueError, and the
    RuntimeError that torch.optim raises there."""


def check_dense(where: str, label: str, x: Any) -> None:
    """``x`` is a dense (strided) tensor with data: not sparse in any layout (COO, CSR, CSC,
    BSR, BSC), not a meta tensor. NumPy arrays always are."""
    layout = getattr(x, "layout", None)
    if getattr(x, "is_sparse", False) or (layout is not None and "sparse" in str(layout)):
        kind = f" ({layout})" if layout is not None else ""
        raise SparseRefused(f"{where}: {label} is sparse{kind}; only dense tensors are supported")
    if layout is not None and str(layout) != "torch.strided":
        raise TypeError(f"{where}: {label} has layout {layout}; only dense tensors are supported")
    if getattr(x, "is_meta", False):
        raise ValueError(
            f"{where}: {label} is a meta tensor (shape and dtype only, no data); "
            "only tensors with data can be updated"
        )
    if layout is not None and x.is_neg():  # memory holds -x: the kernels would read x
        raise ValueError(
            f"{where}: {label} has torch's negative bit set (a lazily negated view, as "
            "``z.conj().imag`` makes): pass ``x.resolve_neg()``"
        )


def check_contiguous(where: str, label: str, x: Any) -> None:
    """``x`` is contiguous (C order for NumPy arrays), as the kernels index it flat."""
    if hasattr(x, "is_contiguous"):
        if not x.is_contiguous():
            raise ValueError(f"{where}: {label} must be contiguous")
    elif not x.flags.c_contiguous:
        raise ValueError(f"{where}: {label} must be C-contiguous")


def _span(x: Any) -> tuple[Any, int, int]:
    """(device, first byte, one past the last byte) of the memory an array or tensor can touch:
    its whole extent, gaps of a strided view included (so a conservative overlap test)."""
    if hasattr(x, "data_ptr"):
        start, item = x.data_ptr(), x.element_size()
        strides = [s * item for s in x.stride()]
        device = str(x.device)
    else:
        start, item = x.__array_interface__["data"][0], x.itemsize
        strides = list(x.strides)
        device = "cpu"
    if 0 in tuple(x.shape):
        return device, start, start
    low = sum((n - 1) * s for n, s in zip(x.shape, strides, strict=True) if s < 0)
    high = sum((n - 1) * s for n, s in zip(x.shape, strides, strict=True) if s > 0)
    return device, start + low, start + high + item


def view_key(x: Any) -> tuple[Any, ...]:
    """Equal for two arrays or tensors that view the same elements the same way."""
    device, start, end = _span(x)
    strides = x.stride() if hasattr(x, "stride") else x.strides
    return device, start, end, str(x.dtype), tuple(x.shape), tuple(strides)


def check_overlaps(where: str, buffers: Sequence[tuple[str, Any, bool]]) -> None:
    """No buffer that is written overlaps any other buffer of ``(label, buffer, written)``:
    buffers only read may share memory with each other; empty ones never overlap. Memory is
    compared by extent (a strided view covers the span from its first to its last element).
    Raises ValueError naming the first pair found, in the callers' order on ties."""
    spans = []
    for label, x, written in buffers:
        device, start, end = _span(x)
        if end > start:
            spans.append((device, start, end, label, written))
    spans.sort(key=lambda span: (span[0], span[1]))  # stable: equal starts keep their order
    furthest: dict[tuple[Any, str], tuple[int, str]] = {}  # (device, "any"/"written"): max end
    for device, start, end, label, written in spans:
        # a written buffer may overlap nothing seen before it, a read one no written one
        seen = furthest.get((device, "any" if written else "written"))
        if seen is not None and start < seen[0]:
            raise ValueError(f"{where}: {seen[1]} and {label} share memory")
        for kind in ("any", "written") if written else ("any",):
            seen = furthest.get((device, kind))
            if seen is None or end > seen[0]:
                furthest[device, kind] = (end, label)


def check_disjoint(where: str, buffers: Sequence[tuple[str, Any]]) -> None:
    """No two of the ``(label, buffer)`` pairs share memory; empty ones never do."""
    check_overlaps(where, [(label, x, True) for label, x in buffers])


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
