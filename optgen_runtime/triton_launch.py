"""Launch glue of the generated Triton modules: the launch counter, one launch over a tensor, small
host tables uploaded to the device."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from optgen_runtime.triton_compat import LAUNCH_OPTIONS, triton

# Kernel launches made by the Triton helpers: "count" every launch (launch, ChunkTable, a matrix
# sweep), "combine" those of the combine kernel (tests count them).
LAUNCHES = {"count": 0, "combine": 0}


def launch(
    kernel: Any,
    buffers: list[torch.Tensor],
    scalars: Sequence[float],
    block: int,
    ints: Sequence[int] = (),
    **named: Any,
) -> None:
    """One launch over all elements; host scalars passed as Python floats, then ``ints``, then
    the kernel's ``named`` arguments (a matrix rule's writes: ``copy_ptr``, ``COPY_OUT``)."""
    n = buffers[0].numel()
    if n == 0:
        return
    LAUNCHES["count"] += 1
    grid = (triton.cdiv(n, block),)
    kernel[grid](
        *buffers,
        n,
        *(float(s) for s in scalars),
        *ints,
        **named,
        BLOCK_SIZE=block,
        **LAUNCH_OPTIONS,
    )


def padded(n: int, align: int = 2) -> int:
    """``n`` rounded up to a multiple of ``align`` (2 int64 or 4 float32 entries: 16 bytes, so
    every table a kernel gets starts on a 16-byte boundary, as Triton specializes on)."""
    return -(-n // align) * align


def upload(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host table on ``device``; pinned first on CUDA, so the copy is asynchronous."""
    if device.type == "cuda":
        host = host.pin_memory()
    return host.to(device, non_blocking=True)
