"""Many tensors cut into chunks for the multi-tensor kernels: one launch per group of tensors of
one device, dtype combination and alignment class, an int64 meta table and float32 scalar
rows per group."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from optgen_runtime.sharding import across_shards, shards_combined
from optgen_runtime.triton_amp import CheckedAmp, check_amp
from optgen_runtime.triton_checks import check_across, with_copies
from optgen_runtime.triton_compat import LAUNCH_OPTIONS
from optgen_runtime.triton_launch import LAUNCHES, padded, upload
from optgen_runtime.triton_reduce import (
    combine_on_device,
    combine_partials,
    combines_on_device,
    device_plan,
)
from optgen_runtime.triton_rows import ScalarRows

_ZERO = np.zeros(1, dtype=np.int64)  # the padding of an odd span


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
        self.spans: tuple[np.ndarray, np.ndarray] | None = None  # written_spans, until rewritten
        self.reach: tuple[list[int], list[int]] | None = None  # see ``written_over``

    def written_spans(self) -> tuple[np.ndarray, np.ndarray]:
        """The byte spans [start, end) of every buffer the group's launch writes (weights,
        states, copies), from its meta table: the addresses it launches with. Kept until a
        ``rewrite`` touches their rows (a step's new gradients rewrite only theirs)."""
        if self.spans is None:
            n = len(self.members)
            sizes = self.meta[self.sizes_at : self.sizes_at + n]
            starts = np.concatenate([self.meta[at : at + n] for at, _ in self.written_rows])
            items = np.repeat([item for _, item in self.written_rows], n)
            self.spans = starts, starts + np.tile(sizes, len(self.written_rows)) * items
        return self.spans

    def written_over(self, start: int, end: int) -> bool:
        """Whether a launch of the group writes any byte of [start, end): one bisect over the
        written spans' starts in order (each with the furthest end of the spans up to it),
        kept with ``written_spans``."""
        if self.reach is None:
            low, high = self.written_spans()
            keep = low < high  # an empty buffer's span writes nothing
            order = np.argsort(low[keep], kind="stable")
            ends = np.maximum.accumulate(high[keep][order]) if order.size else order
            self.reach = low[keep][order].tolist(), ends.tolist()
        lows, ends = self.reach
        k = bisect.bisect_left(lows, end) - 1  # the last span starting before ``end``
        return k >= 0 and ends[k] > start

    def rewrite(self, lo: int, hi: int, values: np.ndarray | list[int]) -> None:
        """``meta[lo:hi] = values``; on the device with the step's next upload (that span
        only: the chunk rows, most of the table, are uploaded once)."""
        n = len(self.members)
        rows = [at for at, _ in self.written_rows] + [self.sizes_at]
        if any(lo < at + n and at < hi for at in rows):
            self.spans = self.reach = None
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

    :func:`optgen_runtime.triton_cache.prepared_table` reuses the table (and its copy on the
    device) of an earlier step while the buffers are unchanged but for the gradients' (and
    inputs') addresses, and rewrites the per-tensor integers that changed.

    ``copies`` (:func:`check_copies`): per tensor, None or a tensor the update kernel writes
    the new weight into, rounded to its dtype (``COPY_OUT``): a fp16/bf16 parameter updated
    through its float32 master copy gets its new value in the same pass, with no copy after
    (which would read the master again and cost a launch). Tensors with a copy of one dtype
    form groups of their own; the copy is part of the alignment class.
    """

    VECTOR = 16  # bytes of one vectorised access; element multiple of a vectorisable size

    @staticmethod
    def layout(n_buffers: int, n_ints: int) -> TableLayout:
        """The meta table's rows, as the generated multi-tensor kernels read them."""
        return TableLayout(
            tuple(range(n_buffers)),
            n_buffers,
            tuple(range(n_buffers + 1, n_buffers + 1 + n_ints)),
            n_buffers + 1 + n_ints,
        )

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
            meta = np.concatenate([meta, np.zeros(padded(len(meta)) - len(meta), np.int64)])
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
            pad = padded(hi - lo)  # the scalars 16-byte aligned
            parts = (group.meta[lo:hi], _ZERO[: pad - (hi - lo)], scalars.view(np.int64))
            host = np.concatenate(parts)
            both = upload(torch.from_numpy(host), group.device)
            span, rest = both.split_with_sizes((pad, len(host) - pad))
            if group.span is None or group.span[0] != (lo, hi):  # the same span every step
                group.span = ((lo, hi), group.meta_device[lo:hi])
            group.span[1].copy_(span if pad == hi - lo else span[: hi - lo], non_blocking=True)
            return group.meta_device, rest.view(torch.float32)
        scalars = torch.from_numpy(scalars)
        if group.meta_device is not None:
            return group.meta_device, upload(scalars, group.device)
        both = upload(
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
        flags = CheckedAmp(check_amp(rule, amp, group.device) for group in self.groups)
        if amp is None:
            return flags
        for group, pair in zip(self.groups, flags, strict=True):
            if not any(group.written_over(f.data_ptr(), f.data_ptr() + 4) for f in pair):
                continue
            low, high = group.written_spans()  # a hit: the first, named as before
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
            used[group.device] = offsets[-1] + padded(group.chunks, 4)
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
