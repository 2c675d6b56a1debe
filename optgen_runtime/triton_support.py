"""Input checks (:mod:`optgen_runtime.checks`) and launch glue for the generated Triton modules."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from itertools import chain
from operator import attrgetter, eq, itemgetter, or_
from typing import Any, ClassVar, NamedTuple

import numpy as np
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
from optgen_runtime.common import (
    check_distinct_states,
    check_inputs_given,
    host_state_values,
    of_tensor,
)
from optgen_runtime.scalars import (
    check_scalars,
    computed,
    computed_each,
    distinct,
    distinct_counts,
    step_scalar_rows,
    sum_scalar_rows,
)
from optgen_runtime.sharding import across_shards, shards_combined
from optgen_runtime.triton_compat import LAUNCH_OPTIONS, interpreting, tl, triton

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
    """:func:`check_tensors` for every tensor of a multi-tensor step (``ChunkTable.prepared``
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
            (_upload(torch.from_numpy(np.concatenate([first, count])), device), len(first))
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


def _padded(n: int, align: int = 2) -> int:
    """``n`` rounded up to a multiple of ``align`` (2 int64 or 4 float32 entries: 16 bytes, so
    every table a kernel gets starts on a 16-byte boundary, as Triton specializes on)."""
    return -(-n // align) * align


def float32_rows(rows: Sequence[Sequence[float]], checked: bool = False) -> np.ndarray:
    """Rows of host scalars as a float32 array, each double rounded to nearest (even),
    overflowing to inf: exactly what Triton's launcher does to a Python float passed as an fp32
    argument (a C ``(float)`` cast; the interpreter casts with NumPy), so a kernel reading the
    table computes what the single-tensor kernel computes with the same scalars as arguments.
    A rule without host scalars gets one 0 per row (a table is never empty). ``checked``: every
    finite value passed ``check_scalars`` for float32, so none overflows (no warning to mute)."""
    array = None
    if rows and len(rows[0]) and all(type(x) is float for x in rows[0]):
        try:  # rows of Python floats (host code's results): converted in one C loop
            array = np.array(rows, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):  # ragged, or another kind of number
            array = None
        if array is not None and array.ndim != 2:
            array = None
    if array is None:
        array = np.array([[float(x) for x in row] or [0.0] for row in rows], dtype=np.float64)
    if checked:
        return array.astype(np.float32)
    with np.errstate(over="ignore"):
        return array.astype(np.float32)


def _padded_table(values: np.ndarray) -> torch.Tensor:
    """A flat float32 table padded with zeros to 16 bytes."""
    return torch.from_numpy(_padded_rows(values, np.arange(len(values))))


def _padded_rows(rows: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``rows[index]`` flat, float32, padded with zeros to 16 bytes (one row broadcast where
    there is one: no gather, ``index`` only counted)."""
    n, width = len(index), rows.shape[1]
    table = np.empty(_padded(n * width, 4), dtype=np.float32)
    table[n * width :] = 0
    if len(rows) == 1:
        table[: n * width].reshape(n, width)[:] = rows[0]
    else:
        table[: n * width].reshape(n, width)[:] = rows[index]
    return table


class ScalarRows(NamedTuple):
    """The host scalars of a multi-tensor step: each distinct row once (``rows``, float32, as
    :func:`float32_rows` rounds), and the row of each tensor (``index``): the tensors of a step
    mostly share one row, which is then computed and converted once and broadcast."""

    rows: np.ndarray  # float32, (distinct rows, scalars per row)
    index: np.ndarray  # int64, one per tensor

    @classmethod
    def of(cls, rows: Sequence[Sequence[float]]) -> ScalarRows:
        """One row per tensor; the rows of tensors at one step count are one object
        (``computed_each``): each distinct object converted once (by identity: 0.0 and -0.0, or
        two NaNs, are never merged)."""
        ids = list(map(id, rows))
        first = dict.fromkeys(ids)  # distinct objects, in order
        where = {k: i for i, k in enumerate(first)}
        distinct_rows = dict(zip(ids, rows, strict=True))
        index = np.fromiter(map(where.__getitem__, ids), dtype=np.int64, count=len(ids))
        return cls(float32_rows([distinct_rows[k] for k in first]), index)

    def table(self, members: np.ndarray | None = None) -> torch.Tensor:
        """The flat float32 table of the tensors ``members`` (all: None), one row each, padded
        to 16 bytes."""
        return torch.from_numpy(self.padded(members))

    def padded(self, members: np.ndarray | None = None) -> np.ndarray:
        """:meth:`table` as a NumPy array."""
        if len(self.rows) == 1:  # broadcast: no gather
            return _padded_rows(self.rows, self.index if members is None else members)
        index = self.index if members is None else self.index[members]
        return _padded_rows(self.rows, index)


def scalar_table(rows: Sequence[Sequence[float]]) -> torch.Tensor:
    """Host scalars as a flat float32 table, one row per tensor, padded to 16 bytes
    (:class:`ScalarRows`: rounded as Triton rounds a float kernel argument)."""
    return ScalarRows.of(rows).table()


def step_rows(
    rule: str,
    host_code: Any,
    ts: Sequence[int],
    legend: dict[str, str],
    /,
    **kwargs: Any,
) -> ScalarRows:
    """The host scalars of a multi-tensor step whose host code depends on the tensor only
    through its step count (no host states, sums or sizes): ``host_code(t, **kwargs)`` computed
    and range-checked (``check_scalars`` against ``legend``) once per distinct step count, in
    order of first appearance (the errors ``computed_each`` gives), and broadcast: no Python
    row per tensor."""
    distinct_ts, index = distinct_counts(ts)
    results = [computed(rule, host_code, t, **kwargs)[0] for t in distinct_ts]
    for scalars in results:
        check_scalars(rule, legend, scalars, torch.float32)
    return ScalarRows(float32_rows(results), index)


def host_columns(rule: str, states: Sequence[Any], names: Sequence[str]) -> list[list[float]]:
    """The host states of a multi-tensor step, one column of floats per name, read once: each a
    finite float (or int) in every state dict, at C speed; anything else goes through
    ``host_state_values`` tensor by tensor, which names the first bad one."""
    try:
        columns = [list(map(itemgetter(name), states)) for name in names]
        kinds = set(map(type, chain.from_iterable(columns)))
        if set(map(type, states)) == {dict} and not kinds - {float, int}:
            columns = [col if kinds == {float} else list(map(float, col)) for col in columns]
            if all(math.isfinite(math.fsum(col)) for col in columns):  # inf/NaN reach the sum
                return columns
    except (KeyError, TypeError, OverflowError, ValueError):  # fsum: inf + -inf, overflow
        pass
    each = [host_state_values(rule, s, tuple(names)) for s in states]
    return [[h[name] for h in each] for name in names]


def host_rows(
    rule: str,
    host_code: Any,
    ts: Sequence[int],
    names: Sequence[str],
    columns: Sequence[Sequence[float]],
    legend: dict[str, str],
    /,
    **kwargs: Any,
) -> tuple[ScalarRows, list[dict[str, float]]]:
    """The host scalars and new host states of a multi-tensor step whose host code takes the
    step count and the host states (``columns``, :func:`host_columns`): computed once per
    distinct (t, host states), then range-checked (what ``computed_each`` and the checks of
    each ``distinct`` result give, in that order), with no Python row per tensor. A zero among
    the host states (0.0 and -0.0 are one key, and the host code may tell them apart) goes
    through ``computed_each``. Returns the rows and each tensor's new host states."""
    if any(0.0 in column for column in columns):
        each = [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
        new = computed_each(rule, host_code, ts, each, **kwargs)
        for scalars, _ in distinct(new):
            check_scalars(rule, legend, scalars, torch.float32)
        return ScalarRows.of([scalars for scalars, _ in new]), [h for _, h in new]
    keys = list(zip(ts, *columns, strict=True))
    where = {key: k for k, key in enumerate(dict.fromkeys(keys))}
    results = [
        computed(rule, host_code, key[0], **kwargs, **dict(zip(names, key[1:], strict=True)))
        for key in where
    ]
    for scalars, _ in results:
        check_scalars(rule, legend, scalars, torch.float32)
    index = list(map(where.__getitem__, keys))
    new = [host_new for _, host_new in results]
    rows = ScalarRows(float32_rows([scalars for scalars, _ in results]), np.array(index, np.int64))
    return rows, list(map(new.__getitem__, index))


def sum_rows(
    rule: str,
    host_code: Any,
    rows_code: Any,
    ts: Sequence[int],
    names: Sequence[str],
    sums: np.ndarray,
    legend: dict[str, str],
    /,
    **kwargs: Any,
) -> ScalarRows:
    """The host scalars of a multi-tensor step whose host code takes the step count and each
    tensor's sums (``sums``: float64, a row per tensor, a column per name in ``names``;
    :meth:`ChunkTable.reduce_rows`), range-checked for float32: ``scalars.sum_scalar_rows``
    (all at once by ``rows_code``, the rule's ``host_scalars_rows``, where it can; else tensor
    by tensor, raising the errors those name), rounded as :func:`float32_rows` rounds."""
    values = sum_scalar_rows(
        rule, host_code, rows_code, ts, names, sums, legend, torch.float32, **kwargs
    )
    return ScalarRows(_float32(values), np.arange(len(ts), dtype=np.int64))


def phase_rows(
    rule: str,
    host_code: Any,
    ts: Sequence[int],
    legend: dict[str, str],
    /,
    **kwargs: Any,
) -> ScalarRows:
    """A reduction phase's scalars when they depend on the step count alone, not on the
    tensor: ``scalars.step_scalar_rows`` for float32 (once per distinct step count, checked),
    broadcast."""
    rows, index = step_scalar_rows(rule, host_code, ts, legend, torch.float32, **kwargs)
    return ScalarRows(_float32(rows), index)


def _float32(values: np.ndarray) -> np.ndarray:
    """Checked float64 rows of scalars as :func:`float32_rows` rounds them (one 0 per row
    where there are no scalars: a table is never empty)."""
    if not values.shape[1]:
        return np.zeros((len(values), 1), dtype=np.float32)
    with np.errstate(over="ignore"):  # checked: only a NaN or inf the checks let through
        return values.astype(np.float32)


Amp = tuple[torch.Tensor, torch.Tensor]  # the kernels' (found_inf, grad_scale)
_NO_AMP: dict[torch.device, Amp] = {}


def amp_flags(
    found_inf: torch.Tensor | None, scale: torch.Tensor | None, device: torch.device
) -> Amp:
    """The multi-tensor kernels' ``amp`` argument on ``device``: (found_inf, grad_scale), each a
    one-element float32 tensor, which the kernels read themselves (the inverse scale computed
    there as IEEE fp32 ``1 / grad_scale``, GradScaler.unscale_'s bits).

    GradScaler's own tensors (float32, one element, on ``device``) are passed as they are: no
    device operation, no host read; another dtype or device is converted (one copy, without
    blocking). A missing one is a constant 0 (found_inf) or 1 (grad_scale) cached per device
    (``grad * (1 / 1)`` is exact).
    """
    if device not in _NO_AMP:
        _NO_AMP[device] = (
            torch.zeros(1, dtype=torch.float32, device=device),
            torch.ones(1, dtype=torch.float32, device=device),
        )
    if found_inf is None and scale is None:
        return _NO_AMP[device]
    zero, one = _NO_AMP[device]
    return _amp_part("found_inf", found_inf, zero, device), _amp_part(
        "grad_scale", scale, one, device
    )


def _amp_part(
    name: str, value: torch.Tensor | None, missing: torch.Tensor, device: torch.device
) -> torch.Tensor:
    if value is None:
        return missing
    if value.numel() != 1:
        raise ValueError(f"GradScaler's {name} has {value.numel()} elements, not one")
    if value.dtype != torch.float32 or value.device != device:
        return value.detach().reshape(1).to(device, torch.float32, non_blocking=True)
    return value  # read through its address: its shape (one element) needs no view


def _check_amp(rule: str, amp: Any, device: torch.device) -> Amp:
    if amp is None:
        return amp_flags(None, None, device)
    if not (isinstance(amp, tuple) and len(amp) == 2):
        raise TypeError(
            f"{rule}: amp must be a pair (found_inf, grad_scale) of tensors, "
            f"not {type(amp).__name__}"
        )
    for name, part in zip(("found_inf", "grad_scale"), amp, strict=True):
        if not isinstance(part, torch.Tensor) or part.dtype != torch.float32 or part.numel() != 1:
            what = (
                f"{part.dtype} {tuple(part.shape)}"
                if isinstance(part, torch.Tensor)
                else type(part).__name__
            )
            raise TypeError(
                f"{rule}: amp's {name} must be a one-element float32 tensor, not {what}"
            )
        if part.device != device:
            raise ValueError(f"{rule}: amp's {name} is on {part.device}; the weights on {device}")
    return amp


class CheckedAmp(list):
    """``ChunkTable.checked_amp``'s flags, one pair per group."""


_ZERO = np.zeros(1, dtype=np.int64)  # the padding of an odd span


def _upload(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host table on ``device``; pinned first on CUDA, so the copy is asynchronous."""
    if device.type == "cuda":
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


@dataclass
class _Group:
    """The tensors of one device, dtype combination (weight, grad, inputs) and alignment class:
    one launch."""

    device: torch.device
    members: list[int]  # indices into the step's tensors, in order
    likes: list[torch.Tensor]  # the first member's buffers: they type the pointer tables
    counts: np.ndarray  # chunks per member
    meta: np.ndarray  # int64: pointer rows, sizes, int rows, chunk tensor ids, chunk starts
    aligned: bool = False  # the vectorised variant (ChunkTable.vectorisable)
    copied: bool = False  # its tensors have copies (COPY_OUT; ChunkTable's copies)
    meta_device: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.index = np.array(self.members, dtype=np.int64)  # members, for NumPy indexing
        self.stale: tuple[int, int] | None = None  # meta[lo:hi] rewritten since the upload
        self.whole = False  # the members are every tensor of the step, in order
        self.span: tuple[tuple[int, int], torch.Tensor] | None = None  # meta_device[lo:hi]
        self.copy_like: torch.Tensor | None = None  # the first member's copy (types COPY_OUT's)
        # the meta offset of each written buffer's pointer row (weight, states, copies) and its
        # bytes per element; the sizes row's offset (``ChunkTable.__init__``)
        self.written_rows: list[tuple[int, int]] = []
        self.sizes_at = 0

    def written_spans(self) -> tuple[np.ndarray, np.ndarray]:
        """The byte spans [start, end) of every buffer the group's launch writes (weights,
        states, copies), from its meta table: the addresses it launches with."""
        n = len(self.members)
        sizes = self.meta[self.sizes_at : self.sizes_at + n]
        starts = np.concatenate([self.meta[at : at + n] for at, _ in self.written_rows])
        items = np.repeat([item for _, item in self.written_rows], n)
        return starts, starts + np.tile(sizes, len(self.written_rows)) * items

    def rewrite(self, lo: int, hi: int, values: np.ndarray | list[int]) -> None:
        """``meta[lo:hi] = values``; on the device with the step's next upload (that span
        only: the chunk rows, most of the table, are uploaded once)."""
        self.meta[lo:hi] = values
        if self.meta_device is not None:
            old = self.stale or (lo, hi)
            self.stale = (min(old[0], lo), max(old[1], hi))

    @property
    def chunks(self) -> int:
        return int(self.counts.sum())


@dataclass(frozen=True)
class TableLayout:
    """Rows of a multi-tensor kernel's int64 meta table, each ``n_tensors`` long except the chunk
    rows: ``pointers[k]`` holds buffer k's data pointers, ``sizes`` the element counts,
    ``ints[i]`` the i-th per-tensor integer; the chunks' tensor indices start at row ``chunks``
    (``n_chunks`` long) and their first elements follow."""

    pointers: tuple[int, ...]
    sizes: int
    ints: tuple[int, ...]
    chunks: int


def vectorisable(buffers: Sequence[torch.Tensor]) -> bool:
    """Whether a tensor's buffers may take the multi-tensor kernels' vectorised variant
    (``ALIGNED``): every buffer starts on a ``ChunkTable.VECTOR``-byte boundary and the size is a
    multiple of ``VECTOR`` elements (16 bytes of the narrowest, 2-byte, buffer are 8), so every
    chunk starts on a block boundary and no 128-bit access straddles the end. torch's
    multi_tensor_apply checks the same (``is_aligned`` on every pointer, the size a multiple of
    its ILP) before taking its vectorised path."""
    vector = ChunkTable.VECTOR
    return buffers[0].numel() % vector == 0 and all(b.data_ptr() % vector == 0 for b in buffers)


class ChunkTable:
    """Many tensors cut into ``block``-element chunks for the multi-tensor kernels.

    ``tables[j]`` is [weight, grad, *states] of tensor j (already checked, each on its own;
    :func:`check_across` checks them against each other here, before any launch). Tensors are
    grouped by device, the dtypes of their buffers (weight, grad and per-element inputs vary;
    the pointer tables are typed by the group's first member) and :func:`vectorisable`; each
    group is one launch of a multi-tensor kernel, one program per chunk, the vectorisable ones
    with ``ALIGNED=True`` (128-bit loads and stores; the same arithmetic, so the same bits as the
    scalar variant). A group's int64 ``meta`` table holds, with ``n`` tensors and ``c`` chunks:
    one row of ``n`` pointers per buffer, the ``n`` sizes, one row of ``n`` per entry of
    ``ints[j]`` (per-tensor integers, such as a Philox key), then the ``c`` chunks' tensor
    (index into the group) and the ``c`` chunks' first element; a group with copies (below), then
    one row of ``n`` pointers to them. Per-tensor host scalars go in a
    float32 table, one row per tensor (``update``, ``reduce``): Python floats rounded to float32
    to nearest, as Triton rounds a float kernel argument. Empty tensors launch nothing.

    :meth:`prepared` reuses the table (and its copy on the device) of an earlier step while the
    buffers are unchanged but for the gradients' (and inputs') addresses, and rewrites the
    per-tensor integers that changed.

    ``copies`` (:func:`check_copies`): per tensor, None or a tensor the update kernel writes
    the new weight into, rounded to its dtype (``COPY_OUT``): a fp16/bf16 parameter updated
    through its float32 master copy gets its new value in the same pass, with no copy after
    (which would read the master again and cost a launch). Tensors with a copy of one dtype
    form groups of their own; the copy is part of the alignment class.
    """

    VECTOR = 16  # bytes of one vectorised access; element multiple of a vectorisable size
    CACHE = 8  # tables kept per rule by ``prepared`` (several optimizers, param groups)
    _cache: ClassVar[dict[str, list[_Prepared]]] = {}  # per rule, most recent first

    @staticmethod
    def layout(n_buffers: int, n_ints: int) -> TableLayout:
        """The meta table's rows, as the generated multi-tensor kernels read them."""
        return TableLayout(
            tuple(range(n_buffers)),
            n_buffers,
            tuple(range(n_buffers + 1, n_buffers + 1 + n_ints)),
            n_buffers + 1 + n_ints,
        )

    @classmethod
    def prepared(
        cls,
        rule: str,
        weights: Sequence[Any],
        grads: Sequence[Any],
        states: Sequence[Any],
        names: Sequence[str],
        host_names: Sequence[str],
        inputs: Sequence[dict[str, Any]] | None,
        block: int,
        ints: Sequence[Sequence[int]] | None = None,
        prechecked: bool | Vouched = False,
        copies: Sequence[Any] | None = None,
    ) -> ChunkTable:
        """The chunk table of a multi-tensor step, every buffer checked (``check_tensors_each``,
        :func:`check_across`) before it is returned; the table of an earlier call when the
        buffers are those it was built from (:class:`_Prepared`: one pass over the buffers), with
        only the pointer rows of the read-only buffers (gradients, inputs) rewritten when only
        those moved, as ``zero_grad()`` and a backward pass make them every step.

        ``prechecked``: the caller has checked every buffer as ``check_tensors`` and
        :func:`check_across` would (the torch classes check each parameter, its state and every
        buffer of the step against every other before any write); the pass then reads only what
        the table is built from (addresses; the weights' devices; the sizes and dtypes of the
        weights, gradients and inputs: a gradient of another size is never read out of
        bounds, but one of another shape and the same size is not refused) and skips the
        overlap check of moved gradients. A :class:`Vouched` ``prechecked`` also vouches that
        nothing but the gradients' addresses changed since the call that filled it in: its
        table is taken without a pass over the buffers.

        ``copies``: as the class says, checked (:func:`check_copies`) whenever a table is built.
        """
        vouched = prechecked if isinstance(prechecked, Vouched) else None
        if vouched is not None and inputs is None:
            table = vouched.table(rule, weights, grads, states, names, block, ints, copies)
            if table is not None:
                return table
        prechecked = bool(prechecked)
        # before the cache: empty tensors' buffers all sit at address 0, so a table built for
        # two state dicts would otherwise be reused for one dict given twice
        check_distinct_states(rule, states)
        entries = cls._cache.setdefault(rule, [])
        found = _Prepared.signature(
            weights, grads, states, names, host_names, inputs, prechecked, copies
        )
        if found is not None:
            for k, entry in enumerate(entries):
                if entry.table.block == block and entry.reuse(found):
                    entries.insert(0, entries.pop(k))  # most recent first
                    table = entry.table
                    table._retarget(found, ints)
                    table.launches = 0
                    found.release()
                    if vouched is not None:
                        vouched.entry, vouched.rule = entry, rule
                    return table
        for s in states:  # the errors of a step without a cache, in the same order
            host_state_values(rule, s, tuple(host_names))
        tables = check_tensors_each(rule, weights, grads, states, names, host_names, inputs)
        check_copies(rule, weights, copies)
        table = cls(tables, block, ints, copies)  # check_across, before any launch
        if found is not None:
            entries.insert(0, _Prepared(found, table))
            del entries[cls.CACHE :]
            found.release()
            if vouched is not None:
                vouched.entry, vouched.rule = entries[0], rule
        table.launches = 0
        return table

    def __init__(
        self,
        tables: list[list[torch.Tensor]],
        block: int,
        ints: Sequence[Sequence[int]] | None = None,
        copies: Sequence[Any] | None = None,
    ) -> None:
        check_across(tables if copies is None else with_copies(tables, copies))  # before launches
        self.plans: dict[torch.device, list[tuple[torch.Tensor, int]]] = {}  # device_plan's
        self.block = block
        self.size = len(tables)
        self.launches = 0
        self.ints = [tuple(row) for row in ints] if ints is not None else None
        keyed: dict[tuple[torch.device, tuple[torch.dtype, ...], Any, bool], list[int]] = {}
        every = copies if copies is not None else [None] * len(tables)
        for j, (buffers, copy) in enumerate(zip(tables, every, strict=True)):
            if buffers[0].numel():
                aligned = vectorisable([*buffers, copy] if copy is not None else buffers)
                copied = copy.dtype if copy is not None else None
                key = (buffers[0].device, tuple(b.dtype for b in buffers), copied, aligned)
                keyed.setdefault(key, []).append(j)
        self.groups: list[_Group] = []
        for (device, _, copied, aligned), members in keyed.items():
            likes = tables[members[0]]
            sizes = np.array([tables[j][0].numel() for j in members], dtype=np.int64)
            counts = -(-sizes // block)
            first = np.repeat(np.cumsum(counts) - counts, counts)
            rows = [[tables[j][k].data_ptr() for j in members] for k in range(len(likes))]
            rows.append(sizes.tolist())
            if ints is not None:
                rows += [list(column) for column in zip(*(ints[j] for j in members), strict=True)]
            parts = [
                np.array(rows, dtype=np.int64).ravel(),
                np.repeat(np.arange(len(members), dtype=np.int64), counts),
                (np.arange(int(counts.sum()), dtype=np.int64) - first) * block,
            ]
            if copied is not None:  # the copies' pointers: the row after the chunk rows
                parts.append(np.array([every[j].data_ptr() for j in members], dtype=np.int64))
            meta = np.concatenate(parts)
            meta = np.concatenate([meta, np.zeros(_padded(len(meta)) - len(meta), np.int64)])
            group = _Group(device, members, likes, counts, meta, aligned, copied is not None)
            group.copy_like = every[members[0]]
            n = len(members)
            written = getattr(likes, "written", None) or [k != 1 for k in range(len(likes))]
            group.written_rows = [
                (k * n, likes[k].element_size()) for k in range(len(likes)) if written[k]
            ]
            if copied is not None:
                group.written_rows.append((len(rows) * n + 2 * int(counts.sum()), copied.itemsize))
            group.sizes_at = len(likes) * n
            self.groups.append(group)

    def _retarget(self, tables: Any, ints: Sequence[Sequence[int]] | None) -> None:
        """A cached table for this call: the pointer-typing buffers of this call (a cached
        table holds no tensor of an earlier step alive) and this call's integers."""
        for group in self.groups:
            group.likes = tables[group.members[0]]
            group.copy_like = tables.copy(group.members[0]) if group.copied else None
        new = [tuple(row) for row in ints] if ints is not None else None
        if new == self.ints:
            return
        self.ints = new
        for group in self.groups:
            n, first = len(group.members), (len(group.likes) + 1) * len(group.members)
            columns = np.array([new[j] for j in group.members], dtype=np.int64).reshape(n, -1)
            group.rewrite(first, first + columns.size, columns.T.ravel())

    def forget(self) -> None:
        """Drop the tensors of the call (the pointer-typing buffers) once it is done."""
        for group in self.groups:
            group.likes, group.copy_like = [], None

    def _tables(self, group: _Group, rows: ScalarRows) -> tuple[torch.Tensor, torch.Tensor]:
        """The group's meta table and its members' scalar rows on the device (one copy)."""
        scalars = rows.padded(group.index)
        if group.meta_device is not None and group.stale is not None:
            # the rewritten span and the scalars in one copy, the span then copied into place
            # on the device (ordered after the launches that read the old one)
            lo, hi = group.stale
            group.stale = None
            pad = _padded(hi - lo)  # the scalars 16-byte aligned
            parts = (group.meta[lo:hi], _ZERO[: pad - (hi - lo)], scalars.view(np.int64))
            host = np.concatenate(parts)
            both = _upload(torch.from_numpy(host), group.device)
            span, rest = both.split_with_sizes((pad, len(host) - pad))
            if group.span is None or group.span[0] != (lo, hi):  # the same span every step
                group.span = ((lo, hi), group.meta_device[lo:hi])
            group.span[1].copy_(span if pad == hi - lo else span[: hi - lo], non_blocking=True)
            return group.meta_device, rest.view(torch.float32)
        scalars = torch.from_numpy(scalars)
        if group.meta_device is not None:
            return group.meta_device, _upload(scalars, group.device)
        both = _upload(
            torch.cat([torch.from_numpy(group.meta), scalars.view(torch.int64)]), group.device
        )
        group.meta_device, group.span = both[: len(group.meta)], None
        return group.meta_device, both[len(group.meta) :].view(torch.float32)

    def _launch(self, kernel: Any, group: _Group, *tables: torch.Tensor, **copy: Any) -> None:
        kernel[(group.chunks,)](
            *tables,
            len(group.members),
            group.chunks,
            *group.likes,
            BLOCK_SIZE=self.block,
            ALIGNED=group.aligned,
            **copy,
            **LAUNCH_OPTIONS,
        )
        self.launches += 1
        LAUNCHES["count"] += 1

    def update(
        self,
        kernel: Any,
        rows: ScalarRows | Sequence[Sequence[float]],
        rule: str = "",
        amp: Any = None,
    ) -> None:
        """One launch per group; ``rows``: the tensors' host scalars (``host_scalars``), one
        row per tensor or a :class:`ScalarRows`; ``amp``: (found_inf, grad_scale) on the groups'
        device (``amp_flags``; None: (0, 1))."""
        amps = amp if isinstance(amp, CheckedAmp) else self.checked_amp(rule, amp)
        rows = rows if isinstance(rows, ScalarRows) else ScalarRows.of(rows)
        for group, flags in zip(self.groups, amps, strict=True):
            meta, scalars = self._tables(group, rows)
            # the weight typing copy_like where the group has no copies (COPY_OUT off: unused)
            like = group.copy_like if group.copied else group.likes[0]
            copy = {"copy_like": like, "COPY_OUT": group.copied}
            self._launch(kernel, group, meta, scalars, *flags, **copy)
        self.forget()

    def checked_amp(self, rule: str, amp: Any) -> CheckedAmp:
        """``amp`` checked for :meth:`update` (before a step queues its writes): a pair of
        one-element float32 tensors on each group's device (``amp_flags``; None: (0, 1)), neither
        overlapping a buffer the launches write (the kernels read the flags while they write)."""
        flags = CheckedAmp(_check_amp(rule, amp, group.device) for group in self.groups)
        if amp is None:
            return flags
        for group, pair in zip(self.groups, flags, strict=True):
            low, high = group.written_spans()
            for name, part in zip(("found_inf", "grad_scale"), pair, strict=True):
                start = part.data_ptr()
                hit = np.flatnonzero((low < start + 4) & (start < high) & (low < high))
                if len(hit):
                    j = group.members[int(hit[0]) % len(group.members)]
                    raise ValueError(
                        f"{rule}: amp's {name} overlaps a buffer that tensor {j}'s update writes"
                    )
        return flags

    def reduce(
        self,
        kernel: Any,
        rows: ScalarRows | Sequence[Sequence[float]],
        kinds: dict[str, str],
        names: Sequence[str],
    ) -> list[dict[str, float]]:
        """:meth:`reduce_rows`, one dict per tensor (name: value)."""
        found = self.reduce_rows(kernel, rows, kinds, names).tolist()
        return [dict(zip(names, row, strict=True)) for row in found]

    def reduce_rows(
        self,
        kernel: Any,
        rows: ScalarRows | Sequence[Sequence[float]],
        kinds: dict[str, str],
        names: Sequence[str],
    ) -> np.ndarray:
        """Every tensor's reductions, a float64 row per tensor (a column per name): one launch
        per group, one float32 partial per chunk and name (no atomics), combined per tensor in
        the order of :func:`add_partials` (the same bits as ``reduce_sums`` for that tensor): on
        CUDA by :func:`combine_on_device`, with one copy of the tensors' sums to the host per
        device; elsewhere on the host, the partials copied once per device. ``rows``: the
        reduction-phase scalars (``reduction_scalars``), one row per tensor or a
        :class:`ScalarRows`. A sharded tensor's are over all its shards (``across_shards``)."""
        width = len(names)
        scalar_rows = rows if isinstance(rows, ScalarRows) else ScalarRows.of(rows)
        nothing = combine_partials(np.zeros((0, len(names)), np.float32), kinds, names)
        sums = np.empty((self.size, width), dtype=np.float64)
        sums[:] = [nothing[name] for name in names]
        offsets: list[int] = []
        used: dict[torch.device, int] = {}  # chunks per device, each group 16-byte aligned
        for group in self.groups:
            offsets.append(used.get(group.device, 0))
            used[group.device] = offsets[-1] + _padded(group.chunks, 4)
        partials = {
            d: torch.empty(n * width, dtype=torch.float32, device=d) for d, n in used.items()
        }
        for group, offset in zip(self.groups, offsets, strict=True):
            meta, scalars = self._tables(group, scalar_rows)
            self._launch(kernel, group, meta, scalars, partials[group.device][offset * width :])
        segments: dict[torch.device, tuple[list[int], list[np.ndarray], list[np.ndarray]]] = {}
        for group, offset in zip(self.groups, offsets, strict=True):
            members, starts, counts = segments.setdefault(group.device, ([], [], []))
            members += group.members
            starts.append(offset + np.cumsum(group.counts) - group.counts)
            counts.append(group.counts)
        for device, (members, starts, counts) in segments.items():
            first, count = np.concatenate(starts), np.concatenate(counts)
            if combines_on_device(device):
                plan = self.plans.get(device)
                if plan is None:  # the segments are the table's: the same every step
                    plan = self.plans[device] = device_plan(first, count, device)
                sums[members] = combine_on_device(partials[device], plan, kinds, names)
                continue
            host = partials[device].cpu().numpy().reshape(-1, width)
            for j, lo, n in zip(members, first, count, strict=True):
                combined = combine_partials(host[lo : lo + n], kinds, names)
                sums[j] = [combined[name] for name in names]
        if shards_combined():  # a sharded tensor's: over all its shards
            each = [dict(zip(names, row, strict=True)) for row in sums.tolist()]
            sums = np.array(
                [[d[name] for name in names] for d in across_shards(kinds, each)],
                dtype=np.float64,
            ).reshape(-1, width)
        return sums


_PLAIN = {torch.Tensor, torch.nn.Parameter}
_POINTER = torch.Tensor.data_ptr
_CONTIGUOUS = torch.Tensor.is_contiguous
_IS_NEG = torch.Tensor.is_neg
_NUMEL = torch.Tensor.numel
_SHAPE, _DTYPE, _DEVICE = attrgetter("shape"), attrgetter("dtype"), attrgetter("device")


class Vouched:
    """``prechecked`` of a caller that knows when nothing but the gradients' addresses changed
    since its last call (the torch classes' fast step: the same weights and states at the same
    addresses, unmodified, the gradients of the same sizes, dtypes and device, none
    overlapping a written buffer; :mod:`optgen_runtime.optim.fast`), given anew with every
    change. The first call fills it in with the chunk table it took or built (every buffer
    read, as with ``prechecked=True``); the next ones take that table with no pass over the
    buffers but the gradients' addresses: rows rewritten where they moved, and the table
    rebuilt (checked) where a move changes a tensor's alignment class. Truthy: it is a
    ``prechecked=True``."""

    __slots__ = ("entry", "pointers", "rule")

    def __init__(self) -> None:
        self.entry: _Prepared | None = None
        self.rule = ""
        # the gradients' addresses of the next call, as the caller read them (None: read here)
        self.pointers: list[int] | None = None

    def __bool__(self) -> bool:
        return True

    def table(
        self,
        rule: str,
        weights: Sequence[Any],
        grads: Sequence[Any],
        states: Sequence[Any],
        names: Sequence[str],
        block: int,
        ints: Sequence[Sequence[int]] | None,
        copies: Sequence[Any] | None = None,
    ) -> ChunkTable | None:
        """The table of the last call for this one, or None (a pass over the buffers)."""
        given, self.pointers = self.pointers, None
        entry = self.entry
        if entry is None or rule != self.rule or entry.table.block != block:
            return None
        old = entry.found
        n = old.n
        if len(weights) != n or old.reads != 1 or not old.prechecked:
            return None
        if old.copied != (copies is not None):
            return None
        if old.interpreting != interpreting():
            return None
        pointers = given if given is not None else list(map(_POINTER, grads))
        if pointers != old.pointers[n : 2 * n]:
            if not entry._grads_moved(pointers):
                return None
            old.pointers[n : 2 * n] = pointers  # this signature's own list
        table = entry.table
        table._retarget(_Buffers(weights, grads, states, names, copies), ints)
        table.launches = 0
        return table


class _Buffers:
    """Tensor j's buffers [weight, grad, *states] of a call, and its copy
    (``ChunkTable._retarget``)."""

    def __init__(
        self,
        weights: Sequence[Any],
        grads: Sequence[Any],
        states: Sequence[Any],
        names: Any,
        copies: Sequence[Any] | None = None,
    ) -> None:
        self.weights, self.grads, self.states, self.names = weights, grads, states, names
        self.copies = copies

    def __getitem__(self, j: int) -> list[Any]:
        return [self.weights[j], self.grads[j], *(self.states[j][k] for k in self.names)]

    def copy(self, j: int) -> Any:
        return self.copies[j] if self.copies is not None else None


@dataclass
class _Signature:
    """One pass over the buffers of a multi-tensor step (``_Prepared.signature``): ``columns``
    [weights, grads, *inputs, *states] (a list of ``n`` tensors each), ``pointers`` their
    addresses column after column, ``looks`` everything else the checks and the table depend
    on (shapes, dtypes, devices; in a prechecked call only what the table depends on) as
    (getter, tensors) pairs, read when compared (:meth:`same_looks`) or kept (:meth:`kept`):
    a step that keeps no list of shapes makes little garbage for the collector to scan."""

    n: int
    reads: int  # read-only columns after the weights: the gradients and the inputs
    prechecked: bool
    interpreting: bool
    columns: list[list[torch.Tensor]]
    pointers: list[int]
    looks: tuple[tuple[Any, list[torch.Tensor]], ...]
    kept_looks: tuple[list[Any], ...] = ()
    # ``copies`` given: the last column holds each tensor's copy, or its weight where it has
    # none (a stand-in: the pointers then say which tensors have one)
    copied: bool = False
    copies: list[Any] | None = None

    def same_looks(self, old: tuple[list[Any], ...]) -> bool:
        """Whether every look equals the one ``old`` (a :meth:`kept` of the same layout) holds."""
        return all(
            all(map(eq, map(get, xs), seen))
            for (get, xs), seen in zip(self.looks, old, strict=True)
        )

    def release(self) -> None:
        """Keep the looks, drop the tensors: a cached table holds no tensor of a step alive."""
        self.kept()
        self.columns, self.looks, self.copies = [], (), None

    def kept(self) -> tuple[list[Any], ...]:
        """The looks read into lists, to be compared with a later step's."""
        if not self.kept_looks:
            self.kept_looks = tuple(list(map(get, xs)) for get, xs in self.looks)
        return self.kept_looks

    def __getitem__(self, j: int) -> list[torch.Tensor]:
        """Tensor j's buffers (``ChunkTable._retarget`` types a group's pointers by them)."""
        columns = self.columns[:-1] if self.copied else self.columns
        return [column[j] for column in columns]

    def copy(self, j: int) -> Any:
        """Tensor j's copy (None: it has none)."""
        return self.copies[j] if self.copies is not None else None


_FEW = 64  # gradients whose addresses _grads_moved takes as a list, not an array


def spans_overlap(low: np.ndarray, high: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> bool:
    """Whether a nonempty span ``[starts[i], ends[i])`` overlaps one of the disjoint spans
    ``[low[k], high[k])`` sorted by start (the buffers a step writes, which passed the checks):
    vectorised, as the last written span starting before a span ends is its only candidate
    (``np.searchsorted``). Byte addresses of one device; for moved gradients against the
    weights and states (``ChunkTable.prepared``; the torch classes may do the same)."""
    if not len(low):
        return False
    last = low.searchsorted(ends) - 1  # -1 (wrapping in ``take``) where none: masked out
    hit = high.take(last) > starts
    hit &= ends > low[0]
    hit &= ends > starts
    return bool(hit.any())


class _Prepared:
    """A chunk table and the buffers it was built from, all checked (``ChunkTable.prepared``).

    A later step reuses it when every buffer is a plain contiguous tensor with the same shape,
    dtype and device as then (what every check of ``check_tensors`` depends on), the weights
    and states at the same addresses; read-only buffers (gradients, inputs) may have moved:
    then none may now overlap a buffer the step writes (a vectorised interval test over the
    written buffers, sorted by address; any overlap found goes to the full checks, which name
    it), and their pointer rows are rewritten in the cached table, which is uploaded again.
    A moved buffer that changes a tensor's alignment class (``vectorisable``) rebuilds the
    table."""

    def __init__(self, found: _Signature, table: ChunkTable) -> None:
        self.found = found
        self.table = table
        n, reads = found.n, found.reads
        flat = list(chain.from_iterable(found.columns))
        nbytes = np.array([x.numel() * x.element_size() for x in flat], dtype=np.int64)
        starts = np.array(found.pointers, dtype=np.int64)
        devices = {d: k for k, d in enumerate(dict.fromkeys(x.device for x in found.columns[0]))}
        code = np.array([devices[w.device] for w in found.columns[0]], dtype=np.int64)
        written = np.ones(len(flat), dtype=bool)
        written[n : n * (1 + reads)] = False
        codes = np.tile(code, len(found.columns))
        live = written & (nbytes > 0)
        # the written buffers of each device, sorted by address (disjoint: they passed)
        self.written: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for k in devices.values():
            mine = live & (codes == k)
            order = np.argsort(starts[mine], kind="stable")
            self.written[k] = (starts[mine][order], (starts + nbytes)[mine][order])
        self.read_bytes = nbytes[n : n * (1 + reads)]
        self.read_codes = codes[n : n * (1 + reads)]
        # each tensor's alignment class but for its read buffers, and whether it is in a group
        sizes = nbytes[:n] // np.array([w.element_size() for w in found.columns[0]])
        aligned = sizes % ChunkTable.VECTOR == 0
        for k in [0, *range(1 + reads, len(found.columns))]:  # the written columns
            aligned &= starts[k * n : (k + 1) * n] % ChunkTable.VECTOR == 0
        self.base_aligned = aligned
        self.nonempty = sizes > 0
        self.aligned = aligned & self._reads_aligned(starts[n : n * (1 + reads)])
        # the alignment classes stay while every read buffer is aligned (``_grads_moved``)
        self.classes_kept = np.array_equal(aligned[self.nonempty], self.aligned[self.nonempty])
        for group in table.groups:
            group.whole = group.members == list(range(n))

    def _reads_aligned(self, reads: np.ndarray) -> np.ndarray:
        return np.all(reads.reshape(-1, self.found.n) % ChunkTable.VECTOR == 0, axis=0)

    @staticmethod
    def signature(
        weights: Sequence[Any],
        grads: Sequence[Any],
        states: Sequence[Any],
        names: Sequence[str],
        host_names: Sequence[str],
        inputs: Sequence[dict[str, Any]] | None,
        prechecked: bool,
        copies: Sequence[Any] | None = None,
    ) -> _Signature | None:
        """The step's buffers in one pass (C-level maps, no Python loop per tensor), or None
        when they cannot be cached (a state that is not a plain dict with exactly the rule's
        entries, a tensor subclass such as a DTensor, a strided or sparse buffer): checked in
        full every call."""
        n = len(weights)
        try:
            entries = {len(names) + len(host_names)}  # exactly the rule's (each read below)
            plain = not set(map(type, states)) - {dict} and not set(map(len, states)) - entries
            if not prechecked and not plain:
                return None
            columns = [list(weights), list(grads)]
            if inputs:
                columns += [list(map(itemgetter(k), inputs)) for k in inputs[0]]
            reads = len(columns) - 1
            columns += [list(map(itemgetter(k), states)) for k in names]
            if copies is not None:  # a written column, the weight standing in for a None
                if not isinstance(copies, list | tuple) or len(copies) != n:
                    return None  # refused by the full checks
                pairs = zip(weights, copies, strict=True)
                columns.append([w if c is None else c for w, c in pairs])
            if n and not prechecked and host_names:
                list(map(itemgetter(*host_names), states))  # every host state there
            flat = list(chain.from_iterable(columns))
            if set(map(type, flat)) - _PLAIN:
                return None
            pointers = list(map(_POINTER, flat))
            if prechecked:
                read = flat[: n * (1 + reads)]  # the weights, the gradients, the inputs
                looks = ((_NUMEL, read), (_DEVICE, columns[0]), (_DTYPE, read))
                if copies is not None:  # the copies' dtypes type their groups
                    looks += ((_DTYPE, columns[-1]),)
            else:
                if not all(map(_CONTIGUOUS, flat)) or any(map(_IS_NEG, flat)):
                    return None  # (refused by the full checks, naming it)
                looks = ((_SHAPE, flat), (_DTYPE, flat), (_DEVICE, flat))
        except (KeyError, IndexError, TypeError, RuntimeError, ValueError):
            return None
        found = _Signature(n, reads, prechecked, interpreting(), columns, pointers, looks)
        if copies is not None:
            found.copied, found.copies = True, list(copies)
        return found

    def reuse(self, new: _Signature) -> bool:
        """Whether the cached table serves ``new``'s step (its read-only pointer rows rewritten
        where they moved); False: rebuild, with every check."""
        old = self.found
        n = old.n
        if (new.n, new.reads, new.prechecked, new.interpreting, new.copied) != (
            n,
            old.reads,
            old.prechecked,
            old.interpreting,
            old.copied,
        ) or len(new.pointers) != len(old.pointers):
            return False
        split = n * (1 + old.reads)
        if new.pointers[:n] != old.pointers[:n] or new.pointers[split:] != old.pointers[split:]:
            return False  # another list of weights, or a weight or state moved
        if not new.same_looks(old.kept_looks):
            return False
        if new.pointers[n:split] != old.pointers[n:split] and not self._moved(new):
            return False
        new.kept_looks = old.kept_looks
        self.found = new
        return True

    def _grads_moved(self, pointers: list[int]) -> bool:
        """``_moved`` of a vouched call (``Vouched.table``: the gradients alone moved, the
        caller tested them for overlaps): True when the table is rewritten for them; in one
        NumPy pass where every gradient is aligned and the alignment classes stay."""
        found = self.found
        few = len(pointers) <= _FEW
        starts = pointers if few else np.array(pointers, dtype=np.int64)
        either = reduce(or_, starts, 0) if few else int(np.bitwise_or.reduce(starts))
        if not self.classes_kept or either % ChunkTable.VECTOR:
            moved = [*found.pointers[: found.n], *pointers, *found.pointers[2 * found.n :]]
            return self._moved(_Signature(found.n, 1, True, found.interpreting, [], moved, ()))
        for group in self.table.groups:
            m = len(group.members)  # row 1: the gradients' pointers
            if group.whole:
                group.rewrite(m, 2 * m, starts)
            else:
                group.rewrite(m, 2 * m, np.asarray(starts, dtype=np.int64)[group.index])
        return True

    def _moved(self, new: _Signature) -> bool:
        """The read-only buffers moved: True when the table is rewritten for them, False when
        the step must be checked in full (an overlap with a written buffer, to be named) or the
        table rebuilt (a tensor's alignment class changed)."""
        n, split = new.n, new.n * (1 + new.reads)
        starts = np.array(new.pointers[n:split], dtype=np.int64)
        aligned = self.base_aligned & self._reads_aligned(starts)
        if not np.array_equal(aligned[self.nonempty], self.aligned[self.nonempty]):
            return False
        if not new.prechecked:
            ends = starts + self.read_bytes
            for code, (low, high) in self.written.items():
                mine = self.read_codes == code
                if spans_overlap(low, high, starts[mine], ends[mine]):
                    return False
        columns = starts.reshape(new.reads, n)
        for group in self.table.groups:
            m = len(group.members)  # rows 1 to reads: the read buffers' pointers
            group.rewrite(m, (1 + new.reads) * m, columns[:, group.index].ravel())
        return True


# Kernel launches made through this module (tests count them).
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


# ---------------------------------------------------------------------------------- matrices
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
