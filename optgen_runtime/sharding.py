"""Per-tensor reductions of a sharded tensor, combined across its shards.

The generated modules combine a tensor's per-chunk partials into its sums, maxima and minima
(``numpy_support.combine``; ``triton_reduce.reduce_sums`` and ``ChunkTable.reduce``) and pass
them through :func:`across_shards`. Outside :func:`shards` that returns them as they are;
inside (the torch classes enter it around the step of parameters sharded by FSDP2) each value
is combined with the same value of the tensor's other shards by the given reducer, so a sharded
norm is the norm of the whole tensor, and a group reduction (added over a group's tensors after
this) is the whole group's. Importing this module imports no torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

# (kinds, one dict of reductions per tensor) -> the same, combined across the shards
Reducer = Callable[[dict[str, str], list[dict[str, float]]], list[dict[str, float]]]

_REDUCER: ContextVar[Reducer | None] = ContextVar("optgen_shard_reducer", default=None)


def across_shards(kinds: dict[str, str], sums: list[dict[str, float]]) -> list[dict[str, float]]:
    """Each tensor's reductions combined over its shards (as they are outside :func:`shards`)."""
    reducer = _REDUCER.get()
    return sums if reducer is None or not sums else reducer(kinds, sums)


def shards_combined() -> bool:
    """True inside :func:`shards` with a reducer: :func:`across_shards` combines."""
    return _REDUCER.get() is not None


@contextlib.contextmanager
def shards(reducer: Reducer | None) -> Iterator[None]:
    """Within this block :func:`across_shards` combines with ``reducer`` (None: not at all)."""
    token = _REDUCER.set(reducer)
    try:
        yield
    finally:
        _REDUCER.reset(token)
