"""Reductions on the Triton path: per-chunk float32 partials combined in a fixed order (on the
host, or by a combine kernel on CUDA), and the fixed-order and NaN-propagating helpers the
generated kernels call."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from optgen_runtime.sharding import across_shards
from optgen_runtime.triton_compat import LAUNCH_OPTIONS, tl, triton
from optgen_runtime.triton_launch import LAUNCHES, upload


def add_partials(partials: np.ndarray) -> np.ndarray:
    """Per-chunk partial sums (rows: chunks in order, columns: reductions) added in float64 as
    one pairwise tree: the rows padded with zeros to a power of two, then neighbours added
    level by level (rows 0+1, 2+3, ...; then those sums likewise). A fixed order, so the same
    partials give the same sums on every device and machine: :func:`combine_on_device` adds
    them in the same tree on the GPU (groups of ``COMBINE_GROUP`` rows, then the groups' sums;
    the wider zero padding there changes nothing but the sign of a zero total, and both end
    with ``+ 0.0``, so a zero total is +0.0 either way). The tree's rounding error grows with
    the log of the chunk count (a sequential sum's, with the count)."""
    if not len(partials):
        return np.zeros(partials.shape[1:], dtype=np.float64)
    x = partials.astype(np.float64)
    if len(x) == 1:  # most tensors of a model: one chunk
        return x[0] + 0.0
    size = 1 << (len(x) - 1).bit_length()
    if size != len(x):
        x = np.concatenate([x, np.zeros((size - len(x), *x.shape[1:]))])
    with np.errstate(invalid="ignore"):  # inf + -inf: NaN, as on the device
        while len(x) > 1:
            x = x[0::2] + x[1::2]
    return x[0] + 0.0


def combine_partials(
    partials: np.ndarray, kinds: dict[str, str], names: Sequence[str]
) -> dict[str, float]:
    """Each reduction's per-chunk partials (a column, chunks in order) combined by its kind:
    sums by :func:`add_partials`, max/min NaN-propagating (-inf/+inf over no chunks); a zero
    result is +0.0 (the same bits as :func:`combine_on_device`, whatever the order)."""
    out = {}
    for k, name in enumerate(names):
        column = partials[:, k : k + 1]
        kind = kinds[name]
        if kind == "sum":
            out[name] = float(add_partials(column)[0])
        elif not len(column):
            out[name] = -math.inf if kind == "max" else math.inf
        else:
            out[name] = float(np.max(column) if kind == "max" else np.min(column)) + 0.0
    return out


# Where the partials of a reduction are combined on the device (:func:`combine_on_device`)
# rather than copied to the host whole: on CUDA, where the copy and a host pass over a large
# tensor's partials (1 M of them for a 1 G-element tensor) cost more than the step's kernels.
# Tests add "cpu" to run the combine kernel under the interpreter.
DEVICE_COMBINE = {"cuda"}
COMBINE_GROUP = 1024  # the rows one program of the combine kernel adds as one tree
_KIND_CODES = {"sum": 0, "max": 1, "min": 2}


def combines_on_device(device: torch.device) -> bool:
    return device.type in DEVICE_COMBINE


def combine_plan(starts: np.ndarray, counts: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The levels of :func:`combine_on_device` for segments of rows ``starts[j]`` to
    ``starts[j] + counts[j]`` (every count at least 1): per level, each program's first row
    and row count (at most ``COMBINE_GROUP``) in that level's input; a level's output holds
    each segment's group sums in order, the input of the next, until one row per segment."""
    starts, counts = np.asarray(starts, np.int64), np.asarray(counts, np.int64)
    levels = []
    while True:
        per = -(-counts // COMBINE_GROUP)
        first = np.cumsum(per) - per
        segment = np.repeat(np.arange(len(counts)), per)
        index = np.arange(int(per.sum()), dtype=np.int64) - first[segment]
        levels.append(
            (
                starts[segment] + index * COMBINE_GROUP,
                np.minimum(counts[segment] - index * COMBINE_GROUP, COMBINE_GROUP),
            )
        )
        if (per == 1).all():
            return levels
        starts, counts = first, per


def device_plan(
    starts: np.ndarray, counts: np.ndarray, device: torch.device
) -> list[tuple[torch.Tensor, int]]:
    """:func:`combine_plan` on ``device``: per level, one int64 table (the programs' first
    rows, then their row counts) and the number of programs (a :class:`ChunkTable` keeps its
    own, uploaded once: its segments never change)."""
    levels = []
    for first, count in combine_plan(starts, counts):
        levels.append(
            (upload(torch.from_numpy(np.concatenate([first, count])), device), len(first))
        )
    return levels


def combine_on_device(
    partials: torch.Tensor,
    plan: list[tuple[torch.Tensor, int]],
    kinds: dict[str, str],
    names: Sequence[str],
) -> np.ndarray:
    """:func:`combine_partials` of each segment of ``partials`` (float32 on the device, one
    row per chunk, one column per name; the segments as :func:`device_plan` made ``plan``)
    computed on the device, in the tree order of :func:`add_partials` (max/min in any order:
    NaN-propagating, so the same): the same bits. One launch per level and name (one level up
    to 1,024 chunks a segment, two up to 1 M; counted in ``LAUNCHES["combine"]``, not among the
    rule's launches that ``step_multi`` returns), then one copy of the results (float64, one row
    per segment) to the host."""
    width = len(names)
    src = partials
    for table, rows in plan:
        dst = torch.empty(rows * width, dtype=torch.float64, device=partials.device)
        for k, name in enumerate(names):
            combine_kernel[(rows,)](
                src,
                dst,
                table,
                table[rows:],
                k,
                width,
                KIND=_KIND_CODES[kinds[name]],
                GROUP=COMBINE_GROUP,
                **LAUNCH_OPTIONS,
            )
            LAUNCHES["combine"] += 1  # apart from the rule's own launches
        src = dst
    return src.cpu().numpy().reshape(-1, width) + 0.0


@triton.jit
def _pairs(x, HALF: tl.constexpr, KIND: tl.constexpr):
    """Neighbours of ``x`` (2 * HALF values) combined: 0+1, 2+3, ... (sum), or max/min."""
    y = tl.reshape(x, (HALF, 2))
    if KIND == 0:
        out = tl.sum(y, axis=1)  # one addition per pair: the same in any order
    elif KIND == 1:
        out = tl.reduce(y, 1, nan_max)
    else:
        out = tl.reduce(y, 1, nan_min)
    return out


@triton.jit
def combine_kernel(
    src, dst, starts, counts, column, width, KIND: tl.constexpr, GROUP: tl.constexpr
):
    """One program per output row: the pairwise tree of up to GROUP (1,024) rows of ``src``'s
    ``column`` (float32 partials, or float64 sums of the level below), padded with the kind's
    identity (0, -inf, +inf), in float64, stored to ``dst``'s row (of ``width`` columns)."""
    tl.static_assert(GROUP == 1024)  # the ten levels below
    row = tl.program_id(0).to(tl.int64)
    start = tl.load(starts + row)
    count = tl.load(counts + row)
    lanes = tl.arange(0, GROUP).to(tl.int64)
    if KIND == 0:
        other = 0.0
    elif KIND == 1:
        other = -float("inf")
    else:
        other = float("inf")
    x = tl.load(src + (start + lanes) * width + column, mask=lanes < count, other=other)
    x = x.to(tl.float64)
    x = _pairs(x, 512, KIND)
    x = _pairs(x, 256, KIND)
    x = _pairs(x, 128, KIND)
    x = _pairs(x, 64, KIND)
    x = _pairs(x, 32, KIND)
    x = _pairs(x, 16, KIND)
    x = _pairs(x, 8, KIND)
    x = _pairs(x, 4, KIND)
    x = _pairs(x, 2, KIND)
    x = _pairs(x, 1, KIND)
    tl.store(dst + row * width + column + tl.arange(0, 1), x)


@triton.jit
def fixed_sum(x):
    """A block's float32 sum of ``x`` (1-D float32, masked lanes 0), the same bits whatever the
    compiled kernel's register layout: the sums reduction phases store per block.

    ``tl.sum`` adds in an order set by the layout Triton picks, and that differs between a
    vectorised variant (4 or 8 elements per thread) and a scalar one (1), so float32 sums of the
    same data differed in the last bits between them on a GPU (LAMB's and LARS's, on an H200).
    Here each term becomes an int64: the term in units of 2**-40 times the block's largest
    power of two (below 2**41 in magnitude; truncated toward zero, so terms below 2**-40 of
    the largest lose their low bits), converted exactly through float64. Integer addition is
    associative, so their sum (below 2**53 for up to 4096 terms) is exact in any order; it is
    scaled back exactly in float64 and rounded to float32 once. A block holding inf or NaN
    gives what IEEE addition gives in any order: NaN for a NaN or for +inf with -inf, else
    that inf. An all-zero block gives +0.0 (IEEE gives -0.0 when every term is -0.0)."""
    bits = x.to(tl.int32, bitcast=True)
    top = tl.max((bits >> 23) & 0xFF, axis=0)  # the largest biased exponent: 255 for inf/NaN
    unit = tl.maximum(top, 1) - 127 - 40  # the fixed point's unit is 2**unit
    up = ((1023 - unit).to(tl.int64) << 52).to(tl.float64, bitcast=True)  # 2**-unit
    down = ((1023 + unit).to(tl.int64) << 52).to(tl.float64, bitcast=True)  # 2**unit
    total = tl.sum((x.to(tl.float64) * up).to(tl.int64), axis=0)
    result = (total.to(tl.float64) * down).to(tl.float32)
    if top == 0xFF:  # a uniform branch: only a block holding inf or NaN reduces again
        nan = tl.max((x != x).to(tl.int32), axis=0)
        up_inf = tl.max((x == float("inf")).to(tl.int32), axis=0)
        down_inf = tl.max((x == -float("inf")).to(tl.int32), axis=0)
        result = tl.where(up_inf > 0, float("inf"), -float("inf"))
        result = tl.where((nan + up_inf * down_inf) > 0, float("nan"), result)
    return result


@triton.jit
def nan_max(a, b):
    """The combine function of a max reduction: NaN-propagating (tl.max drops NaN)."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def nan_min(a, b):
    """The combine function of a min reduction: NaN-propagating."""
    return tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)


def reduce_sums(
    kernel: Any,
    buffers: list[torch.Tensor],
    scalars: Sequence[float],
    kinds: dict[str, str],
    names: Sequence[str],
    block: int,
) -> dict[str, float]:
    """Run a reduction kernel, then combine its per-block partials.

    The kernel writes one float32 partial per block and name, each to its own slot (no
    atomics); they are combined by :func:`combine_partials` (sums in float64, one pairwise
    tree) on the host, or on CUDA by :func:`combine_on_device` in the same order, with only the
    sums copied to the host (one device synchronisation per phase either way): the same bits on
    every run and every device for the same partials. Returns Python floats.
    """
    n = buffers[0].numel()
    blocks = triton.cdiv(n, block)
    partial = torch.zeros(blocks * len(names), dtype=torch.float32, device=buffers[0].device)
    if n:
        kernel[(blocks,)](
            *buffers, partial, n, *(float(s) for s in scalars), BLOCK_SIZE=block, **LAUNCH_OPTIONS
        )
        LAUNCHES["count"] += 1
    if n and combines_on_device(partial.device):
        plan = device_plan(np.zeros(1, np.int64), np.array([blocks]), partial.device)
        row = combine_on_device(partial, plan, kinds, names)
        sums = {name: float(value) for name, value in zip(names, row[0], strict=True)}
    else:
        sums = combine_partials(partial.cpu().numpy().reshape(blocks, len(names)), kinds, names)
    return across_shards(kinds, [sums])[0]  # a sharded tensor's: over all its shards
