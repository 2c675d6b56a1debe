"""The step of an unchanged parameter set on the compiled CPU loops: host work per tensor cut to
what Python cannot avoid.

A full step (:mod:`optgen_runtime.optim.step`) checks every parameter, gradient and state
buffer, then creates views, step counts and address tables tensor by tensor. Once a step has
passed, the next one rarely differs but for its gradients (``zero_grad(set_to_none=True)`` and a
backward give new tensors, often at new addresses) and the step counts. ``FastStep`` remembers
what the full step checked and built (``Plan``) and takes a step on it when one pass over the
parameters finds the same:

- the same parameters with a gradient, in the same groups, with the same backend settings;
- each parameter and master copy at the same address with the same shape and dtype, each
  state dict the same object with the same entries, each state tensor the same object at the
  same address, unmodified by torch since (its version counter: any in-place torch op, a
  ``resize_`` or ``set_`` bumps it; the compiled loops write through raw addresses and do not);
- each gradient a plain, dense tensor of its parameter's shape, dtype, device and strides
  (contiguous; or, for a parameter that is not, the parameter's own strides where the rule is
  shown it in memory order with every state buffer in those strides: channels_last weights,
  their gradients and states, indexed flat alike), overlapping no buffer the step writes (one
  vectorised test over the sorted spans of the written buffers, which the full step proved
  disjoint);
- each step count the value the last step left (its version counter again).

On the compiled loops a gradient of another dtype than the weight it updates (a fp16/bf16
gradient of a float32 master copy) is converted into a float32 scratch of the plan's every
step, and a fp16/bf16 parameter without a master copy is updated through a float32 working copy
of the plan's, copied in before and rounded back after the step: what the full step does with
temporaries (``Stepping._computed_in``), to the bit. A contiguous bfloat16 or float16 parameter
and gradient of one dtype go to the loops as they are (``_bits_layout``: every compiled loop
loads their bits as float32 and rounds the weight back on store, ``numba_support.load``/
``store``): the same bits, without the copies (2.5 x less memory traffic for Adam). So does a
contiguous bfloat16 or float16 gradient of a float32 master copy, its parameter (of the
gradient's dtype) rounded from the master chunk by chunk in the same loop (no scratch, no copy
pass after the step: 28 bytes per element for Adam against 40). On the Triton kernels the update
writes such a parameter from its master likewise (``Stepping._copy_out``: the module's
``copies``); only what neither takes (a channels_last parameter's master) is copied after the
step, in one ``torch._foreach_copy_``.

A GradScaler's ``grad_scale`` and ``found_inf`` are taken as the full step takes them on the
device (``AmpScaling._amp_on_device``: the Triton path of a rule without per-tensor sums): passed
to the kernels, the step counts and host states advanced speculatively, rolled back by
``_settle`` if the flag was set. Anything else (a first step, a new or reshaped buffer, a DTensor,
a GradScaler whose tensors are read on the host, step inputs, a complex parameter on the
Triton kernels, a rule that is not compiled) takes the full step, which checks
everything and names the culprit, then remembers the new plan. Hyperparameters are resolved and
checked every step, and every host scalar is checked before anything is written, as in the
full step. The step counts advance in one NumPy add per step (``Plan.counter``: the plan makes
each step count a 0-d view of one array).

A rule of row and column factors (Adafactor, CAME, SM3: kind "rows") or of matrix equations
(Muon, AdaMuon: the same kind) takes the fast step on the CPU: the plan keeps NumPy views of
the weights and states, and the step is one ``step_prechecked`` of the compiled module per
group, which computes and checks every host scalar of every tensor before any write, as in the
full step. Float32 and float64 parameters and gradients of their dtype go as they are; a
fp16/bf16 parameter through a float32 working copy of the plan's and a gradient of another
dtype than its (master) weight through a float32 scratch of the plan's, as the full step does
with temporaries (to the bit); a master copy is the weight, the parameter rounded from it after
the step. (A matrix rule on the Triton kernels takes the full step every time.)

What the checks found is kept too, where it cannot change unseen: a group's hyperparameters,
when each value (and ``betas``) is the very object of the last step that passed and of an
immutable type (a float, an int, a bool, a string, None, a tuple of those), are that step's
resolution; and where the module that runs takes checked tables (``step_tables``: on the
compiled CPU loops, a rule whose host scalars depend on the hyperparameters and step count
alone, without noise; on the Triton kernels, one that also has no host states or inputs) the host
scalars are computed every step, but range-checked and made into the kernels' table only when
their values (to the bit) differ from the last step's, and the module neither resolves nor
checks anything again.
"""

from __future__ import annotations

import bisect
import operator
import struct
from contextlib import nullcontext
from itertools import chain, repeat
from operator import attrgetter, is_not, itemgetter
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from optgen_runtime.common import (
    BITS,
    HALF_BITS,
    HALF_MASTER,
    MASTER,
    PLAIN,
    commit,
    deferred_writes,
    host_state_values,
    running_module,
)
from optgen_runtime.scalars import check_scalars, computed
from optgen_runtime.triton_amp import Amp
from optgen_runtime.triton_cache import Vouched, spans_overlap
from optgen_runtime.triton_rows import ScalarRows, float32_rows

if TYPE_CHECKING:  # numba is imported only where the compiled CPU loops run (optional)
    from optgen_runtime.numba_support import Buffers

_PLAIN = frozenset((torch.Tensor, torch.nn.Parameter))
# the compiled loops' layouts of a parameter of these dtypes on its bits: without, with a master
_BITS_LAYOUTS = {torch.bfloat16: (BITS, MASTER), torch.float16: (HALF_BITS, HALF_MASTER)}
# what the survey reads of each tensor and state, at C speed
_GRAD, _DTYPE, _LAYOUT, _VERSION = (attrgetter(k) for k in ("grad", "dtype", "layout", "_version"))
_STEP = itemgetter("step")
_DATA_PTR, _SIZE, _GET_DEVICE = torch.Tensor.data_ptr, torch.Tensor.size, torch.Tensor.get_device
_IS_NEG = torch.Tensor.is_neg
_STRIDE = torch.Tensor.stride
SMALL = 64  # gradients compared one by one below this many; vectorised above
_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}
# a complex parameter's dtype -> its real view's (``torch.view_as_real``: the same memory)
_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}
# hyperparameter values that cannot change while the group holds them (see ``_raw``)


class _Absent:
    """A key a param group lacks, in ``Fast._raw``'s record."""


_ABSENT = _Absent()
_IMMUTABLE = frozenset((float, int, bool, str, type(None), _Absent))


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


class FastStep:
    """The fast step of ``GeneratedOptimizer`` (see the module docstring)."""

    _plan: Plan | None = None

    def _survey(self) -> tuple[tuple[Any, ...], list[list[torch.Tensor]]] | None:
        """(signature, each group's gradients) of this step in one pass; None where the fast
        step does not apply (a tensor subclass, a sparse gradient, a parameter without state).
        The strides of the parameters and gradients are in the signature only where a gradient
        is not contiguous (a plan takes strided ones only as the parameter's, channels_last)."""
        state = self.state
        names = self.META.STATES
        absent = self.META.ABSENT  # may be missing (``absent_when``): presence in the signature
        every = itemgetter(*names) if names and not absent else None  # all present: at C speed
        parts: list[Any] = [self.backend, self.multi_precision, len(self.param_groups)]
        grads: list[list[torch.Tensor]] = []
        try:
            for group in self.param_groups:
                params = group["params"]
                gs = list(map(_GRAD, params))  # each gradient read once
                if not all(map(is_not, gs, repeat(None))):
                    params = [p for p, g in zip(params, gs, strict=True) if g is not None]
                    gs = [g for g in gs if g is not None]
                parts += (id(group), len(params))
                if not params:
                    continue
                states = list(map(state.get, params))
                if not {*map(type, params), *map(type, gs)} <= _PLAIN:
                    return None
                steps = list(map(_STEP, states))  # KeyError, TypeError: no state yet
                if every is None:
                    held = [s[k] for s in states for k in names if k in s or k not in absent]
                elif len(names) == 1:
                    held = list(map(every, states))
                else:
                    held = list(chain.from_iterable(map(every, states)))
                masters = [s.get("master") for s in states]
                held += [m for m in masters if m is not None]
                if not {*map(type, held), *map(type, steps)} <= _PLAIN:
                    return None
                parts += (*map(id, params), *map(id, states), *map(len, states))
                parts += (*map(id, steps), *map(id, held), *map(id, masters))
                parts += (*map(_DATA_PTR, params), *map(_SIZE, params), *map(_DTYPE, params))
                if not all(map(torch.Tensor.is_contiguous, gs)):  # strided (channels_last)
                    parts += (*map(_STRIDE, params), *map(_STRIDE, gs))  # as the plan's
                parts += (*map(_SIZE, gs), *map(_GET_DEVICE, gs), *map(_DTYPE, gs))
                parts += (*map(_LAYOUT, gs), *map(_DATA_PTR, held), *map(_VERSION, held))
                grads.append(gs)
        except (KeyError, TypeError, AttributeError, RuntimeError):
            return None  # no state yet; a sparse gradient has no data pointer
        return tuple(parts), grads

    def _fast_step(self, given: Any) -> bool:
        """The step on the remembered plan, if this step finds what it was built on; False
        (nothing written) for a full step."""
        plan = self._plan
        if plan is None or given.arrays or given.scalars:
            return False
        if plan.kind != "triton" and not self._use_numba():
            return False
        scale, found_inf = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)
        scaled = scale is not None or found_inf is not None
        if scaled and not plan.amp:
            return False  # GradScaler's tensors read on the host: the full step
        surveyed = self._survey()
        if surveyed is None or surveyed[0] != plan.signature:
            return False
        if plan.mastered and self._masters_moved(plan.mastered):
            return False  # a parameter changed outside the optimizer: the full step's
        grads = surveyed[1]
        for part, gs in zip(plan.groups, grads, strict=True) if plan.complex else ():
            if any(gs[j].is_conj() for j in part.complex):
                return False  # the full step refuses it, naming it
        if any(any(map(_IS_NEG, gs)) for gs in grads):
            return False  # a lazily negated view (its memory holds -g): refused, naming it
        pointers = [list(map(torch.Tensor.data_ptr, gs)) for gs in grads]
        if not self._grads_clear(plan, pointers):
            return False  # the full step names the overlap
        steps = plan.steps
        if list(map(_VERSION, steps)) != plan.versions:
            return False  # a step count changed in place: checked in full
        ts = [c + 1 for c in plan.counts]
        # every group's hyperparameters and host scalars checked before any write
        checked, at = [], 0
        for part in plan.groups:
            each = ts[at : at + len(part.states)]
            at += len(part.states)
            # one step count for all: checked once
            counts = each[0] if each.count(each[0]) == len(each) else each
            raw = self._raw(part.group, plan.names)
            if raw is not None and part.raw is not None and all(map(operator.is_, raw, part.raw)):
                hp, resolved, updates = part.hp, part.resolved, None  # as the last step's
                tabled = part.tabled
            else:
                updates = self._alias_updates(part.group)
                hp = self._hyper({**part.group, **updates})
                resolved = self._check(hp)
                if self._absent(resolved) != part.absent:
                    return False  # a state comes or goes (SGD's momentum switched): a full step
                tabled = self._tabled(resolved, plan.kind)
            tables = None
            if tabled is not None and plan.kind == "triton":
                tables = self._rows(part, tabled, resolved, counts)
            elif tabled is not None:
                tables = self._tables(part, tabled, resolved, counts)
            elif plan.kind != "rows":  # (a row/column rule's module checks every scalar first)
                self._check_fast_scalars(resolved, each, part)
            checked.append((part, updates, hp, resolved, counts, tabled, tables))
        amps: dict[Any, Amp] = {}
        if scaled:  # as the full step: the kernels skip and unscale, the counts speculate
            undo: Any = ()
            if found_inf is not None:  # the states' counts and host states before the step
                host, states = self.META.HOST_STATES, plan.states
                if host:
                    undo = [
                        (None, s, c, {k: s[k] for k in host})
                        for s, c in zip(states, plan.counts, strict=True)
                    ]
                else:  # read only after a skipped step: built then (plan.counts is not mutated)
                    undo = zip(repeat(None), states, plan.counts, repeat({}))
            devices = list(dict.fromkeys(part.device for part in plan.groups))
            amps = self._device_amp(devices, scale, found_inf, undo)
        for part, updates, _, _, _, tabled, _ in checked:
            if updates is not None and tabled is not part.tabled:
                part.vouched = Vouched()  # another module's chunk table
                part.tabled = tabled
        params, works = plan.works
        if works:  # the fp16/bf16 weights in float32, as the full step's working copies
            torch._foreach_copy_(works, params)
        # a rule whose modules can refuse after these checks (sums, host states): every group's
        # module checks first, the writes queued (commit) and made once all have passed
        with deferred_writes() if self._refuses_late() else nullcontext([]) as writes:
            self._fast_groups(plan, checked, grads, pointers, amps)
        for write in writes:
            write()
        if works:  # rounded back to nearest, ties to even
            torch._foreach_copy_(params, works)
        for part, updates, hp, resolved, _, tabled, _ in checked:  # accepted: the aliases
            if updates is not None:
                self._apply_aliases(part.group, updates)
                part.raw, part.hp, part.resolved = self._raw(part.group, plan.names), hp, resolved
                part.tabled = tabled
        plan.counter += 1  # every step count, in place (no torch op: versions unchanged)
        plan.counts = ts
        if plan.masters:
            torch._foreach_copy_(plan.weights, plan.masters)
        if plan.mastered:
            self._note_masters(plan.mastered)
        return True

    def _fast_groups(
        self,
        plan: Plan,
        checked: list[Any],
        grads: list[list[torch.Tensor]],
        pointers: list[list[int]],
        amps: dict[Any, Amp],
    ) -> None:
        """Each group's module step on the plan's buffers (``_fast_step``)."""
        for (part, _, hp, _, counts, tabled, tables), gs, ptrs in zip(
            checked, grads, pointers, strict=True
        ):
            if part.perms is not None:  # Triton: shown as their parameters (views, no copy)
                gs = list(map(_permuted, gs, part.perms))
            if plan.kind == "triton" and tabled is not None:
                part.vouched.pointers = ptrs  # read above: not again
                tabled.step_tables(
                    part.weights,
                    gs,
                    part.views,
                    tables,
                    prechecked=part.vouched,
                    amp=amps.get(part.device),
                    **({"copies": part.copies} if part.copies is not None else {}),
                )
                continue
            if plan.kind == "triton":
                self._fast_triton(part, gs, counts, hp, amps.get(part.device))
                continue
            if plan.kind == "rows":  # every scalar checked before any write (its stepper)
                grads = list(map(torch.Tensor.numpy, _converted(part, gs)))
                self._numba().step_prechecked(part.arrays, grads, part.views, counts, **hp)
                continue
            assert part.buffers is not None
            if part.converted[0]:  # the rows name the scratches
                gs = _converted(part, gs)
                ptrs = list(ptrs)
                for j in part.converted[0]:
                    ptrs[j] = gs[j].data_ptr()
            for indices, addresses, _, _ in part.buffers.groups:
                addresses[:, 1] = ptrs if len(indices) == len(ptrs) else [ptrs[j] for j in indices]
            if tabled is not None:
                tabled.step_tables(part.buffers, tables)
            else:
                self._fast_numba(part, counts, hp)

    @staticmethod
    def _raw(group: dict[str, Any], names: tuple[str, ...]) -> tuple[Any, ...] | None:
        """The group's hyperparameters and tuple aliases as the objects it holds (``_ABSENT``
        for a key it lacks: a drop-in's own setting at its default), or None when one is of a
        type that may change in place (a tensor): equal by identity to the last accepted
        step's, they resolve as it did."""
        raw = tuple(group.get(name, _ABSENT) for name in names)
        for value in raw:
            kind = type(value)
            if kind is tuple:
                if not {*map(type, value)} <= _IMMUTABLE:
                    return None
            elif kind not in _IMMUTABLE:
                return None
        return raw

    def _tables(
        self, part: Group, module: ModuleType, resolved: dict[str, float], counts: Any
    ) -> list[np.ndarray]:
        """The group's tables of host scalars for the module's ``step_tables`` (per dtype group
        of its buffers, one row per tensor), computed and range-checked as
        ``_check_scalar_rows`` and the module's ``_run`` do, errors naming the class; the last
        step's tables where the same module takes the same values, to the bit (-0.0 is not 0.0).
        ``module``: the numba module that runs at ``resolved`` (``_tabled``)."""
        name = type(self).__name__
        assert part.buffers is not None
        if type(counts) is int:
            value = computed(name, module.host_scalars, counts, **resolved)[0]
            key = _key(module, value)
            if key is not None and key == part.table_key:
                return part.tables
            values, which = [value], None
        else:
            firsts: dict[int, int] = {}
            which = [firsts.setdefault(t, len(firsts)) for t in counts]
            values = [computed(name, module.host_scalars, t, **resolved)[0] for t in firsts]
            key = None
        tables = []
        for indices, _, _, dtype in part.buffers.groups:
            rows = [check_scalars(name, module.SCALARS, v, dtype.type) for v in values]
            table = np.array(rows, dtype=dtype).reshape(len(rows), -1)
            if which is None and len(indices) > 1:
                table = np.repeat(table, len(indices), axis=0)
            elif which is not None:
                table = table[[which[j] for j in indices]]
            tables.append(table)
        if key is not None:
            part.table_key, part.tables = key, tables
        return tables

    def _rows(
        self, part: Group, module: ModuleType, resolved: dict[str, float], counts: Any
    ) -> ScalarRows:
        """The group's host scalars for the Triton module's ``step_tables``: computed and
        range-checked for float32 (the kernels' compute type) as ``_check_scalar_rows`` and the
        module's ``step_rows`` do, errors naming the class, once per distinct step count, rounded
        as ``step_rows`` rounds them; the last step's rows where the same module takes the same
        values, to the bit. ``module``: the Triton module that runs at ``resolved``."""
        name = type(self).__name__
        if type(counts) is int:
            value = computed(name, module.host_scalars, counts, **resolved)[0]
            key = _key(module, value)
            if key is not None and key == part.table_key:
                return part.tables
            check_scalars(name, module.SCALARS, value, np.float32)
            rows = ScalarRows(float32_rows([value], True), np.zeros(len(part.states), np.int64))
            if key is not None:
                part.table_key, part.tables = key, rows
            return rows
        firsts: dict[int, int] = {}
        which = [firsts.setdefault(t, len(firsts)) for t in counts]
        values = []
        for t in firsts:
            value = computed(name, module.host_scalars, t, **resolved)[0]
            values.append(check_scalars(name, module.SCALARS, value, np.float32))
        return ScalarRows(float32_rows(values, True), np.array(which, dtype=np.int64))

    def _fast_numba(self, part: Group, counts: Any, hp: dict[str, Any]) -> None:
        """One compiled call for the group (its gradient addresses written in the table): the
        module checks the hyperparameters and host scalars again, and writes the host states
        into the state dicts. Noise: each tensor's stream and offset, as the full step's."""
        assert part.buffers is not None
        noise = {"stream_ids": part.streams, "noise_offsets": part.offsets}
        self._numba().step_buffers(
            part.buffers, part.states, counts, **hp, **(noise if self.META.DRAWS else {})
        )
        if self.META.HOST_STATES:  # after the module's writes (queued with them)
            commit(lambda: self._host_back(part.states, part.states))

    def _host_back(self, views: list[dict[str, Any]], states: list[dict[str, Any]]) -> None:
        """The host states a module wrote into ``views``, as Python floats in ``states``."""
        host = self.META.HOST_STATES
        for view, s in zip(views, states, strict=True):
            for key in host:
                s[key] = float(view[key])

    def _fast_triton(
        self,
        part: Group,
        grads: list[torch.Tensor],
        counts: Any,
        hp: dict[str, Any],
        amp: Amp | None = None,
    ) -> None:
        """One ``step_multi`` of the Triton module for the group, on the remembered weights and
        state views (their host states refreshed from the state dicts, then written back)."""
        host = self.META.HOST_STATES
        for view, s in zip(part.views, part.states, strict=True) if host else ():
            view.update({key: s[key] for key in host})
        arrays: dict[str, Any] = {"noise_offsets": part.offsets} if self.META.DRAWS else {}
        if part.copies is not None:
            arrays["copies"] = part.copies
        self.TRITON.step_multi(  # every buffer checked: by the full step, then _survey
            part.weights,
            grads,
            part.views,
            counts,
            stream_ids=part.streams,
            prechecked=part.vouched,
            amp=amp,
            **hp,
            **arrays,
        )
        if host:  # after the module's writes (queued with them inside deferred_writes)
            commit(lambda: self._host_back(part.views, part.states))

    def _check_fast_scalars(self, resolved: dict[str, float], ts: list[int], part: Group) -> None:
        """The group's kernel scalars checked as the full step checks them
        (``_check_scalar_rows``): rows of distinct (step count, dtype) where there are no host
        states, else one per tensor with its host states (read and checked here)."""
        name, host = type(self).__name__, self.META.HOST_STATES
        if host:
            rows = [
                (t, dtype, host_state_values(name, s, host), {})
                for t, dtype, s in zip(ts, part.dtypes, part.states, strict=True)
            ]
        else:
            rows = [(t, dtype, {}, {}) for t, dtype in set(zip(ts, part.dtypes, strict=True))]
        self._check_scalar_rows(resolved, rows, {})

    @staticmethod
    def _grads_clear(plan: Plan, pointers: list[list[int]]) -> bool:
        """No gradient overlaps a buffer the step writes: the written spans are disjoint and
        sorted (the full step checked them), so each gradient need only be compared with the
        last span starting before its end (vectorised for many gradients; the gradients of
        the last step that passed, at the same addresses, again: nothing to compare)."""
        flat = [a for ptrs in pointers for a in ptrs]
        if flat == plan.clear or plan.written_starts.size == 0:
            return True
        if len(flat) <= SMALL:
            starts, ends, _ = plan.spans
            for a, size in zip(flat, plan.spans[2], strict=True):
                k = bisect.bisect_left(starts, a + size) - 1
                if size and k >= 0 and ends[k] > a:
                    return False
            plan.clear = flat
            return True
        begin = np.array(flat, dtype=np.int64)
        if spans_overlap(plan.written_starts, plan.written_ends, begin, begin + plan.grad_bytes):
            return False
        plan.clear = flat
        return True

    def _remember(self) -> None:
        """After a full step that passed: the plan for the next ones, where they can take it
        (every parameter with a gradient on the compiled CPU loops, or every one on the Triton
        kernels, as plain tensors)."""
        self._plan = None
        meta = self.META
        # row/column states (Adafactor, CAME, SM3) or matrix equations (Muon, AdaMuon): their
        # compiled module's ``step_prechecked`` on NumPy views, which checks its own scalars
        rows = bool(getattr(meta, "STATE_AXES", None)) or hasattr(meta, "MATRIX_VALUES")
        if meta.INPUTS or meta.STEP_SCALARS or (getattr(meta, "SIZES", ()) and not rows):
            return
        if rows and (meta.DRAWS or meta.HOST_STATES):
            return  # (none has them; the plan would need their streams and write-backs)
        scaled = getattr(self, "grad_scale", None) is not None
        scaled = scaled or getattr(self, "found_inf", None) is not None
        surveyed = self._survey()
        if surveyed is None:
            return
        groups = [g for g in self.param_groups if any(p.grad is not None for p in g["params"])]
        every = [p for g in groups for p in g["params"] if p.grad is not None]
        if all(self._use_triton(p) for p in every) and not rows:
            kind = "triton"
        elif self._use_numba() and all(p.device.type == "cpu" for p in every):
            kind = "rows" if rows else "numba"
        else:
            return
        if scaled and (kind != "triton" or meta.REDUCTIONS):
            return  # GradScaler's tensors read on the host (``_amp_on_device``): every step full
        plan = Plan(surveyed[0], kind)
        plan.amp = kind == "triton" and not meta.REDUCTIONS
        plan.names = self._group_keys()
        indices = self._indices() if kind == "triton" or meta.DRAWS else {}
        written: list[tuple[int, int]] = []
        grad_bytes: list[int] = []
        for group, gs in zip(groups, surveyed[1], strict=True):
            params = [p for p in group["params"] if p.grad is not None]
            part = Group(group, [self.state[p] for p in params])
            resolved = self._check(self._hyper(group))
            part.absent = self._absent(resolved)
            part.tabled = self._tabled(resolved, kind)  # the module that runs at resolved
            present = [k for k in meta.STATES if k not in part.absent]
            rows, shapes = [], []
            perms: list[tuple[int, ...] | None] = []
            for p, g, s in zip(params, gs, part.states, strict=True):
                if p.is_complex() and (kind != "numba" or g.dtype != p.dtype):
                    return  # on the kernels: the full step's real views
                weight = s.get("master", p)
                buffers = [weight, *(s[k] for k in present)]
                perm = None
                if not all(x.is_contiguous() for x in (*buffers, g)):
                    # indexed flat alike: a parameter shown in memory order, all in its strides
                    perm = None if "master" in s else self._in_memory_order(p)
                    if perm is None or any(x.stride() != p.stride() for x in (*buffers, g)):
                        return  # working copies: the full step's
                perms.append(perm)
                layout = PLAIN
                if kind == "rows":  # as the full step's ``_numba_step`` takes them
                    if perm is not None or p.is_complex() or not g.is_floating_point():
                        return
                    work = _work(plan, p, weight, self._computed_in(p, s))
                    if work is None or work.dtype not in _NUMPY:
                        return
                    if _scratch(part, g, work, len(part.arrays)) is None:
                        return
                    part.arrays.append(work.detach().numpy())
                    part.views.append(self._views(s, _numpy_view))
                elif kind == "numba":
                    if meta.DRAWS:  # its noise stream and offset, as the full step's
                        part.streams.append(self._stream(p, indices))
                        part.offsets.append(self._noise_offset(p))
                    work = weight
                    computed = self._computed_in(p, s)
                    layout = self._bits_layout(p, g, s, perm)
                    part.layouts.append(layout)
                    if layout in (BITS, HALF_BITS):  # the weight and gradient, on their bits
                        rows.append([x.data_ptr() for x in (p, g, *buffers[1:])])
                        shapes.append(tuple(p.shape))
                        part.dtypes.append(np.float32)
                    elif layout in (MASTER, HALF_MASTER):  # the gradient on its bits, p rounded
                        rows.append([x.data_ptr() for x in (weight, g, *buffers[1:], p)])
                        shapes.append(tuple(p.shape))
                        part.dtypes.append(np.float32)
                    else:
                        if computed is not None and perm is not None:
                            return  # (a strided working copy: the full step's)
                        work = _work(plan, p, weight, computed)
                        if work is None:
                            return
                        real = _REAL.get(work.dtype, work.dtype)  # a complex one as its real view
                        if real not in _NUMPY or g.is_complex() != work.is_complex():
                            return
                        if not (g.is_floating_point() or g.is_complex()):
                            return
                        grad = _scratch(part, g, work, len(rows))
                        if grad is None:
                            return
                        rows.append([x.data_ptr() for x in (work, grad, *buffers[1:])])
                        if p.is_complex():
                            part.complex.append(len(shapes))
                            plan.complex = True
                        shapes.append((*p.shape, 2) if p.is_complex() else tuple(p.shape))
                        part.dtypes.append(_NUMPY[real])
                else:
                    part.device = weight.device
                    part.weights.append(_permuted(weight.detach(), perm))
                    # the absent states: not passed
                    views = self._views(s, lambda x, perm=perm: _permuted(x, perm))
                    part.views.append({k: v for k, v in views.items() if k not in part.absent})
                    part.streams.append(self._stream(p, indices))
                    part.offsets.append(self._noise_offset(p))
                    part.dtypes.append(np.float32)
                    assert part.copies is not None
                    part.copies.append(self._copy_out(p, s))
                grad_bytes.append(g.element_size() * g.numel())
                # every state tensor counts as written, as in the full step's check (a buffer
                # absent by the hyperparameters but kept is not passed, nor may a grad overlap it)
                spans = [weight, *(s[k] for k in meta.STATES if k in s)]
                spans += [p] if "master" in s else []
                written += [
                    (x.data_ptr(), x.data_ptr() + x.element_size() * x.numel()) for x in spans
                ]
                # (the loops round a MASTER layout's p themselves, the kernels a copy-out)
                fused = layout in (MASTER, HALF_MASTER)
                fused = fused or (kind == "triton" and part.copies[-1] is not None)
                if "master" in s and not fused:
                    plan.weights.append(p)
                    plan.masters.append(s["master"])
                if "master" in s:
                    plan.mastered.append(p)
                plan.steps.append(s["step"])
                plan.states.append(s)
            if kind == "numba":
                from optgen_runtime.numba_support import Buffers  # numba is loaded by now

                even = self._numba().EVEN_CHUNKS
                part.buffers = Buffers.at(
                    rows, shapes, part.dtypes, even=even, layouts=part.layouts
                )
            elif any(perm is not None for perm in perms):
                part.perms = perms
            if not any(c is not None for c in part.copies or ()):
                part.copies = None
            plan.groups.append(part)
        written = sorted((a, b) for a, b in written if b > a)
        if any(b[0] < a[1] for a, b in zip(written, written[1:], strict=False)):
            return  # the full step would have refused this: never fast
        if len(set(map(id, plan.steps))) != len(plan.steps):
            return  # a step count shared by two parameters would advance twice
        plan.written_starts = np.array([a for a, _ in written], dtype=np.int64)
        plan.written_ends = np.array([b for _, b in written], dtype=np.int64)
        plan.grad_bytes = np.array(grad_bytes, dtype=np.int64)
        plan.spans = ([a for a, _ in written], [b for _, b in written], grad_bytes)
        if torch.is_inference_mode_enabled() or any(s.is_inference() for s in plan.steps):
            return  # an inference-mode tensor keeps no version counter: never fast
        plan.counts = [int(s) for s in plan.steps]
        # Each step count becomes a 0-d view of one int64 array (an exact int64 CPU tensor as
        # before, with its own 8-byte storage: saved, copied and loaded alone), so the fast
        # step advances them all with one NumPy add (torch._foreach_add_ on 1,000 0-d tensors
        # costs ~0.5 ms). The writes bypass torch, so the version counters stay: a torch op on
        # a step count (the user's, a full step's) still changes its version and is seen.
        plan.counter = np.array(plan.counts, dtype=np.int64)
        plan.steps = [
            torch.from_numpy(plan.counter[j : j + 1].reshape(())) for j in range(len(plan.states))
        ]
        for owner, step in zip(plan.states, plan.steps, strict=True):
            owner["step"] = step
        plan.versions = list(map(_VERSION, plan.steps))
        surveyed = self._survey()  # the signature names the step counts' objects
        if surveyed is None:
            return
        plan.signature = surveyed[0]
        self._plan = plan

    def _bits_layout(self, p: torch.Tensor, g: torch.Tensor, s: dict[str, Any], perm: Any) -> str:
        """How the compiled loops take parameter ``p``, its gradient ``g`` and state ``s``
        (``numba_support.Buffers.at``): on the bits of a contiguous bfloat16 or float16 ``p``
        and ``g`` of one dtype (``view_bits``) in float32, the weight rounded once, as the full
        step's working copy is (BITS, HALF_BITS: no master copy) or ``p`` rounded from a
        contiguous float32 master as the full step's copy from the master is (MASTER,
        HALF_MASTER): every compiled module's loops take such groups (its update's and
        reductions'; float16 where the CPU converts it, ``numba_support.HALF_NATIVE``); else
        PLAIN. ``_on_bits = False`` keeps the working copies and scratches (the benchmark's
        comparison)."""
        if not getattr(self, "_on_bits", True) or perm is not None:
            return PLAIN
        if p.dtype not in _BITS_LAYOUTS or g.dtype != p.dtype:
            return PLAIN
        if p.dtype == torch.float16:
            from optgen_runtime.numba_support import HALF_NATIVE  # numba is loaded by now

            if not HALF_NATIVE:
                return PLAIN  # no hardware conversions: the working copies
        if not (p.is_contiguous() and g.is_contiguous()):
            return PLAIN
        master = s.get("master")
        if master is None:
            return _BITS_LAYOUTS[p.dtype][0]
        if master.dtype == torch.float32 and master.is_contiguous():
            return _BITS_LAYOUTS[p.dtype][1]
        return PLAIN

    def _tabled(self, resolved: dict[str, float], kind: str) -> ModuleType | None:
        """The numba or Triton (``kind``) module whose update runs at the resolved
        hyperparameters (the rule's, or the variant its ``step_buffers`` or ``step_multi``
        runs: a special case, or the one without the absent states) where it takes checked
        tables (``step_tables``)."""
        if kind == "rows":
            return None  # ``step_prechecked``: it computes and checks its own scalars
        module = self._numba() if kind == "numba" else self.TRITON
        module = running_module(module, self.META, resolved)
        return module if hasattr(module, "step_tables") else None


def _work(
    plan: Plan, p: torch.Tensor, weight: torch.Tensor, computed: torch.dtype | None
) -> torch.Tensor | None:
    """The tensor the compiled loops update for ``p``: its (master) ``weight``, or, where the
    full step computes ``p`` in ``computed`` (a fp16/bf16 one), a working copy of the plan's in
    that dtype, copied in before each step and rounded back after (``plan.works``); None for a
    strided one (the full step's)."""
    if computed is None:
        return weight
    if not p.is_contiguous():
        return None
    work = torch.empty(p.shape, dtype=computed)
    plan.works[0].append(p)
    plan.works[1].append(work)
    return work


def _scratch(part: Group, g: torch.Tensor, work: torch.Tensor, at: int) -> torch.Tensor | None:
    """The gradient the loops read for the tensor at position ``at`` of ``part``: ``g``, or a
    scratch of ``work``'s dtype of the plan's that ``g`` is converted into every step
    (``_converted``), as the full step converts it; None for a strided ``g`` (the full step's)."""
    if g.dtype == work.dtype:
        return g
    if not g.is_contiguous():
        return None
    scratch = torch.empty(g.shape, dtype=work.dtype)
    part.converted[0].append(at)
    part.converted[1].append(scratch)
    return scratch


def _converted(part: Group, gs: list[torch.Tensor]) -> list[torch.Tensor]:
    """A group's gradients, those of another dtype than their weight converted into their
    scratches (one ``torch._foreach_copy_``) and given in their place."""
    which, scratches = part.converted
    if not which:
        return gs
    torch._foreach_copy_(scratches, [gs[j] for j in which])
    gs = list(gs)
    for j, scratch in zip(which, scratches, strict=True):
        gs[j] = scratch
    return gs


def _numpy_view(x: torch.Tensor) -> np.ndarray:
    """A state buffer as the full step shows it to a module (``Stepping._numba_step``)."""
    return x.detach().numpy()


def _permuted(x: torch.Tensor, perm: tuple[int, ...] | None) -> torch.Tensor:
    """``x`` in its parameter's memory order (a contiguous view), or as it is (None)."""
    return x if perm is None else x.permute(perm)


def _key(module: ModuleType, value: Any) -> tuple[Any, ...] | None:
    """What a table of host scalars is kept under: the module and the values, to the bit
    (-0.0 is not 0.0; a NaN never equals itself, so its table is never taken again)."""
    try:
        return (module, *value, struct.pack(f"{len(value)}d", *value))
    except (struct.error, OverflowError, TypeError):
        return None
