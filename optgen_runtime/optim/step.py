"""The step: every check first, then the compiled CPU loops, the NumPy reference or the Triton
kernels.

- CUDA parameters go through the rule's Triton kernels, one ``step_multi`` per group: one update
  launch per dtype combination (plus one reduction launch for per-tensor norms), whatever the
  parameters' step counts and host states; CPU parameters through the rule's compiled numba
  module (``generated/numba``), one ``step_multi`` per group on zero-copy views, where the rule
  is compiled (``COMPILED``), else through the NumPy reference (a fp16/bf16 gradient of a
  ``multi_precision`` parameter is converted into a reused fp32 scratch buffer). ``backend=
  "numpy"`` (or OPTGEN_CPU_BACKEND=numpy, read when the optimizer is built, with ``"auto"``)
  forces the NumPy reference, ``backend="numba"`` the compiled loops (refused for a rule that
  is not compiled); ``backend="triton"`` forces the kernels (CPU tensors need
  ``TRITON_INTERPRET=1``).
- Random draws (SGLD): parameter ``i`` of the optimizer (its index in ``state_dict()``, counting
  through the groups in order; under ZeRO, in the ZeRO optimizer's) draws from the stream
  ``tensor_seed(seed, i)``, on both backends, each element at its index in the full tensor (a
  shard's offset added): the noise of a parameter depends neither on the backend nor on which
  others have gradients nor on how it is sharded or partitioned.
- DTensor parameters (FSDP2) are stepped through their local shards, with their reductions
  combined across the shards (:mod:`optgen_runtime.optim.distributed`).
- A step that finds nothing changed since the last full step but the gradients takes the fast
  step (:mod:`optgen_runtime.optim.fast`): the same checks' outcome from one pass over the
  parameters, then the same kernels; anything else takes the full step below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from typing import Any

import torch

from optgen_runtime.common import host_state_values
from optgen_runtime.optim.backends import Backends
from optgen_runtime.optim.distributed import local
from optgen_runtime.optim.inputs import Given
from optgen_runtime.optim.rows import Densified, restore
from optgen_runtime.philox import tensor_seed
from optgen_runtime.scalars import check_scalars, computed
from optgen_runtime.sharding import shards
from optgen_runtime.triton_amp import Amp
from optgen_runtime.variants import running_module
from optgen_runtime.writes import deferred_writes

# One group's step: (hyperparameters as given, resolved, parameters with a gradient).
Plan = tuple[dict[str, Any], dict[str, float], list[torch.Tensor]]
NO_INPUTS = Given()  # a step's inputs where none are given (of a rule that takes none)


class Stepping(Backends):
    """``step`` of ``GeneratedOptimizer``: every check, then one of its backends
    (:mod:`~optgen_runtime.optim.backends`)."""

    def step(self, closure: Callable[[], Any] | None = None, **inputs: Any) -> Any:
        """One update of every parameter that has a gradient; returns the closure's loss.

        ``inputs``: the rule's step inputs besides the gradients (``META.INPUTS``,
        ``META.STEP_SCALARS``; none for most rules), see :mod:`optgen_runtime.optim.inputs`.
        """
        tried = closure is None and not inputs and self._plan is not None
        if tried:
            # the fast step's candidates: a rule without step inputs (a plan's), none given; in
            # no-grad mode as the full step, set without a context object (host time per step)
            self._settle()
            enabled = torch.is_grad_enabled()
            torch._C._set_grad_enabled(False)
            try:
                if self._fast_step(NO_INPUTS):
                    return None
            finally:
                torch._C._set_grad_enabled(enabled)
        return self._step(closure, inputs, tried)

    @torch.no_grad()
    def _step(self, closure: Callable[[], Any] | None, inputs: dict[str, Any], tried: bool) -> Any:
        """``step`` (``tried``: the fast step was tried on this step and refused)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        sparse = self._densify()  # sparse gradients stepped densely, dense for this step
        try:
            self._update(self._given(inputs, loss), tried)
        finally:
            restore(sparse)
        return loss

    def _densify(self) -> list[Densified]:
        """Sparse gradients stepped densely (none here; see ``SparseRows._densify``,
        ``DropIn._densify``)."""
        return []

    def _adopt_states(self) -> None:
        """States put in ``self.state`` in another format, converted (none here; see
        ``DropIn._adopt_states``)."""

    def _update(self, given: Given, tried: bool) -> None:
        """The step's update once the closure ran (``_step``)."""
        self._settle()
        if not tried and self._fast_step(given):  # nothing changed but the grads
            return
        self._plan = None
        self._adopt_states()  # a drop-in's state written in torch's format by its caller
        scale, found_inf = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)
        on_device = self._amp_on_device(scale, found_inf)
        if not on_device and found_inf is not None and float(found_inf) != 0.0:
            return  # GradScaler found inf/NaN gradients: skip the step, write nothing
        inverse = 1.0 / float(scale) if scale is not None and not on_device else 1.0
        indices = self._indices()
        plans, synced = self._plans(indices, inverse, given)  # every check before any write
        every = [p for _, _, ps in plans for p in ps]
        fresh = [p for p in every if not self.state.get(p)]
        for p in self._masters_moved(every):  # the user's value wins, as a plain parameter's
            local(self.state[p]["master"]).copy_(local(p).detach())
        try:
            self._apply(plans, indices, inverse, on_device, scale, found_inf, given)
        except BaseException:
            # a step the kernels refused (a scalar float32 cannot hold) leaves no new state
            for p in fresh:
                self.state.pop(p, None)
            raise
        for group, updates in synced:  # accepted: the synced aliases are written now
            self._apply_aliases(group, updates)
        self._note_masters(every)
        self._remember()

    def _masters_moved(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """The parameters with a master copy (``multi_precision``) changed since the optimizer
        last wrote them: in place (``p.fill_``, ``p.copy_``, ``model.load_state_dict``: its
        version counter) or another tensor put in (``p.data = ...``: its address). Their
        master copies are made from them again before the step, as the first step makes one,
        so the change is not lost to the old master. A parameter not written since its master
        was made or loaded (``load_state_dict``) keeps the master."""
        seen = self._master_seen
        if not seen:
            return []
        moved = []
        for p in params:
            mark = seen.get(p)
            if mark is not None:
                q = local(p)
                if mark != (q._version, q.data_ptr()):
                    moved.append(p)
        return moved

    def _note_masters(self, params: list[torch.Tensor]) -> None:
        """After a step: each parameter with a master copy as it was left (``_masters_moved``)."""
        state, seen = self.state, self._master_seen
        for p in params:
            st = state.get(p)
            if st and "master" in st:
                q = local(p)
                seen[p] = (q._version, q.data_ptr())

    def _apply(
        self,
        plans: list[Plan],
        indices: dict[int, int],
        inverse: float,
        on_device: bool,
        scale: Any,
        found_inf: Any,
        given: Given,
    ) -> None:
        """The step's writes, in order: state, AMP flags, unscaling, then each group's update."""
        speculative = on_device and found_inf is not None
        undo = self._undo([p for _, _, ps in plans for p in ps]) if speculative else []
        states = [[self._state_for(p, hp) for p in params] for hp, _, params in plans]
        amps = {}
        if on_device:
            devices = list(dict.fromkeys(params[0].device for _, _, params in plans))
            amps = self._device_amp(devices, scale, found_inf, undo)
        self._unscale([local(p.grad) for _, _, params in plans for p in params], inverse)
        # every group's module checks and computes first, its writes queued (commit); the
        # writes only once all have passed: a later group's refusal (a host scalar its sums or
        # host states make unrepresentable) leaves every group as it was
        with deferred_writes() if self._refuses_late() else nullcontext([]) as writes:
            for (hp, resolved, params), group_states in zip(plans, states, strict=True):
                with shards(self._reducer(params)):  # a sharded tensor's reductions: all shards'
                    self._apply_group(hp, resolved, params, group_states, indices, amps, given)
        for write in writes:
            write()

    def _apply_group(
        self,
        hp: dict[str, Any],
        resolved: dict[str, float],
        params: list[torch.Tensor],
        group_states: list[dict[str, Any]],
        indices: dict[int, int],
        amps: dict[torch.device, Amp],
        given: Given,
    ) -> None:
        """One group's update: its CPU parameters on numba (or NumPy), the others on Triton."""
        triton = [i for i, p in enumerate(params) if self._use_triton(p)]
        on_triton = set(triton)  # once: a set per index made this quadratic in the tensors
        numpy = [i for i in range(len(params)) if i not in on_triton]
        if numpy and self._use_numba():  # one compiled call for the group's CPU tensors
            self._numba_step(
                [params[i] for i in numpy],
                [group_states[i] for i in numpy],
                hp,
                given,
                [self._stream(params[i], indices) for i in numpy] if self.META.DRAWS else [],
            )
            numpy = []
        if numpy and hasattr(self.NUMPY, "step_multi"):
            # one call: group reductions over the group, or per-tensor ones (scalars that
            # depend on the data) reduced and checked for every tensor before any write
            self._numpy_group_step(
                [params[i] for i in numpy], [group_states[i] for i in numpy], hp, given
            )
            numpy = []
        for i in numpy:
            stream = self._stream(params[i], indices)
            seed = tensor_seed(resolved["seed"], stream) if self.META.DRAWS else 0
            self._numpy_step(params[i], group_states[i], hp, seed, given)
        if triton:
            self._triton_step(
                [params[i] for i in triton],
                [group_states[i] for i in triton],
                hp,
                [self._stream(params[i], indices) for i in triton],
                amps.get(params[0].device),
                given,
            )

    def _plans(
        self, indices: dict[int, int], inverse: float, given: Given
    ) -> tuple[list[Plan], list[tuple[dict[str, Any], dict[str, Any]]]]:
        """Every group checked (hyperparameters, devices, each parameter and its state), then
        every buffer of the step against every other (``_check_across``); with each group's
        synced aliases (betas and beta1/beta2), which ``step`` writes only once the update is
        done: a module can still refuse the step (a first step's host states, or a rule with
        reductions, check their scalars there), and a refused step writes nothing."""
        plans = []
        synced = []
        grads_written = self._unscales_in_place(inverse)
        key = self._checked_key(grads_written, given)
        known = key is not None and key == getattr(self, "_checked", None)
        for group in self.param_groups:
            updates = self._alias_updates(group)
            synced.append((group, updates))
            hp = self._hyper({**group, **updates})
            resolved = self._check(hp)
            self._fold_scale(hp, inverse)
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            devices = {p.device for p in params}
            if len(devices) > 1:
                raise ValueError(
                    f"{type(self).__name__}: one param group spans devices "
                    f"{sorted(map(str, devices))}"
                )
            for p in params:
                if known:  # the buffers passed these checks; host states are values
                    if self.state.get(p):
                        host_state_values(type(self).__name__, self.state[p], self.META.HOST_STATES)
                    continue
                self._check_param(p, indices[id(p)])
                self._check_inputs(p, f"parameter {indices[id(p)]}", given)
            self._check_scalars(hp, params, given)
            plans.append((hp, resolved, params))
        every = [p for _, _, params in plans for p in params]
        if not known:
            self._check_across(every, indices, grads_written, given)
            self._checked = key
        return plans, synced

    def _checked_key(self, grads_written: bool, given: Given) -> tuple[Any, ...] | None:
        """What ``_check_param``, ``_check_inputs`` and ``_check_across`` look at, for every
        parameter with a gradient: the state's keys, and each buffer's address, shape, dtype and
        device (parameter, gradient, inputs, state tensors; with the strides of one that is not
        contiguous: its extent), and the backend. Equal to the last step's that passed: those
        checks are skipped (the host states, values, are still checked). None (check in full)
        for a tensor subclass (a DTensor), a sparse buffer or a state that is not a plain dict; a
        step count changed in place is not seen here (the modules refuse a bad count). Built
        flat, with few allocations: a step of many tensors makes little garbage."""
        plain = (torch.Tensor, torch.nn.Parameter)
        parts: list[Any] = [grads_written, getattr(self, "backend", None), self.multi_precision]
        try:
            for group in self.param_groups:
                for p in group["params"]:
                    grad = p.grad
                    if grad is None:
                        continue
                    state = self.state.get(p) or {}
                    if type(state) is not dict:
                        return None
                    parts += (id(p), len(state), *state)
                    for x in (p, grad, *given.of(p).values(), *state.values()):
                        if type(x) not in plain:
                            if isinstance(x, float | int):
                                continue  # a host state: a value, checked every step
                            return None
                        if not x.is_contiguous():  # its extent: its strides too
                            parts.append(("strides", x.stride()))
                        parts += (x.data_ptr(), x.shape, x.dtype, x.get_device())
        except RuntimeError:  # a sparse tensor has no data pointer: checked in full
            return None
        return tuple(parts)

    def _check_scalars(self, hp: dict[str, Any], params: list[torch.Tensor], given: Given) -> None:
        """The kernel scalars of each parameter's step, computed and range-checked as the
        modules do (``optgen_runtime.scalars``) but before anything is written."""

        def rows() -> Iterator[tuple[int, Any, dict[str, Any], dict[str, int]]]:
            for p in params:
                state = self.state.get(p) or {}
                if self.META.HOST_STATES and not state:
                    continue  # a first step: the module checks with the initial host states
                t = int(state["step"]) + 1 if state else 1
                host = {key: state[key] for key in self.META.HOST_STATES}
                sizes = {"numel": p.numel()} if self.META.SIZES else {}
                dtype = torch.float32 if self._use_triton(p) else self._working_dtype(p)
                yield t, dtype, host, sizes

        self._check_scalar_rows(self._check(hp), rows(), given.scalars)

    def _check_scalar_rows(
        self,
        resolved: dict[str, float],
        rows: Iterable[tuple[int, Any, dict[str, Any], dict[str, int]]],
        given: dict[str, float],
    ) -> None:
        """Each (step count, kernel dtype, host states, sizes) row's kernel scalars computed and
        range-checked, each distinct row once (mostly once per group), with the metadata of
        the update that runs (a rule's special case or absent-state variant: its own scalars).
        Rules with reductions need the step's sums first: their modules check once the sums are
        known."""
        meta, name = self.META, type(self).__name__
        if meta.REDUCTIONS:
            return
        meta = running_module(meta, meta, resolved)  # a variant's own scalars (SPECIAL, ABSENT)
        done = set()
        for t, dtype, host, sizes in rows:
            seen = (t, dtype, *host.items(), *sizes.items())
            if seen in done and all(v == v and v != 0 for v in host.values()):
                continue  # (0.0 and -0.0, or NaNs, are never taken for one another)
            done.add(seen)
            scalars, _ = computed(name, meta.host_scalars, t, **resolved, **host, **given, **sizes)
            check_scalars(name, meta.SCALARS, scalars, dtype)

    def _refuses_late(self) -> bool:
        """Whether the rule's modules can refuse a step after the class's checks: host scalars
        that depend on the step's sums or on host states, computed by the module."""
        meta = self.META
        return bool(meta.REDUCTIONS or meta.HOST_STATES)
