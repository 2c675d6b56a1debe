"""Input checks (:mod:`optgen_runtime.checks`) and launch glue for the generated Triton modules."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

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
from optgen_runtime.common import check_inputs_given
from optgen_runtime.sharding import across_shards
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


# (rule, fingerprint) of the latest multi-tensor calls whose every tensor passed check_tensors
_CHECKED: dict[tuple[str, tuple[Any, ...]], None] = {}
_CHECKED_KEPT = 8  # several optimizers, param groups
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _fingerprint(
    weights: Sequence[Any],
    grads: Sequence[Any],
    states: Sequence[Any],
    names: Sequence[str],
    inputs: Sequence[dict[str, Any]] | None,
) -> tuple[Any, ...] | None:
    """Everything :func:`check_tensors` looks at, for every tensor of a call: each state dict's
    keys, and each buffer's address, shape, dtype and device (all contiguous: so their extent);
    None for anything but plain contiguous tensors in plain dicts (a tensor subclass such as a
    DTensor, a strided view, a missing state: checked in full). Built flat, with few
    allocations: a call of many tensors makes little garbage."""
    parts: list[Any] = [interpreting(), len(weights), len(grads), len(states)]
    try:
        for j, (w, g, s) in enumerate(zip(weights, grads, states, strict=True)):
            if type(s) is not dict:
                return None
            parts += (len(s), *s)
            extra = inputs[j].values() if inputs is not None else ()
            for x in (w, g, *extra, *(s[n] for n in names)):
                if type(x) not in _PLAIN or not x.is_contiguous():
                    return None
                parts += (x.data_ptr(), x.shape, x.dtype, x.get_device())
    except (KeyError, RuntimeError, TypeError, ValueError, IndexError):
        return None
    return tuple(parts)


def check_tensors_each(
    rule: str,
    weights: Sequence[Any],
    grads: Sequence[Any],
    states: Sequence[Any],
    names: Sequence[str],
    host_names: Sequence[str] = (),
    inputs: Sequence[dict[str, Any]] | None = None,
) -> list[Checked]:
    """:func:`check_tensors` for every tensor of a multi-tensor step, in full only when some
    buffer changed since the rule's last call that passed (:func:`_fingerprint`: address, shape,
    dtype and device of contiguous buffers decide every one of those checks; strided ones are
    checked in full every call): a step of unchanged tensors costs one fingerprint per buffer,
    not the checks. Host states are values, checked by the caller every step
    (``host_state_values``)."""
    found = _fingerprint(weights, grads, states, names, inputs)
    key = (rule, found) if found is not None else None
    if key is None or key not in _CHECKED:
        each = inputs or [None] * len(weights)
        tables = [
            check_tensors(rule, w, g, s, names, host_names, inputs=x)
            for w, g, s, x in zip(weights, grads, states, each, strict=True)
        ]
        if key is not None:
            if len(_CHECKED) >= _CHECKED_KEPT:
                _CHECKED.pop(next(iter(_CHECKED)))
            _CHECKED[key] = None
        return tables
    out = []
    for j, (w, g, s) in enumerate(zip(weights, grads, states, strict=True)):
        read = [("grad", g), *(inputs[j].items() if inputs is not None else [])]
        buffers = [("weight", w), *read, *((f"state[{n!r}]", s[n]) for n in names)]
        out.append(Checked(rule, buffers, len(read)))
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
    """Per-chunk float32 partial sums (rows: chunks in order, columns: reductions) added in
    float64, one chunk after the other (``np.add.accumulate`` is a sequential scan): a fixed
    order, so the same partials give the same sums on every device and machine."""
    if not len(partials):
        return np.zeros(partials.shape[1:], dtype=np.float64)
    return np.add.accumulate(partials.astype(np.float64), axis=0)[-1]


def combine_partials(
    partials: np.ndarray, kinds: dict[str, str], names: Sequence[str]
) -> dict[str, float]:
    """Each reduction's per-chunk partials (a column, chunks in order) combined by its kind:
    sums by :func:`add_partials`, max/min NaN-propagating (-inf/+inf over no chunks)."""
    out = {}
    for k, name in enumerate(names):
        column = partials[:, k : k + 1]
        kind = kinds[name]
        if kind == "sum":
            out[name] = float(add_partials(column)[0])
        elif not len(column):
            out[name] = -math.inf if kind == "max" else math.inf
        else:
            out[name] = float(np.max(column) if kind == "max" else np.min(column))
    return out


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
    """Run a reduction kernel, then combine its per-block partials on the host.

    The kernel writes one float32 partial per block and name, each to its own slot (no
    atomics); the partials are copied to the host (one device synchronisation per phase) and
    combined by :func:`combine_partials` (sums in float64), in block order: the same bits on
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
    sums = combine_partials(partial.cpu().numpy().reshape(blocks, len(names)), kinds, names)
    return across_shards(kinds, [sums])[0]  # a sharded tensor's: over all its shards


def _padded(n: int, align: int = 2) -> int:
    """``n`` rounded up to a multiple of ``align`` (2 int64 or 4 float32 entries: 16 bytes, so
    every table a kernel gets starts on a 16-byte boundary, as Triton specializes on)."""
    return -(-n // align) * align


def scalar_table(rows: Sequence[Sequence[float]]) -> torch.Tensor:
    """Host scalars as a flat float32 table, one row per tensor, padded to 16 bytes.

    Each double is rounded to float32 to nearest (even), overflowing to inf: exactly what
    Triton's launcher does to a Python float passed as an fp32 argument (a C ``(float)`` cast;
    the interpreter casts with NumPy), so a kernel reading the table computes what the
    single-tensor kernel computes with the same scalars as arguments.
    """
    # The rows of tensors at one step count are one object (``computed_each``): each distinct
    # object converted once (by identity: 0.0 and -0.0, or two NaNs, are never merged).
    index: dict[int, int] = {}
    distinct: list[Sequence[float]] = []
    picks = []
    for row in rows:
        if id(row) not in index:
            index[id(row)] = len(distinct)
            distinct.append(row)
        picks.append(index[id(row)])
    array = np.array([[float(x) for x in row] or [0.0] for row in distinct], dtype=np.float64)
    with np.errstate(over="ignore"):
        table = torch.from_numpy(array.astype(np.float32)[picks].ravel())
    return torch.cat([table, table.new_zeros(_padded(len(table), 4) - len(table))])


_NO_AMP: dict[torch.device, torch.Tensor] = {}


def amp_flags(
    found_inf: torch.Tensor | None, scale: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """The multi-tensor kernels' ``amp`` argument on ``device``: float32 [found_inf, inv_scale].

    Built with device operations only (no host read): ``inv_scale`` as torch's
    ``GradScaler.unscale_`` computes it, ``scale.double().reciprocal().float()``. With neither
    given: a constant [0, 1] cached per device (``grad * 1.0`` is exact).
    """
    if found_inf is None and scale is None:
        if device not in _NO_AMP:
            _NO_AMP[device] = torch.tensor([0.0, 1.0], dtype=torch.float32, device=device)
        return _NO_AMP[device]
    parts = [
        torch.zeros(1, dtype=torch.float32, device=device)
        if found_inf is None
        else found_inf.detach().reshape(1).to(device, torch.float32, non_blocking=True),
        torch.ones(1, dtype=torch.float32, device=device)
        if scale is None
        else scale.detach().reshape(1).double().reciprocal().float().to(device, non_blocking=True),
    ]
    return torch.cat(parts)


def _check_amp(rule: str, amp: Any, device: torch.device) -> torch.Tensor:
    if amp is None:
        return amp_flags(None, None, device)
    if not isinstance(amp, torch.Tensor) or amp.dtype != torch.float32 or amp.shape != (2,):
        raise TypeError(f"{rule}: amp must be a float32 tensor [found_inf, inv_scale]")
    if amp.device != device or not amp.is_contiguous():
        raise ValueError(f"{rule}: amp is on {amp.device} (contiguous?); the weights on {device}")
    return amp


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
    meta_device: torch.Tensor | None = None

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
    (index into the group) and the ``c`` chunks' first element. Per-tensor host scalars go in a
    float32 table, one row per tensor (``update``, ``reduce``): Python floats rounded to float32
    to nearest, as Triton rounds a float kernel argument. Empty tensors launch nothing.

    :meth:`cached` reuses the table (and its copy on the device) of an earlier step when every
    buffer's address, size, dtype and device and the integers are unchanged.
    """

    VECTOR = 16  # bytes of one vectorised access; element multiple of a vectorisable size
    CACHE = 8  # tables kept by ``cached`` (several optimizers, param groups)
    _cache: ClassVar[dict[tuple, ChunkTable]] = {}

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
    def cached(
        cls,
        tables: list[list[torch.Tensor]],
        block: int,
        ints: Sequence[Sequence[int]] | None = None,
    ) -> ChunkTable:
        """``ChunkTable(tables, block, ints)``, or the one an earlier call built from buffers at
        the same addresses with the same sizes, dtypes and devices (so the same overlaps,
        groups and meta table): no rebuild and no upload, but for per-tensor integers that
        changed (a Philox key per step), rewritten in place. Each tensor's own checks
        (``check_tensors``: shapes, strides) run every step before this."""
        key = (
            block,
            tuple(len(t) for t in tables),
            tuple((b.data_ptr(), b.numel(), b.dtype, b.device) for t in tables for b in t),
        )
        table = cls._cache.get(key)
        if table is None:
            table = cls(tables, block, ints)
            if len(cls._cache) >= cls.CACHE:
                cls._cache.pop(next(iter(cls._cache)))
            cls._cache[key] = table
        else:
            table._retarget(tables, ints)
        table.launches = 0
        return table

    def __init__(
        self,
        tables: list[list[torch.Tensor]],
        block: int,
        ints: Sequence[Sequence[int]] | None = None,
    ) -> None:
        check_across(tables)  # before any launch
        self.block = block
        self.size = len(tables)
        self.launches = 0
        self.ints = [tuple(row) for row in ints] if ints is not None else None
        keyed: dict[tuple[torch.device, tuple[torch.dtype, ...], bool], list[int]] = {}
        for j, buffers in enumerate(tables):
            if buffers[0].numel():
                aligned = vectorisable(buffers)
                key = (buffers[0].device, tuple(b.dtype for b in buffers), aligned)
                keyed.setdefault(key, []).append(j)
        self.groups: list[_Group] = []
        for (device, _, aligned), members in keyed.items():
            likes = tables[members[0]]
            sizes = np.array([tables[j][0].numel() for j in members], dtype=np.int64)
            counts = -(-sizes // block)
            first = np.repeat(np.cumsum(counts) - counts, counts)
            rows = [[tables[j][k].data_ptr() for j in members] for k in range(len(likes))]
            rows.append(sizes.tolist())
            if ints is not None:
                rows += [list(column) for column in zip(*(ints[j] for j in members), strict=True)]
            meta = np.concatenate(
                [
                    np.array(rows, dtype=np.int64).ravel(),
                    np.repeat(np.arange(len(members), dtype=np.int64), counts),
                    (np.arange(int(counts.sum()), dtype=np.int64) - first) * block,
                ]
            )
            meta = np.concatenate([meta, np.zeros(_padded(len(meta)) - len(meta), np.int64)])
            self.groups.append(_Group(device, members, likes, counts, meta, aligned))

    def _retarget(
        self, tables: list[list[torch.Tensor]], ints: Sequence[Sequence[int]] | None
    ) -> None:
        """A cached table for this call: the pointer-typing buffers of this call (a cached
        table holds no tensor of an earlier step alive) and this call's integers."""
        for group in self.groups:
            group.likes = tables[group.members[0]]
        new = [tuple(row) for row in ints] if ints is not None else None
        if new == self.ints:
            return
        self.ints = new
        for group in self.groups:
            n, first = len(group.members), (len(group.likes) + 1) * len(group.members)
            columns = np.array([new[j] for j in group.members], dtype=np.int64).reshape(n, -1)
            group.meta[first : first + columns.size] = columns.T.ravel()
            group.meta_device = None  # uploaded again with the step's scalars

    def forget(self) -> None:
        """Drop the tensors of the call (the pointer-typing buffers) once it is done."""
        for group in self.groups:
            group.likes = []

    def _tables(
        self, group: _Group, rows: Sequence[Sequence[float]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The group's meta table and its members' scalar rows on the device (one copy)."""
        scalars = scalar_table([rows[j] for j in group.members])
        if group.meta_device is not None:
            return group.meta_device, _upload(scalars, group.device)
        both = _upload(
            torch.cat([torch.from_numpy(group.meta), scalars.view(torch.int64)]), group.device
        )
        group.meta_device = both[: len(group.meta)]
        return group.meta_device, both[len(group.meta) :].view(torch.float32)

    def _launch(self, kernel: Any, group: _Group, *tables: torch.Tensor) -> None:
        kernel[(group.chunks,)](
            *tables,
            len(group.members),
            group.chunks,
            *group.likes,
            BLOCK_SIZE=self.block,
            ALIGNED=group.aligned,
            **LAUNCH_OPTIONS,
        )
        self.launches += 1
        LAUNCHES["count"] += 1

    def update(
        self, kernel: Any, rows: Sequence[Sequence[float]], rule: str = "", amp: Any = None
    ) -> None:
        """One launch per group; ``rows[j]``: tensor j's host scalars (``host_scalars``);
        ``amp``: [found_inf, inv_scale] on the groups' device (None: [0, 1])."""
        amps = [_check_amp(rule, amp, group.device) for group in self.groups]  # before any write
        for group, flags in zip(self.groups, amps, strict=True):
            meta, scalars = self._tables(group, rows)
            self._launch(kernel, group, meta, scalars, flags)
        self.forget()

    def reduce(
        self,
        kernel: Any,
        rows: Sequence[Sequence[float]],
        kinds: dict[str, str],
        names: Sequence[str],
    ) -> list[dict[str, float]]:
        """Every tensor's reductions: one launch per group, one float32 partial per chunk and
        name (no atomics), copied to the host once per device and added per tensor in chunk
        order by :func:`add_partials` (the same bits as ``reduce_sums`` for that tensor).
        ``rows[j]``: tensor j's reduction-phase scalars (``reduction_scalars``)."""
        width = len(names)
        nothing = combine_partials(np.zeros((0, len(names)), np.float32), kinds, names)
        sums = [dict(nothing) for _ in range(self.size)]
        offsets: list[int] = []
        used: dict[torch.device, int] = {}  # chunks per device, each group 16-byte aligned
        for group in self.groups:
            offsets.append(used.get(group.device, 0))
            used[group.device] = offsets[-1] + _padded(group.chunks, 4)
        partials = {
            d: torch.empty(n * width, dtype=torch.float32, device=d) for d, n in used.items()
        }
        for group, offset in zip(self.groups, offsets, strict=True):
            meta, scalars = self._tables(group, rows)
            self._launch(kernel, group, meta, scalars, partials[group.device][offset * width :])
        host = {d: p.cpu().numpy().reshape(-1, width) for d, p in partials.items()}
        for group, offset in zip(self.groups, offsets, strict=True):
            ends = offset + np.cumsum(group.counts)
            for j, end, count in zip(group.members, ends, group.counts, strict=True):
                sums[j] = combine_partials(host[group.device][end - count : end], kinds, names)
        return across_shards(kinds, sums)  # a sharded tensor's: over all its shards


# Kernel launches made through this module (tests count them).
LAUNCHES = {"count": 0}


def launch(
    kernel: Any,
    buffers: list[torch.Tensor],
    scalars: Sequence[float],
    block: int,
    ints: Sequence[int] = (),
) -> None:
    """One launch over all elements; host scalars passed as Python floats, then ``ints``."""
    n = buffers[0].numel()
    if n == 0:
        return
    LAUNCHES["count"] += 1
    grid = (triton.cdiv(n, block),)
    kernel[grid](
        *buffers, n, *(float(s) for s in scalars), *ints, BLOCK_SIZE=block, **LAUNCH_OPTIONS
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
) -> dict[str, float]:
    """Launch one kernel of a sweep over ``domain`` of the (batch, rows, cols) view.

    ``shape`` "flat": one program per block of the domain's flat indices (maps; whole-tensor
    reductions ``names`` as one float32 partial per block, combined on the host in block order
    as :func:`reduce_sums` does); "last": one program per index of the other axes, looping
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
