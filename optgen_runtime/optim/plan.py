"""How a full step that passed builds the fast step's plan (:mod:`optgen_runtime.optim.fast`;
the plan's classes, ``Group`` and ``Plan``, are :mod:`optgen_runtime.optim.plan_data`'s):
``Planning._remember``: per group, its parameters' layouts, the compiled loops' buffers by
address or the Triton kernels' views, the written spans, the step counts made views of one array.
"""

from __future__ import annotations

from operator import attrgetter
from types import ModuleType
from typing import Any

import numpy as np
import torch

from optgen_runtime.common import BITS, HALF_BITS, HALF_MASTER, MASTER, PLAIN
from optgen_runtime.optim.plan_data import Group, Plan
from optgen_runtime.variants import running_module

# the compiled loops' layouts of a parameter of these dtypes on its bits: without, with a master
_BITS_LAYOUTS = {torch.bfloat16: (BITS, MASTER), torch.float16: (HALF_BITS, HALF_MASTER)}
_VERSION = attrgetter("_version")
_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}
# a complex parameter's dtype -> its real view's (``torch.view_as_real``: the same memory)
_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}


class Planning:
    """How ``FastStep`` builds its plan after a full step (see the module docstring)."""

    _plan: Plan | None = None

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
        reductions'; float16 where the CPU converts it, ``numba_bits.HALF_NATIVE``); else
        PLAIN. ``_on_bits = False`` keeps the working copies and scratches (the benchmark's
        comparison)."""
        if not getattr(self, "_on_bits", True) or perm is not None:
            return PLAIN
        if p.dtype not in _BITS_LAYOUTS or g.dtype != p.dtype:
            return PLAIN
        if p.dtype == torch.float16:
            from optgen_runtime.numba_bits import HALF_NATIVE  # numba is loaded by now

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


def _numpy_view(x: torch.Tensor) -> np.ndarray:
    """A state buffer as the full step shows it to a module (``Stepping._numba_step``)."""
    return x.detach().numpy()


def _permuted(x: torch.Tensor, perm: tuple[int, ...] | None) -> torch.Tensor:
    """``x`` in its parameter's memory order (a contiguous view), or as it is (None)."""
    return x if perm is None else x.permute(perm)
