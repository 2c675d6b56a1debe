"""The fast step's plan (:mod:`optgen_runtime.optim.fast`): what a full step checked and built,
kept for the next steps on the same buffers: ``Plan``, and per param group a ``Group`` (each
backend's buffers, views and tables). ``Planning._remember`` (:mod:`optgen_runtime.optim.plan`)
builds it after a full step that passed; the fast step (:mod:`optgen_runtime.optim.fast`,
:mod:`optgen_runtime.optim.fast_scalars`) reads and updates it.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from optgen_runtime.triton_vouched import Vouched

if TYPE_CHECKING:  # numba is imported only where the compiled CPU loops run (optional)
    from optgen_runtime.numba_support import Buffers


class Group:
    """One param group's part of a plan: its parameters' state dicts and what each backend
    takes (the compiled loops: ``buffers`` by address; the Triton kernels: the weights, state
    views, noise streams and offsets), and each tensor's kernel dtype for the scalar checks."""

    __slots__ = (
        "absent",
        "arrays",
        "buffers",
        "complex",
        "converted",
        "copies",
        "device",
        "dtypes",
        "group",
        "hp",
        "layouts",
        "offsets",
        "perms",
        "raw",
        "resolved",
        "states",
        "streams",
        "table_key",
        "tabled",
        "tables",
        "views",
        "vouched",
        "weights",
    )

    def __init__(self, group: dict[str, Any], states: list[dict[str, Any]]) -> None:
        self.group = group
        self.states = states
        # the numba loops': the gradients of another dtype than the (master) weight they
        # update, by position, each with its float32 scratch (converted into it every step)
        self.converted: tuple[list[int], list[torch.Tensor]] = ([], [])
        # the numba loops': the complex parameters' positions (stepped as their real views): a
        # lazily conjugated gradient there (refused by the full step) is looked for every step
        self.complex: list[int] = []
        # the numba loops': per tensor, its layout (``numba_support.Buffers.at``): PLAIN, or
        # BITS and MASTER, a bfloat16 gradient (and weight) updated on its bits (``view_bits``:
        # no working copy, no scratch, no copy from the master), which only a module's
        # ``step_tables`` does
        self.layouts: list[str] = []
        self.absent: tuple[str, ...] = ()  # the states absent under the plan's hyperparameters
        self.dtypes: list[Any] = []
        self.device: torch.device | None = None  # the Triton kernels': the group's one device
        self.buffers: Buffers | None = None
        self.weights: list[torch.Tensor] = []
        # a row/column rule's (kind "rows"): its weights and state buffers as NumPy views
        self.arrays: list[np.ndarray] = []
        self.views: list[dict[str, Any]] = []
        self.streams: list[int] = []
        self.offsets: list[int] = []
        # the Triton kernels': each weight's copy-out (``_copy_out``: a master's parameter the
        # update kernel writes), None where it has none; None if none has one
        self.copies: list[torch.Tensor | None] | None = []
        # the Triton kernels': each parameter's memory order (``ParamState._in_memory_order``)
        # where it is not contiguous, its gradient permuted alike each step; None if none is
        self.perms: list[tuple[int, ...] | None] | None = None
        # the last accepted step's hyperparameters: as given (``raw``: the group's values, None
        # when one may change in place), as passed, resolved
        self.raw: tuple[Any, ...] | None = None
        self.hp: dict[str, Any] = {}
        self.resolved: dict[str, float] = {}
        # the numba or Triton module whose step_tables takes this group (the rule's, or the
        # variant that runs), with the last checked tables of host scalars and their key
        # (``_tables``: arrays per dtype group; ``_rows``: a ScalarRows)
        self.tabled: ModuleType | None = None
        self.table_key: tuple[Any, ...] | None = None
        self.tables: Any = []
        # the Triton kernels' chunk table of this group's unchanged buffers (step_multi's)
        self.vouched = Vouched()


class Plan:
    """What a full step checked and built, for the next steps on the same buffers."""

    __slots__ = (
        "amp",
        "clear",
        "complex",
        "counter",
        "counts",
        "grad_bytes",
        "groups",
        "kind",
        "mastered",
        "masters",
        "names",
        "signature",
        "spans",
        "states",
        "steps",
        "versions",
        "weights",
        "works",
        "written_ends",
        "written_starts",
    )

    def __init__(self, signature: tuple[Any, ...], kind: str = "numba") -> None:
        self.signature = signature
        # "numba" (the compiled CPU loops' tables), "rows" (a row/column rule's compiled module
        # on NumPy views: ``step_prechecked``) or "triton"
        self.kind = kind
        # GradScaler's grad_scale and found_inf taken on the device (``_amp_on_device``)
        self.amp = False
        self.groups: list[Group] = []
        self.steps: list[torch.Tensor] = []  # every step count tensor of the step, in order
        self.states: list[dict[str, Any]] = []  # the state dict of each, in that order
        # their memory: ``steps`` are 0-d views of it, one NumPy add advances them all
        self.counter: np.ndarray = np.zeros(0, dtype=np.int64)
        self.counts: list[int] = []
        self.versions: list[int] = []
        self.grad_bytes: np.ndarray = np.zeros(0, dtype=np.int64)
        self.written_starts: np.ndarray = np.zeros(0, dtype=np.int64)
        self.written_ends: np.ndarray = np.zeros(0, dtype=np.int64)
        # parameters copied from their master copies after the step (neither the loops nor the
        # kernels wrote them)
        self.weights: list[torch.Tensor] = []
        self.masters: list[torch.Tensor] = []
        self.mastered: list[torch.Tensor] = []  # every parameter with a master copy
        # the numba loops': fp16/bf16 parameters without a master copy and their float32
        # working copies (``Stepping._computed_in``): copied in before, rounded back after
        self.works: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self.clear: list[int] = []  # the gradient addresses last found clear
        self.complex = False  # whether a group has complex parameters (``Group.complex``)
        self.names: tuple[str, ...] = ()  # a group's hyperparameters and tuple aliases (_raw)
        # the written spans' starts and ends, and the gradients' sizes, as lists
        self.spans: tuple[list[int], list[int], list[int]] = ([], [], [])
