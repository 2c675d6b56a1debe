"""The caller's word that nothing but the gradients' addresses changed since its last call
(``Vouched``, a ``prechecked`` of :func:`optgen_runtime.triton_cache.prepared_table`): the last
call's chunk table is taken with no pass over the buffers. The torch classes' fast step
(:mod:`optgen_runtime.optim.fast`) keeps one per param group; the generated Triton modules import
it from :mod:`optgen_runtime.triton_cache`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from optgen_runtime.triton_chunks import ChunkTable
from optgen_runtime.triton_compat import interpreting

if TYPE_CHECKING:  # the cache imports this module
    from optgen_runtime.triton_cache import _Prepared

_POINTER = torch.Tensor.data_ptr


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
