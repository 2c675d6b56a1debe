"""Distributed training: FSDP2's DTensor parameters, ZeRO's partitions, DDP.

- **DDP** needs nothing: every rank holds every parameter and steps it identically.
- **FSDP2** (``fully_shard``): a parameter is a DTensor on a 1-D device mesh, ``Shard(0)`` (or
  ``Replicate()``). The step updates its local shard in place (the NumPy reference on views of
  it, or the Triton kernels), and its state tensors are DTensors with the parameter's mesh and
  placement, so ``torch.distributed.checkpoint`` saves and reshards them as torch.optim's.
  Per-tensor reductions (LAMB/LARS/LBSGD norms, the spec language's sums, maxima and minima,
  group reductions) are combined across the shards of each tensor before the update
  (:mod:`optgen_runtime.sharding`: every rank gathers the shards' float64 values and combines
  them in rank order, so all ranks compute the same bits); noise is drawn at each element's
  index in the full tensor (the generated ``noise_offset``), so a shard draws the one-process
  noise. Refused at construction, naming the parameter: a mesh of more than one dimension, a
  placement other than ``Shard(0)``/``Replicate()``, a sharded parameter of a rule whose
  reductions run along rows or columns or which needs the weight's sizes or whole matrix
  (Adafactor, SM3, CAME, Muon: a shard of rows sees only its rows), and, for a rule with
  reductions, a param group mixing sharded and unsharded parameters.
- **ZeRO** (``ZeroRedundancyOptimizer``): each rank's optimizer holds a partition of the
  parameters. Noise streams are keyed by a parameter's index in the ZeRO optimizer's (global)
  parameter order, found at construction from the ZeroRedundancyOptimizer building this one,
  so a weight draws the noise it draws in one process, whichever rank updates it.
"""

from __future__ import annotations

import inspect
import sys
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from optgen_runtime.numpy_support import COMBINE, IDENTITY
from optgen_runtime.sharding import Reducer


def is_dtensor(x: Any) -> bool:
    """Whether ``x`` is a DTensor. torch.distributed.tensor is not imported here (it costs
    about a second and loads sympy): while nothing else has imported it, there are none."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(x, module.DTensor)


def local(x: Any) -> Any:
    """A DTensor's local shard (a plain tensor as it is)."""
    return x.to_local() if is_dtensor(x) else x


class Placement(NamedTuple):
    """Where a DTensor parameter's local shard lies in the full tensor."""

    sharded: bool  # Shard(0) over more than one rank
    offset: int  # the index of the local shard's first element in the full (flat) tensor
    group: Any  # the mesh's process group


def placement(where: str, label: str, p: torch.Tensor) -> Placement | None:
    """``p``'s placement (None for a plain tensor); refuses what the classes do not support."""
    if not is_dtensor(p):
        return None
    from torch.distributed.tensor import Replicate, Shard

    mesh = p.device_mesh
    if mesh.ndim != 1:
        raise ValueError(
            f"{where}: {label} is a DTensor on a {mesh.ndim}-D device mesh; only 1-D meshes "
            "(fully_shard over one dimension) are supported"
        )
    (place,) = p.placements
    if isinstance(place, Replicate):
        return Placement(False, 0, mesh.get_group())
    if not (isinstance(place, Shard) and place.dim in (0, -p.dim())) or p.dim() == 0:
        raise ValueError(
            f"{where}: {label} is a DTensor placed {place!r}; only Shard(0) (fully_shard) and "
            "Replicate() are supported"
        )
    rows, size = p.shape[0], mesh.size()
    chunk = -(-rows // size)  # torch.chunk's split, as Shard(0) makes it
    start = min(mesh.get_local_rank() * chunk, rows)
    shard = local(p)
    if tuple(shard.shape) != (min(chunk, rows - start), *p.shape[1:]):
        raise ValueError(
            f"{where}: {label}'s local shard has shape {tuple(shard.shape)}, not the even "
            f"Shard(0) split of {tuple(p.shape)} over {size} ranks"
        )
    row = shard[0].numel() if shard.shape[0] else int(torch.Size(p.shape[1:]).numel())
    return Placement(size > 1, start * row, mesh.get_group())


def like(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x`` (shaped like ``p``'s local shard) as a DTensor placed as ``p`` is; as it is for a
    plain ``p``."""
    if not is_dtensor(p):
        return x
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        x, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride()
    )


def gather_reducer(group: Any, device: torch.device) -> Reducer:
    """Combine each tensor's reductions over the ranks of ``group``: every rank gathers every
    rank's float64 values (a tensor on ``device``, the parameters': NCCL needs CUDA) and
    combines them in rank order (sums added, max/min NaN-propagating), so every rank gets the
    same bits."""

    import torch.distributed as dist

    def reduce(kinds: dict[str, str], sums: list[dict[str, float]]) -> list[dict[str, float]]:
        names = [sorted(s) for s in sums]
        values = [s[n] for s, keys in zip(sums, names, strict=True) for n in keys]
        mine = torch.tensor(values, dtype=torch.float64, device=device)
        every = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
        dist.all_gather(every, mine, group=group)
        ranks = [x.cpu().tolist() for x in every]
        out, k = [], 0
        for keys in names:
            combined = {}
            for name in keys:
                total = IDENTITY[kinds[name]]
                for rank in ranks:
                    total = COMBINE[kinds[name]](total, rank[k])
                combined[name] = total
                k += 1
            out.append(combined)
        return out

    return reduce


def zero_owner() -> Callable[[], Any] | None:
    """A weak reference to the ``ZeroRedundancyOptimizer`` whose constructor is building this
    optimizer (its partition of the parameters), or None (as :func:`is_dtensor`, nothing is
    imported: while nothing else has imported ZeRO, there is none)."""
    module = sys.modules.get("torch.distributed.optim.zero_redundancy_optimizer")
    if module is None:
        return None
    zero = module.ZeroRedundancyOptimizer
    frame = inspect.currentframe()
    for _ in range(16):
        frame = frame.f_back if frame is not None else None
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, zero):
            return weakref.ref(owner)
    return None


class Distributed:
    """The distributed-training support of ``GeneratedOptimizer`` (see the module docstring)."""

    def _placement(self, p: torch.Tensor, label: str) -> Placement | None:
        return placement(type(self).__name__, label, p)

    def _check_distributed(self, params: list[torch.Tensor], first: int) -> None:
        """Refuse, naming the parameter, what the step cannot do for a group's DTensors
        (parameters ``first``, ``first + 1``, ... in ``state_dict()``); writes nothing."""
        meta, name = self.META, type(self).__name__
        along = sorted(
            {*getattr(meta, "STATE_AXES", {}), *(getattr(meta, "REDUCE_AXES", None) or {})}
        )
        sizes = getattr(meta, "SIZES", ())
        needs_whole = getattr(meta, "MATRIX_VALUES", ()) or sizes or along
        kinds = set()
        for k, p in enumerate(params):
            label = f"parameter {first + k}"
            where = self._placement(p, label)
            kinds.add(where is not None and where.sharded)
            if where is not None and where.sharded and needs_whole:
                what = (
                    f"its reductions along rows or columns ({', '.join(along)})"
                    if along
                    else "the whole matrix"
                    if getattr(meta, "MATRIX_VALUES", ())
                    else f"the weight's sizes ({', '.join(sizes)})"
                )
                raise ValueError(
                    f"{name}: {label} is sharded (Shard(0) over {p.device_mesh.size()} ranks); "
                    f"{name} needs {what}, which a shard of rows cannot give: not supported "
                    "(keep this parameter replicated, or use an elementwise rule)"
                )
        if meta.REDUCTIONS and len(kinds) > 1:
            raise ValueError(
                f"{name}: parameters {first}..{first + len(params) - 1} of one param group mix "
                f"sharded DTensors and unsharded tensors; {name}'s reductions "
                f"({', '.join(meta.REDUCTIONS)}) are combined across shards for a whole group: "
                "put them in separate param groups"
            )

    def _reducer(self, params: list[torch.Tensor]) -> Reducer | None:
        """The reducer of a group's step: across the shards where its parameters are sharded."""
        if not (self.META.REDUCTIONS and params):
            return None
        where = self._placement(params[0], "parameter")
        if where is None or not where.sharded:
            return None
        return gather_reducer(where.group, params[0].device)

    def _noise_offset(self, p: torch.Tensor) -> int:
        where = self._placement(p, "parameter")
        return 0 if where is None else where.offset

    def _stream(self, p: torch.Tensor, indices: dict[int, int]) -> int:
        """``p``'s noise stream: its index in ``state_dict()``, or in the ZeRO optimizer's
        global parameter order when this optimizer holds one rank's partition."""
        owner = self._zero() if getattr(self, "_zero", None) is not None else None
        if owner is not None:
            return owner._param_to_index[p]
        return indices[id(p)]
