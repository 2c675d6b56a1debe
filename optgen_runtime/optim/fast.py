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
loads their bits as float32 and rounds the weight back on store, ``numba_bits.load``/
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
checks anything again (:mod:`optgen_runtime.optim.fast_scalars`).
"""

from __future__ import annotations

import bisect
import operator
from contextlib import nullcontext
from itertools import chain, repeat
from operator import attrgetter, is_not, itemgetter
from typing import Any

import numpy as np
import torch

from optgen_runtime.optim.fast_scalars import FastScalars
from optgen_runtime.optim.plan import _VERSION, _permuted
from optgen_runtime.optim.plan_data import Group, Plan
from optgen_runtime.triton_amp import Amp
from optgen_runtime.triton_cache import spans_overlap
from optgen_runtime.triton_vouched import Vouched
from optgen_runtime.writes import commit, deferred_writes

_PLAIN = frozenset((torch.Tensor, torch.nn.Parameter))
# what the survey reads of each tensor and state, at C speed
_GRAD, _DTYPE, _LAYOUT = (attrgetter(k) for k in ("grad", "dtype", "layout"))
_STEP = itemgetter("step")
_DATA_PTR, _SIZE, _GET_DEVICE = torch.Tensor.data_ptr, torch.Tensor.size, torch.Tensor.get_device
_IS_NEG = torch.Tensor.is_neg
_STRIDE = torch.Tensor.stride
SMALL = 64  # gradients compared one by one below this many; vectorised above


class _Absent:
    """A key a param group lacks, in ``FastStep._raw``'s record."""


_ABSENT = _Absent()
# hyperparameter values that cannot change while the group holds them (see ``_raw``)
_IMMUTABLE = frozenset((float, int, bool, str, type(None), _Absent))


class FastStep(FastScalars):
    """The fast step of ``GeneratedOptimizer`` (see the module docstring)."""

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
