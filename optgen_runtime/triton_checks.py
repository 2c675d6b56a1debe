"""Input checks of the generated Triton modules (:mod:`optgen_runtime.checks`): dtypes, devices,
states, copies, and overlaps across a multi-tensor step's buffers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from optgen_runtime.checks import (
    check_contiguous,
    check_dense,
    check_device,
    check_dtype,
    check_kind,
    check_overlaps,
    check_state_keys,
    check_state_shape,
)
from optgen_runtime.common import check_distinct_states, of_tensor
from optgen_runtime.hyperparams import check_inputs_given
from optgen_runtime.triton_compat import interpreting

WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
STATE_DTYPE = torch.float32


def check_kernel_dtype(rule: str, label: str, x: Any) -> None:
    """A weight or gradient the kernels take: fp32, fp16 or bf16."""
    check_dtype(rule, label, x, WEIGHT_DTYPES, "float32, float16 or bfloat16")


def check_kernel_device(rule: str, label: str, x: Any) -> None:
    """On CUDA, or on any device when the interpreter runs the kernels."""
    if x.device.type != "cuda" and not interpreting():
        raise ValueError(
            f"{rule}: {label} is on {x.device}; Triton kernels need a CUDA tensor "
            "(or TRITON_INTERPRET=1 to run them on CPU tensors)"
        )


def check_weight(rule: str, weight: Any, label: str = "weight") -> None:
    check_kind(rule, label, weight, torch.Tensor, "torch.Tensor")
    check_dense(rule, label, weight)  # before its device: a meta tensor is said to be one
    check_kernel_dtype(rule, label, weight)
    check_kernel_device(rule, label, weight)


class Checked(list):
    """[weight, grad, *inputs, *states] of one tensor as :func:`check_tensors` returns it, with
    the rule, the buffers' labels and which of them a step writes, so :class:`ChunkTable` can
    name overlaps between tensors."""

    def __init__(
        self, rule: str, buffers: Sequence[tuple[str, torch.Tensor]], read_only: int = 1
    ) -> None:
        super().__init__(x for _, x in buffers)
        self.rule = rule
        self.labels = [label for label, _ in buffers]
        self.written = [k == 0 or k > read_only for k in range(len(buffers))]


def check_tensors(
    rule: str,
    weight: Any,
    grad: Any,
    state: Any,
    names: Sequence[str],
    host_names: Sequence[str] = (),
    axes: dict[str, int] | None = None,
    inputs: dict[str, Any] | None = None,
) -> Checked:
    """Check every tensor before anything is written; return [weight, grad, *inputs, *states].

    weight, grad and the inputs (the rule's per-element inputs besides the gradient, read-only
    like it): fp32/fp16/bf16 (each may differ from the weight), states fp32; same shape (a
    state with an axis in ``axes``: one value per row or column, ``vector_shape``), same
    device, dense, contiguous, no buffer the step writes sharing memory with another (the
    gradient and the inputs, only read, may share memory). (Between tensors of a multi-tensor
    step: :func:`check_across`, which :class:`ChunkTable` calls.)
    """
    check_weight(rule, weight)
    check_inputs_given(rule, inputs or {})
    check_state_keys(rule, state, tuple(names) + tuple(host_names))
    axes = axes or {}
    read = [("grad", grad)] + list((inputs or {}).items())
    tensors = read + [(f"state[{n!r}]", state[n]) for n in names]
    keys = [""] * len(read) + list(names)
    for (label, x), name in zip(tensors, keys, strict=True):
        check_kind(rule, label, x, torch.Tensor, "torch.Tensor")
        check_device(rule, label, x, weight)
        check_state_shape(rule, label, x, weight, axes.get(name))
    for label, x in read:
        check_kernel_dtype(rule, label, x)
    for label, x in tensors[len(read) :]:
        check_dtype(rule, label, x, (STATE_DTYPE,), "float32")
    everything = [("weight", weight)] + tensors
    for label, x in everything:
        check_dense(rule, label, x)
        check_contiguous(rule, label, x)
    checked = Checked(rule, everything, len(read))
    check_overlaps(rule, list(zip(checked.labels, checked, checked.written, strict=True)))
    return checked


def check_tensors_each(
    rule: str,
    weights: Sequence[Any],
    grads: Sequence[Any],
    states: Sequence[Any],
    names: Sequence[str],
    host_names: Sequence[str] = (),
    inputs: Sequence[dict[str, Any]] | None = None,
    axes: dict[str, int] | None = None,
) -> list[Checked]:
    """:func:`check_tensors` for every tensor of a multi-tensor step (``prepared_table``
    calls it only when some buffer changed since the last call that passed; a row/column
    rule's ``step_multi`` with its ``axes``), a refusal of one of several naming it. One state dict
    given for two tensors is refused whatever their sizes (empty tensors' buffers overlap
    nothing, but their host states would be read once and written twice)."""
    check_distinct_states(rule, states)
    each = inputs or [None] * len(weights)
    checked, j = [], 0
    try:
        for j in range(len(weights)):
            w, g, s, x = weights[j], grads[j], states[j], each[j]
            checked.append(check_tensors(rule, w, g, s, names, host_names, axes, inputs=x))
    except (TypeError, ValueError) as error:
        raise of_tensor(rule, j, error, len(weights)) from None
    return checked


def check_copies(rule: str, weights: Sequence[Any], copies: Sequence[Any] | None) -> None:
    """``copies`` of a multi-tensor step (``ChunkTable``): None, or one entry per weight, each
    None or the tensor the kernel writes the new weight into, rounded to its dtype (a
    fp16/bf16 parameter of its float32 master copy): a dense, contiguous tensor of a kernel
    dtype (float32, float16, bfloat16), the weight's shape and device. Its overlaps with every
    other buffer are checked with theirs (:func:`check_across`)."""
    if copies is None:
        return
    if not isinstance(copies, list | tuple) or len(copies) != len(weights):
        raise ValueError(
            f"{rule}: copies must be a list of {len(weights)} tensors or None, one per weight"
        )
    for j, (weight, copy) in enumerate(zip(weights, copies, strict=True)):
        if copy is None:
            continue
        label = f"copies[{j}]"
        check_kind(rule, label, copy, torch.Tensor, "torch.Tensor")
        check_device(rule, label, copy, weight)
        check_state_shape(rule, label, copy, weight, None)
        check_kernel_dtype(rule, label, copy)
        check_dense(rule, label, copy)
        check_contiguous(rule, label, copy)


def with_copies(tables: Sequence[Checked], copies: Sequence[Any]) -> list[Checked]:
    """Each tensor's checked buffers with its copy (``copies[j]``, where not None) after them,
    written: for :func:`check_across`."""
    out = []
    for table, copy in zip(tables, copies, strict=True):
        if copy is not None:
            labelled = [*zip(table.labels, table, strict=True), ("copy", copy)]
            table = Checked(table.rule, labelled, table.written.count(False))
        out.append(table)
    return out


def check_across(tables: Sequence[Sequence[torch.Tensor]]) -> None:
    """No buffer a multi-tensor step writes (a weight, a state) shares memory with any buffer of
    any tensor: the same weight or state dict twice, or a gradient that is another tensor's
    weight, would be updated twice or read after being written. Gradients (only read) may share
    memory with each other, and so may the rule's other inputs (also only read). ValueError
    naming the rule and both buffers, before any launch."""
    rule = next((t.rule for t in tables if isinstance(t, Checked)), "step_multi")
    buffers = []
    for j, table in enumerate(tables):
        labels = getattr(table, "labels", None) or [f"buffer {k}" for k in range(len(table))]
        written = getattr(table, "written", None) or [k != 1 for k in range(len(table))]
        buffers += [
            (f"tensor {j}'s {label}", x, w)
            for label, x, w in zip(labels, table, written, strict=True)
        ]
    check_overlaps(rule, buffers)
