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
- each gradient a plain, dense, contiguous tensor of its parameter's shape, dtype and device,
  overlapping no buffer the step writes (one vectorised test over the sorted spans of the
  written buffers, which the full step proved disjoint);
- each step count the value the last step left (its version counter again).

Anything else (a first step, a new or reshaped buffer, a DTensor, a GradScaler, step inputs, a
gradient of another dtype, a rule that is not compiled) takes the full step, which checks
everything and names the culprit, then remembers the new plan. Hyperparameters are resolved and
checked every step, and every host scalar is checked before anything is written, as in the
full step. The step counts advance in one ``torch._foreach_add_`` per step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from optgen_runtime.common import host_state_values
from optgen_runtime.numba_support import Buffers
from optgen_runtime.scalars import check_scalars, computed

_PLAIN = (torch.Tensor, torch.nn.Parameter)
_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}


class Plan:
    """What a full step checked and built, for the next steps on the same buffers."""

    __slots__ = (
        "counts",
        "grad_bytes",
        "groups",
        "masters",
        "signature",
        "steps",
        "versions",
        "weights",
        "written_ends",
        "written_starts",
    )

    def __init__(self, signature: tuple[Any, ...]) -> None:
        self.signature = signature
        # per group: (group dict, its buffers by address, the state dicts, the grad column of
        # each dtype group: the step's tensor indices in that group's rows)
        self.groups: list[tuple[dict[str, Any], Buffers, list[dict[str, Any]]]] = []
        self.steps: list[torch.Tensor] = []  # every step count tensor of the step, in order
        self.counts: list[int] = []
        self.versions: list[int] = []
        self.grad_bytes: np.ndarray = np.zeros(0, dtype=np.int64)
        self.written_starts: np.ndarray = np.zeros(0, dtype=np.int64)
        self.written_ends: np.ndarray = np.zeros(0, dtype=np.int64)
        self.weights: list[torch.Tensor] = []  # parameters written from a master copy
        self.masters: list[torch.Tensor] = []


class FastStep:
    """The fast step of ``GeneratedOptimizer`` (see the module docstring)."""

    _plan: Plan | None = None

    def _survey(self) -> tuple[tuple[Any, ...], list[list[torch.Tensor]]] | None:
        """(signature, each group's gradients) of this step in one pass; None where the fast
        step does not apply (a tensor subclass, a sparse or non-contiguous gradient, a
        parameter without state)."""
        state = self.state
        names = self.META.STATES
        parts: list[Any] = [self.backend, self.multi_precision, len(self.param_groups)]
        grads: list[list[torch.Tensor]] = []
        try:
            for group in self.param_groups:
                params = [p for p in group["params"] if p.grad is not None]
                parts += (id(group), len(params))
                if not params:
                    continue
                gs = [p.grad for p in params]
                states = [state.get(p) for p in params]
                if not {*map(type, params), *map(type, gs)} <= {*_PLAIN}:
                    return None
                if not all(map(torch.Tensor.is_contiguous, gs)):
                    return None  # copied by the full step: no address to give
                steps = [s["step"] for s in states]  # KeyError, TypeError: no state yet
                held = [s[k] for s in states for k in names]
                masters = [s.get("master") for s in states]
                held += [m for m in masters if m is not None]
                if not {*map(type, held), *map(type, steps)} <= {*_PLAIN}:
                    return None
                parts += (*map(id, params), *map(id, states), *map(len, states))
                parts += (*map(id, steps), *map(id, held), *map(id, masters))
                parts += (*map(torch.Tensor.data_ptr, params), *map(torch.Tensor.size, params))
                parts += [p.dtype for p in params]
                parts += (*map(torch.Tensor.size, gs), *map(torch.Tensor.get_device, gs))
                parts += [g.dtype for g in gs]
                parts += [g.layout for g in gs]
                parts += (*map(torch.Tensor.data_ptr, held), *[x._version for x in held])
                grads.append(gs)
        except (KeyError, TypeError, AttributeError, RuntimeError):
            return None  # no state yet; a sparse gradient has no data pointer
        return tuple(parts), grads

    def _fast_step(self, given: Any) -> bool:
        """The step on the remembered plan, if this step finds what it was built on; False
        (nothing written) for a full step."""
        plan = self._plan
        if plan is None or given.arrays or given.scalars or not self._use_numba():
            return False
        if getattr(self, "grad_scale", None) is not None:
            return False
        if getattr(self, "found_inf", None) is not None:
            return False
        surveyed = self._survey()
        if surveyed is None or surveyed[0] != plan.signature:
            return False
        grads = surveyed[1]
        pointers = [list(map(torch.Tensor.data_ptr, gs)) for gs in grads]
        if not self._grads_clear(plan, pointers):
            return False  # the full step names the overlap
        steps = plan.steps
        if [s._version for s in steps] != plan.versions:
            return False  # a step count changed in place: checked in full
        ts = [c + 1 for c in plan.counts]
        # every group's hyperparameters and host scalars checked before any write
        hps, synced, at = [], [], 0
        for group, buffers, states in plan.groups:
            updates = self._alias_updates(group)
            hp = self._hyper({**group, **updates})
            resolved = self._check(hp)
            self._check_fast_scalars(resolved, ts[at : at + buffers.count], buffers, states)
            hps.append(hp)
            synced.append((group, updates))
            at += buffers.count
        for group, updates in synced:
            self._apply_aliases(group, updates)
        module, at = self._numba(), 0
        for (_, buffers, states), hp, ptrs in zip(plan.groups, hps, pointers, strict=True):
            for indices, addresses, _, _ in buffers.groups:
                addresses[:, 1] = ptrs if len(indices) == len(ptrs) else [ptrs[j] for j in indices]
            counts = ts[at : at + buffers.count]
            if counts.count(counts[0]) == len(counts):
                counts = counts[0]  # one step count for all: checked once
            module.step_buffers(buffers, states, counts, **hp)
            for s in states if self.META.HOST_STATES else ():
                for key in self.META.HOST_STATES:
                    s[key] = float(s[key])
            at += buffers.count
        torch._foreach_add_(steps, 1)
        plan.counts = ts
        plan.versions = [s._version for s in steps]
        if plan.masters:
            torch._foreach_copy_(plan.weights, plan.masters)
        return True

    def _check_fast_scalars(
        self,
        resolved: dict[str, float],
        ts: list[int],
        buffers: Buffers,
        states: list[dict[str, Any]],
    ) -> None:
        """The group's kernel scalars computed and range-checked (as ``_check_scalars``) once
        per distinct step count and dtype (and host states); rules with reductions are checked
        by the module once its sums are known, before it writes."""
        meta, name = self.META, type(self).__name__
        if meta.REDUCTIONS:
            return
        done = set()
        for indices, _, _, dtype in buffers.groups:
            if not meta.HOST_STATES:  # once per distinct step count
                for t in sorted({ts[j] for j in indices}):
                    scalars, _ = computed(name, meta.host_scalars, t, **resolved)
                    check_scalars(name, meta.SCALARS, scalars, dtype.type)
                continue
            for j in indices:
                host = host_state_values(name, states[j], meta.HOST_STATES)
                seen = (ts[j], dtype, *host.items())
                if seen in done and all(v == v and v != 0 for v in host.values()):
                    continue
                done.add(seen)
                scalars, _ = computed(name, meta.host_scalars, ts[j], **resolved, **host)
                check_scalars(name, meta.SCALARS, scalars, dtype.type)

    @staticmethod
    def _grads_clear(plan: Plan, pointers: list[list[int]]) -> bool:
        """No gradient overlaps a buffer the step writes: the written spans are disjoint and
        sorted (the full step checked them), so each gradient need only be compared with the
        last span starting before its end."""
        starts = np.fromiter((a for ptrs in pointers for a in ptrs), dtype=np.int64)
        ends = starts + plan.grad_bytes
        if plan.written_starts.size == 0:
            return True
        at = np.searchsorted(plan.written_starts, ends, side="left") - 1
        before = at < 0
        clear = before | (plan.written_ends[np.maximum(at, 0)] <= starts) | (ends == starts)
        return bool(clear.all())

    def _remember(self) -> None:
        """After a full step that passed: the plan for the next ones, where they can take it
        (every parameter with a gradient on the compiled CPU loops, as plain tensors)."""
        self._plan = None
        meta = self.META
        if not self._use_numba() or meta.DRAWS or meta.INPUTS or meta.STEP_SCALARS:
            return
        if meta.SIZES or getattr(self, "grad_scale", None) is not None:
            return
        surveyed = self._survey()
        if surveyed is None:
            return
        plan = Plan(surveyed[0])
        written: list[tuple[int, int]] = []
        grad_bytes: list[int] = []
        groups = [g for g in self.param_groups if any(p.grad is not None for p in g["params"])]
        for group, gs in zip(groups, surveyed[1], strict=True):
            params = [p for p in group["params"] if p.grad is not None]
            states = [self.state[p] for p in params]
            rows, shapes, dtypes = [], [], []
            for p, g, s in zip(params, gs, states, strict=True):
                weight = s.get("master", p)
                if p.device.type != "cpu" or g.dtype != weight.dtype or weight.dtype not in _NUMPY:
                    return  # the full step converts or launches elsewhere
                if not weight.is_contiguous():
                    return
                buffers = [weight, *(s[k] for k in meta.STATES)]
                if any(not x.is_contiguous() for x in buffers):
                    return
                rows.append([weight.data_ptr(), g.data_ptr(), *(x.data_ptr() for x in buffers[1:])])
                shapes.append(tuple(p.shape))
                dtypes.append(_NUMPY[weight.dtype])
                size = weight.element_size() * weight.numel()
                grad_bytes.append(size)
                spans = [*buffers, p] if "master" in s else buffers
                written += [
                    (x.data_ptr(), x.data_ptr() + x.element_size() * x.numel()) for x in spans
                ]
                if "master" in s:
                    plan.weights.append(p)
                    plan.masters.append(s["master"])
                plan.steps.append(s["step"])
            plan.groups.append((group, Buffers.at(rows, shapes, dtypes), states))
        written = sorted((a, b) for a, b in written if b > a)
        if any(b[0] < a[1] for a, b in zip(written, written[1:], strict=False)):
            return  # the full step would have refused this: never fast
        plan.written_starts = np.array([a for a, _ in written], dtype=np.int64)
        plan.written_ends = np.array([b for _, b in written], dtype=np.int64)
        plan.grad_bytes = np.array(grad_bytes, dtype=np.int64)
        plan.counts = [int(s) for s in plan.steps]
        plan.versions = [s._version for s in plan.steps]
        if len(set(map(id, plan.steps))) != len(plan.steps):
            return  # a step count shared by two parameters would advance twice
        self._plan = plan
