"""Host glue of the Triton matrix rules (Muon and the rules of row and column factors)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from optgen_runtime.triton_compat import LAUNCH_OPTIONS, triton
from optgen_runtime.triton_launch import LAUNCHES
from optgen_runtime.triton_reduce import combine_partials


def domain_size(dims: tuple[int, int, int], domain: str) -> int:
    """How many values vary along ``domain`` (a subset of "brc") of a (batch, rows, cols) view."""
    size = 1
    for n, a in zip(dims, "brc", strict=True):
        size *= n if a in domain else 1
    return size


def matrix_sweep(
    kernel: Any,
    shape: str,
    tensors: Sequence[torch.Tensor],
    dims: tuple[int, int, int],
    domain: str,
    scalars: Sequence[float],
    block: int,
    kinds: dict[str, str] | None = None,
    names: Sequence[str] = (),
    *,
    update: bool = False,
    copy: torch.Tensor | None = None,
) -> dict[str, float]:
    """Launch one kernel of a sweep over ``domain`` of the (batch, rows, cols) view.

    ``update``: the rule's update kernel, which takes ``copy_ptr`` and ``COPY_OUT``: ``copy``
    (None: none, the weight typing the unused pointer) the tensor it also writes the new weight
    into, rounded (``step_multi``'s copies).

    ``shape`` "flat": one program per block of the domain's flat indices (maps; whole-tensor
    reductions ``names`` as one float32 partial per block, combined on the host as
    :func:`combine_partials` does); "last": one program per index of the other axes, looping
    over the last; "middle": one program per (matrix, block of columns), looping over rows. The
    axis reductions write their vectors on the device (no host synchronisation)."""
    batch, rows, cols = dims
    size = domain_size(dims, domain)
    if shape == "flat":
        grid = triton.cdiv(size, block)
    elif shape == "last":
        last = {"brc": cols, "br": rows, "bc": cols}[domain]
        grid = size // last if last else domain_size(dims, domain[:-1])
    else:
        grid = batch * triton.cdiv(cols, block)
    partial = torch.zeros(max(grid * len(names), 1), dtype=torch.float32, device=tensors[0].device)
    copy_out = {"copy_ptr": tensors[0] if copy is None else copy, "COPY_OUT": copy is not None}
    copy_out = copy_out if update else {}
    if grid:
        kernel[(grid,)](
            *tensors,
            partial,
            size,
            batch,
            rows,
            cols,
            *(float(s) for s in scalars),
            BLOCK_SIZE=block,
            **copy_out,
            **LAUNCH_OPTIONS,
        )
        LAUNCHES["count"] += 1
    if not names:
        return {}
    found = partial[: grid * len(names)].cpu().numpy().reshape(grid, len(names))
    return combine_partials(found, kinds or {}, names)


def group_totals(sums: list[dict[str, float]], kinds: dict[str, str], names: Sequence[str]) -> None:
    """Replace each tensor's group reductions ``names`` by their totals over all the tensors
    (sums added in tensor order, in float64; max/min NaN-propagating), in place."""
    for name in names:
        values = np.array([[s[name]] for s in sums], dtype=np.float64)
        total = combine_partials(values, kinds, [name])[name]
        for s in sums:
            s[name] = total
