"""The step's backends (:mod:`optgen_runtime.optim.step` decides and checks, then calls one):
the NumPy reference, the compiled numba loops (imported once per rule, or why they cannot be)
and the Triton kernels, each on one param group's parameters with a gradient, with the scratch
buffers a fp16/bf16 gradient of a float32 (master) weight is converted into; and what every
backend does around its module's call: each parameter's weight and states as the module takes
them (``_weights``, ``_views``), and after its writes the working copies written back, the step
count and host states advanced (``_finish``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

from optgen_runtime.optim.distributed import local
from optgen_runtime.optim.inputs import Given
from optgen_runtime.optim.layout import Shown
from optgen_runtime.optim.state import LOW_PRECISION
from optgen_runtime.triton_amp import Amp
from optgen_runtime.writes import commit, deferring


class NumbaMissing(ImportError):
    """numba (or llvmlite) cannot be imported: the compiled CPU loops cannot run."""


_NUMBA_MODULES: dict[ModuleType, ModuleType] = {}  # a rule's metadata module: its numba module
_NUMBA_MISSING: dict[ModuleType, str] = {}  # or why it cannot be imported (not tried again)


def _as_it_is(x: torch.Tensor) -> torch.Tensor:
    return x


class Backends:
    """The backends of ``Stepping`` (see the module docstring)."""

    def _numpy_step(
        self, p: torch.Tensor, state: dict[str, Any], hp: dict[str, Any], seed: int, given: Given
    ) -> None:
        [weight], [shown] = self._weights([p], [state])
        grad = shown.read(local(p.grad).detach())
        if grad.dtype != weight.dtype:
            grad = self._grad_scratch(grad, weight.dtype)
        views = self._views(state, lambda t: t.detach().numpy(), shown)
        t = int(state["step"]) + 1
        if self.META.DRAWS:  # its stream, at its elements' indices in the full tensor
            hp = {**hp, "seed": seed, "noise_offset": self._noise_offset(p)}
        # per-element inputs in the weight's dtype, as the NumPy reference takes them (a copy
        # only where the dtype differs or the tensor is not contiguous)
        arrays = {
            key: shown.read(local(x).detach()).to(weight.dtype).numpy()
            for key, x in given.of(p).items()
        }
        self.NUMPY.step(
            weight.detach().numpy(), grad.numpy(), views, t, **hp, **arrays, **given.scalars
        )
        commit(lambda: self._finish(p, state, views, shown))  # after the module's writes

    def _use_numba(self) -> bool:
        """CPU parameters run the compiled module: ``backend="numba"``, or ``"auto"`` where the
        rule is compiled and OPTGEN_CPU_BACKEND did not say ``numpy`` when the optimizer was
        built (read once: the environment is not looked up on every step)."""
        if self.backend == "numba":
            return True
        if self.backend != "auto" or self._numpy_by_env:
            return False
        try:
            return bool(self._numba().COMPILED)
        except NumbaMissing:
            return False  # the NumPy reference on CPU (a GPU machine's Python often lacks numba)

    def _numba(self) -> ModuleType:
        """The rule's numba module, imported on first use (numba loads only when needed), from
        the package of the rule's metadata (``generated`` in a checkout, ``optgen`` installed).
        Raises ``NumbaMissing`` (an ImportError naming the class) where numba cannot be
        imported: numba is needed only for the compiled CPU loops."""
        module = _NUMBA_MODULES.get(self.META)
        if module is None:
            why = _NUMBA_MISSING.get(self.META)
            if why is not None:
                raise NumbaMissing(why)  # a new one each time: a kept one's traceback would grow
            package = self.META.__name__.rsplit(".", 2)[0]
            try:
                module = importlib.import_module(f"{package}.numba.{self.RULE}")
            except ImportError as error:
                if error.name is None or error.name.split(".")[0] not in ("numba", "llvmlite"):
                    raise
                why = _NUMBA_MISSING[self.META] = (
                    f"{type(self).__name__}: the compiled CPU loops need numba, which cannot be "
                    f"imported here ({error}); backend='auto' or 'numpy' runs the NumPy "
                    "reference on CPU, 'triton' the Triton kernels"
                )
                raise NumbaMissing(why) from error
            _NUMBA_MODULES[self.META] = module
        return module

    def _numba_step(
        self,
        params: list[torch.Tensor],
        states: list[dict[str, Any]],
        hp: dict[str, Any],
        given: Given,
        streams: list[int],
    ) -> None:
        """The group's CPU parameters in one ``step_prechecked`` of the compiled module, on
        zero-copy views; a gradient of another dtype than its (master) weight is converted into
        its own slice of a reused scratch buffer (``_grad_scratches``); per-element inputs of
        another dtype into temporaries. A rule with noise: the j-th parameter draws from
        ``tensor_seed(seed, streams[j])``, each element at its index in the full tensor, as on
        the other backends."""
        weights, shown = self._weights(params, states)
        grads = self._grad_scratches(
            [sh.read(local(p.grad).detach()) for p, sh in zip(params, shown, strict=True)],
            [w.dtype for w in weights],
        )
        views = [
            self._views(state, lambda t: t.detach().numpy(), sh)
            for state, sh in zip(states, shown, strict=True)
        ]
        ts = [int(state["step"]) + 1 for state in states]
        arrays: dict[str, Any] = self._input_arrays(params, weights, given, shown)
        if self.META.DRAWS:  # each element at its index in the full tensor
            arrays["stream_ids"] = streams
            arrays["noise_offsets"] = [self._noise_offset(p) for p in params]
        self._numba().step_prechecked(  # every array checked in _plans
            [w.numpy() for w in weights],
            [g.numpy() for g in grads],
            views,
            ts,
            **hp,
            **arrays,
            **given.scalars,
        )
        # after the module's writes
        commit(lambda: self._finish_each(params, states, views, shown))

    def _numpy_group_step(
        self,
        params: list[torch.Tensor],
        states: list[dict[str, Any]],
        hp: dict[str, Any],
        given: Given,
    ) -> None:
        """The group's CPU parameters in one ``step_multi`` of a rule with reductions: its group
        reductions (a global gradient norm) cover all of them, and every tensor is reduced and
        checked before any is written. A gradient or per-element input of another dtype than
        its (master) weight is converted into a temporary of its own."""
        weights, shown = self._weights(params, states)
        grads = [
            sh.read(local(p.grad).detach()).to(w.dtype)  # (a complex one: its real view)
            for p, w, sh in zip(params, weights, shown, strict=True)
        ]
        views = [
            self._views(state, lambda t: t.detach().numpy(), sh)
            for state, sh in zip(states, shown, strict=True)
        ]
        ts = [int(state["step"]) + 1 for state in states]
        arrays = self._input_arrays(params, weights, given, shown)
        self.NUMPY.step_multi(
            [w.numpy() for w in weights],
            [g.numpy() for g in grads],
            views,
            ts,
            **hp,
            **arrays,
            **given.scalars,
        )
        # after the module's writes
        commit(lambda: self._finish_each(params, states, views, shown))

    def _input_arrays(
        self,
        params: list[torch.Tensor],
        weights: list[torch.Tensor],
        given: Given,
        shown: list[Shown],
    ) -> dict[str, list[Any]]:
        """Each per-element input as one array per parameter, in its (master) weight's dtype,
        shown as its weight (a copy only where the dtype differs or it is not contiguous)."""
        return {
            key: [
                sh.read(local(given.of(p)[key]).detach()).to(w.dtype).numpy()
                for p, w, sh in zip(params, weights, shown, strict=True)
            ]
            for key in self.META.INPUTS
        }

    def _grad_scratch(self, grad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``grad`` converted to ``dtype`` (a fp16/bf16 gradient for its fp32 master) in a
        scratch buffer the optimizer reuses, sized to its largest parameter and never part of
        ``state_dict()``: no parameter-sized allocation per step."""
        if deferring():  # a queued step still reads it: no buffer shared with the next
            return grad.to(dtype)
        n = grad.numel()
        scratch = getattr(self, "_scratch", None)
        if scratch is None or scratch.numel() < n or scratch.dtype != dtype:
            sizes = [p.numel() for group in self.param_groups for p in group["params"]]
            scratch = torch.empty(max([n, *sizes]), dtype=dtype, device=grad.device)
            self._scratch = scratch
        view = scratch[:n].view(grad.shape)
        view.copy_(grad)
        return view

    def _grad_scratches(
        self, grads: list[torch.Tensor], dtypes: list[torch.dtype]
    ) -> list[torch.Tensor]:
        """``grads`` converted to ``dtypes`` where they differ (fp16/bf16 gradients for their
        fp32 masters), all at once: each in its own slice of one scratch buffer the optimizer
        reuses (sized to the largest total a group needed), never part of ``state_dict()``."""
        need = [g.numel() for g, d in zip(grads, dtypes, strict=True) if g.dtype != d]
        if not need:
            return grads
        if deferring():  # a queued step still reads them: no buffer shared with the next
            return [g if g.dtype == d else g.to(d) for g, d in zip(grads, dtypes, strict=True)]
        dtype = next(d for g, d in zip(grads, dtypes, strict=True) if g.dtype != d)
        scratch = getattr(self, "_scratch", None)
        if scratch is None or scratch.numel() < sum(need) or scratch.dtype != dtype:
            scratch = torch.empty(sum(need), dtype=dtype, device=grads[0].device)
            self._scratch = scratch
        out, at = [], 0
        for g, d in zip(grads, dtypes, strict=True):
            if g.dtype == d:
                out.append(g)
                continue
            if d != dtype:  # another master dtype in the same group: a temporary
                out.append(g.to(d))
                continue
            view = scratch[at : at + g.numel()].view(g.shape)
            view.copy_(g)
            out.append(view)
            at += g.numel()
        return out

    def _triton_step(
        self,
        params: list[torch.Tensor],
        states: list[dict[str, Any]],
        hp: dict[str, Any],
        streams: list[int],
        amp: Amp | None = None,
        given: Given | None = None,
    ) -> None:
        """One ``step_multi`` for the group's parameters, each at its own step count; the j-th
        draws from ``tensor_seed(seed, streams[j])`` (its index in ``state_dict()``); ``amp``:
        GradScaler's (found_inf, grad_scale) on the device (``amp_flags``), or None."""
        weights, shown = self._weights(params, states)
        grads = [sh.read(local(p.grad).detach()) for p, sh in zip(params, shown, strict=True)]
        views = [
            self._views(state, lambda x: x, sh) for state, sh in zip(states, shown, strict=True)
        ]
        ts = [int(state["step"]) + 1 for state in states]
        given = given or Given()
        arrays = {
            key: [
                sh.read(local(given.of(p)[key]).detach())
                for p, sh in zip(params, shown, strict=True)
            ]
            for key in self.META.INPUTS
        }
        if self.META.DRAWS:  # each element at its index in the full tensor
            arrays["noise_offsets"] = [self._noise_offset(p) for p in params]
        copies = [self._copy_out(p, state) for p, state in zip(params, states, strict=True)]
        copied = copies if any(c is not None for c in copies) else None
        if copied is not None:
            arrays["copies"] = copied
        self.TRITON.step_multi(  # every buffer checked in _plans, before any write
            weights,
            grads,
            views,
            ts,
            stream_ids=streams,
            amp=amp,
            prechecked=True,
            **hp,
            **arrays,
            **given.scalars,
        )
        # after the module's writes
        commit(lambda: self._finish_each(params, states, views, shown, copied))

    def _views(
        self,
        state: dict[str, Any],
        convert: Callable[[torch.Tensor], Any],
        shown: Shown | None = None,
    ) -> dict[str, Any]:
        # an ABSENT state may be missing (the modules then run the variant without it)
        show = shown.written if shown is not None else _as_it_is
        views = {key: convert(show(local(state[key]))) for key in self.META.STATES if key in state}
        views.update({key: state[key] for key in self.META.HOST_STATES})
        return views

    def _finish_each(
        self,
        params: list[torch.Tensor],
        states: list[dict[str, Any]],
        views: list[Any],
        shown: list[Shown],
        copies: list[torch.Tensor | None] | None = None,
    ) -> None:
        copied = copies or [None] * len(params)
        for p, state, v, s, c in zip(params, states, views, shown, copied, strict=True):
            self._finish(p, state, v, s, copied=c is not None)

    def _finish(
        self,
        p: torch.Tensor,
        state: dict[str, Any],
        views: dict[str, Any],
        shown: Shown,
        *,
        copied: bool = False,
    ) -> None:
        """After the module's writes: working copies written back, the step count and host
        states advanced, a master's parameter copied from it (``copied``: the kernel wrote it)."""
        shown.done()  # working copies of buffers that are not contiguous, written back
        state["step"] += 1
        for key in self.META.HOST_STATES:
            state[key] = float(views[key])
        if "master" in state and not copied:
            local(p).copy_(local(state["master"]))

    def _copy_out(self, p: torch.Tensor, state: dict[str, Any]) -> torch.Tensor | None:
        """The parameter the Triton update kernel writes from ``p``'s float32 master in the same
        pass (``step_multi``'s ``copies``: no copy after the step, which would read the master
        again and cost a launch; a matrix rule's writes' kernel likewise), or None: no master, a
        module without copies, or a parameter not contiguous in index order
        (channels_last: its elements are not in the master's order), copied after the step."""
        master = state.get("master")
        if master is None or not getattr(self.TRITON, "COPIES", False):
            return None
        q = local(p).detach()
        if not q.is_contiguous() or q.shape != local(master).shape:
            return None
        return q

    def _weights(
        self, params: list[torch.Tensor], states: list[dict[str, Any]]
    ) -> tuple[list[torch.Tensor], list[Shown]]:
        """Each parameter's weight as its module updates it (its master copy, or the parameter
        shown as ``_shown`` says), with how the rest of its buffers are shown."""
        shown = [self._shown(p, s) for p, s in zip(params, states, strict=True)]
        weights = [
            sh.written(local(s.get("master", p)).detach(), self._computed_in(p, s))
            for p, s, sh in zip(params, states, shown, strict=True)
        ]
        return weights, shown

    def _computed_in(self, p: torch.Tensor, state: dict[str, Any]) -> torch.dtype | None:
        """The dtype a CPU module updates a fp16/bf16 parameter without a master copy in:
        float32, on a working copy rounded back when the step is done, as the Triton kernels
        load it, compute in float32 and round on store (None: the weight's own)."""
        if "master" in state or p.dtype not in LOW_PRECISION or self._use_triton(p):
            return None
        return torch.float32
