"""Per-parameter state: creation and checks (checkpoints: :mod:`optgen_runtime.optim.checkpoint`).

- State in torch's layout (``"step"`` as a 0-d CPU tensor, the rule's buffers, its host-side
  scalars as Python floats, ``"master"`` for multi-precision), so ``state_dict()`` /
  ``load_state_dict()`` round-trip and a resumed run is bit-identical to an uninterrupted one
  (the loader restores every buffer in the rule's dtype: fp32 state of fp16/bf16 parameters never
  passes through the parameter's dtype, unlike torch.optim's loader). ``"step"`` is an int64
  tensor, exact up to ``2**63 - 1`` (torch's float32 count stops counting at ``2**24``: SGLD
  would draw the same noise every step); ``to_torch_state_dict`` exports torch's float32 count,
  and the loaders accept either, if it holds a whole number.
- Every check comes before any write: a step validates every group, parameter and state buffer
  (hyperparameters, sparse gradients, shapes, dtypes, devices, a group spanning devices) before
  it creates state or updates anything, with the checks the generated modules use
  (:mod:`optgen_runtime.checks`); parameters without a gradient are skipped.
- ``multi_precision=True`` (MXNet's name): fp16/bf16 parameters keep an fp32 master copy that the
  rule updates, and the parameter is the master rounded to its dtype. Without it they are
  updated in float32 with float32 state and rounded once per step: in the Triton kernels, and on
  the CPU through a float32 working copy (``Stepping._computed_in``).
- A parameter need not be contiguous (channels_last, a transposed view): it must not overlap
  itself; a rule that sees each element alone gets its state buffers in the parameter's strides
  (:mod:`optgen_runtime.optim.layout`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from optgen_runtime.checks import (
    SparseRefused,
    check_dense,
    check_device,
    check_dtype,
    check_kind,
    check_overlaps,
    check_shape,
    check_state_keys,
    check_state_shape,
    view_key,
)
from optgen_runtime.common import MAX_STEP, host_state_values, vector_shape
from optgen_runtime.optim.distributed import is_dtensor, like, local
from optgen_runtime.optim.layout import (
    Shown,
    elementwise,
    memory_order,
    overlap_problem,
    real_view,
    takes_complex,
)
from optgen_runtime.optim.rows import sparse_classes
from optgen_runtime.triton_checks import check_kernel_device, check_kernel_dtype
from optgen_runtime.variants import absent_states

LOW_PRECISION = (torch.float16, torch.bfloat16)
KERNEL_DTYPES = (torch.float32, *LOW_PRECISION)


def step_tensor(count: int) -> torch.Tensor:
    """A step count as the classes keep it: an exact int64 0-d CPU tensor."""
    return torch.tensor(count, dtype=torch.int64)


def step_value(value: Any) -> int | None:
    """The step count held by ``value`` (an int64 or float 0-d tensor, a Python number), or
    ``None`` when it holds no step count of ours: not a whole number in ``[0, 2**63 - 2]``."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            return None
        if value.is_meta:
            return None
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            return None
        value = int(value)
    return value if 0 <= value < MAX_STEP else None


class ParamState:
    """The per-parameter state of ``GeneratedOptimizer``."""

    def _use_triton(self, p: torch.Tensor) -> bool:
        return self.backend == "triton" or (self.backend == "auto" and p.device.type == "cuda")

    def _working_dtype(self, p: torch.Tensor) -> torch.dtype:
        """The dtype of the rule's state buffers for ``p`` (a complex ``p``'s are complex, as
        torch.optim's: their real views hold each part's state)."""
        if p.dtype in (torch.float64, torch.complex128) and not self._use_triton(p):
            return p.dtype
        return torch.complex64 if p.is_complex() else torch.float32

    def _state_names(self) -> tuple[str, ...]:
        """The keys every state has (the ``ABSENT`` states may be missing: see ``_absent``)."""
        absent = self.META.ABSENT
        states = [k for k in self.META.STATES if k not in absent]
        return ("step", *states, *self.META.HOST_STATES)

    def _absent(self, hp: dict[str, Any]) -> tuple[str, ...]:
        """The rule's states that do not exist under the group's hyperparameters ``hp`` (its
        spec's ``absent_when``: SGD's momentum buffer at momentum=0, as torch keeps none): not
        created, not expected, and where a state has one (momentum switched off mid-run) kept
        but neither read nor written. Created when the hyperparameters change back."""
        return absent_states(self.META.ABSENT, hp)

    def _needs_master(self, p: torch.Tensor) -> bool:
        return self.multi_precision and p.dtype in LOW_PRECISION

    def _master(self, p: torch.Tensor) -> torch.Tensor:
        """An fp32 copy of ``p`` (of its local shard, as a DTensor placed like ``p``)."""
        shard = local(p)
        master = torch.empty(shard.shape, dtype=torch.float32, device=p.device)
        master.copy_(shard.detach())
        return like(p, master)

    def _initial(self, p: torch.Tensor, hp: dict[str, Any]) -> dict[str, Any]:
        """The rule's initial state for ``p`` as its first step makes it (``_state_for``): each
        buffer in the working dtype where ``p`` lives, placed like it, each host state a number;
        from its group's hyperparameters ``hp``, resolved and checked as ``init_state`` checks
        them (for the buffers a loaded state dict lacks: no round trip through the host)."""
        resolved = self._check(hp)
        init = {k: resolved[k] for k in self.META.INIT_HYPERPARAMS}
        values = self.META.initial_values(**init)
        dtype = self._working_dtype(p)
        out: dict[str, Any] = {
            key: like(p, self._initial_buffer(p, dtype, key, values[key]))
            for key in self.META.STATES
        }
        out.update({key: float(values[key]) for key in self.META.HOST_STATES})  # type: ignore[arg-type]
        return out

    def _initial_buffer(
        self, p: torch.Tensor, dtype: torch.dtype, key: str, value: float | None
    ) -> torch.Tensor:
        """State buffer ``key``'s initial value for ``p`` (its local shard), C-contiguous, in
        ``dtype`` on ``p``'s device, as the NumPy module's ``init_state`` computes it: filled
        with ``value`` (the rule's ``initial_values``: a double rounded to ``dtype``, as NumPy
        rounds it), or a copy of the weight (None). Made where ``p`` lives, with no pass over
        it on the host (for a large model the NumPy round trip took seconds; on a GPU, it
        added two copies across)."""
        weight = local(p).detach()
        if value is None:
            return self._new_buffer(p, dtype).copy_(weight)
        # rounded as NumPy rounds a double (past the dtype's range: inf, where torch's fill
        # refuses it; the long fuzz profile's initial_accumulator_value=1e308)
        value = torch.tensor(value, dtype=torch.float64).to(dtype.to_real()).item()
        axes = self.META.STATE_AXES
        if key in axes:
            shape = vector_shape(weight.shape, axes[key])
            return torch.full(shape, value, dtype=dtype, device=weight.device)
        # a complex parameter's: each part at the value, as torch.optim makes them
        # (Adagrad's sum at complex(v, v), Rprop's step size at complex(lr, lr))
        buffer = self._new_buffer(p, dtype)
        real_view(buffer).fill_(value)
        return buffer

    def _new_buffer(self, p: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised state buffer of ``p``'s (local shard's) shape on its device:
        C-contiguous, or in ``p``'s strides where the module is shown ``p`` in its memory order
        (``_shown``: channels_last states for a channels_last weight, as torch.optim's)."""
        weight = local(p)
        if self._in_memory_order(p) is None:
            return torch.empty(weight.shape, dtype=dtype, device=weight.device)
        return torch.empty_like(weight, dtype=dtype, memory_format=torch.preserve_format)

    def _in_memory_order(self, p: torch.Tensor) -> tuple[int, ...] | None:
        """The permutation of ``p``'s dims the module is shown it in (``layout.memory_order``),
        or None (shown as indexed): a parameter that is not contiguous, updated without a
        master copy, by a rule that sees each element alone."""
        weight = local(p)
        if weight.is_contiguous() or not elementwise(self.META) or self._needs_master(p):
            return None
        return memory_order(weight)

    def _shown(self, p: torch.Tensor, state: dict[str, Any]) -> Shown:
        """How ``p``'s buffers are shown to the module this step (``layout.Shown``)."""
        return Shown(None if "master" in state else self._in_memory_order(p))

    def _state_for(self, p: torch.Tensor, hp: dict[str, Any]) -> dict[str, Any]:
        """``p``'s state, created on its first step (after ``_check_param`` accepted ``p``)
        with its group's hyperparameters ``hp``; a DTensor's state: DTensors placed like it."""
        state = self.state[p]
        absent = self._absent(hp)
        if state:
            step = state["step"]
            if step.dtype != torch.int64 or step.device.type != "cpu" or step.dim():
                state["step"] = step_tensor(int(step.item()))  # exact from now on
            if not any(k not in state and k not in absent for k in self.META.ABSENT):
                return state
        dtype = self._working_dtype(p)
        values = self.META.initial_values(**{k: hp[k] for k in self.META.INIT_HYPERPARAMS})
        if state:  # a state absent until now (momentum switched on): its initial value
            for key in self.META.ABSENT:
                if key not in state and key not in absent:
                    state[key] = like(p, self._initial_buffer(p, dtype, key, values[key]))
            return state
        state["step"] = step_tensor(0)
        for key in self.META.STATES:
            if key in absent:
                continue
            state[key] = like(p, self._initial_buffer(p, dtype, key, values[key]))
        for key in self.META.HOST_STATES:
            state[key] = float(values[key])  # type: ignore[arg-type]
        if self._needs_master(p):
            state["master"] = self._master(p)
        return state

    def _fail(self, error: type[Exception], message: str) -> None:
        raise error(f"{type(self).__name__}: {message}")

    def _check_param(self, param: torch.Tensor, index: int) -> None:
        """Everything ``step`` needs of ``param``, its gradient and its state (of a DTensor's
        local shards); writes nothing."""
        name, label = type(self).__name__, f"parameter {index}"
        self._check_distributed([param], index)
        if is_dtensor(param) and not is_dtensor(param.grad):
            self._fail(ValueError, f"{label} is a DTensor but its grad is not")
        p, grad = local(param), local(param.grad)
        check_dense(name, label, p)
        if grad.is_sparse:
            self._refuse_sparse(label)
        check_dense(name, f"{label}'s grad", grad)
        check_shape(name, f"{label}'s grad", grad, p, label)
        check_device(name, f"{label}'s grad", grad, p, label)
        if p.is_complex():
            self._check_complex(p, grad, label)
        else:
            check_dtype(name, label, p, (*KERNEL_DTYPES, torch.float64), "floating point")
            check_dtype(
                name, f"{label}'s grad", grad, (*KERNEL_DTYPES, torch.float64), "floating point"
            )
        state = self.state.get(param) or {}
        if self._use_triton(p):
            check_kernel_device(name, label, p)
            check_kernel_dtype(name, label, real_view(p))
            check_kernel_dtype(name, f"{label}'s grad", real_view(grad))
        else:
            if p.device.type != "cpu":
                self._fail(
                    ValueError, f"{label} is on {p.device}; the {self.backend} backend needs CPU"
                )
        self._check_writable(label, p)  # updated in place (or from its master copy)
        if state:
            self._check_state(param, state, label)

    def _refuse_sparse(self, label: str) -> None:
        """A sparse (COO) gradient of a class that takes none: refused, saying which do."""
        self._fail(
            SparseRefused,
            f"{label}'s grad is sparse (torch.sparse_coo) and {type(self).__name__}'s rule "
            "updates no sparse gradients (its spec declares no RULE.sparse). Sparse gradients "
            f"are taken by generated.torch's {', '.join(sparse_classes())} (as MXNet 1.9.1's: "
            "lazily or densely), and by the drop-ins SparseAdam, SGD and Adagrad (as torch's); "
            "or pass grad.to_dense()",
        )

    def _check_complex(self, p: torch.Tensor, grad: torch.Tensor, label: str) -> None:
        """A complex parameter: complex64 or complex128, its grad of its dtype, a rule that
        updates each part alone (``layout.takes_complex``)."""
        name = type(self).__name__
        if not takes_complex(self.META):
            self._fail(
                TypeError,
                f"{label} is complex ({p.dtype}): {name}'s update does not see each element "
                "alone (row/column states, matrices, noise or per-element inputs), so it has "
                "no real-view (torch.view_as_real) form; pass real parameters",
            )
        check_dtype(name, label, p, (torch.complex64, torch.complex128), "complex64 or complex128")
        check_dtype(name, f"{label}'s grad", grad, (p.dtype,), f"{p.dtype}, as its parameter")
        if p.is_conj() or grad.is_conj():
            self._fail(ValueError, f"{label} or its grad is a lazily conjugated view: resolve it")

    def _check_state(self, param: torch.Tensor, state: dict[str, Any], label: str) -> None:
        name, p = type(self).__name__, local(param)
        names = self._state_names()
        optional = ("master", *self.META.ABSENT)
        check_state_keys(name, state, names, optional, label=f"{label}'s state")
        step = state["step"]
        if not isinstance(step, torch.Tensor) or step.numel() != 1:
            self._fail(ValueError, f"{label}'s state['step'] must be a 1-element tensor")
        if step_value(step) is None:
            self._fail(
                ValueError,
                f"{label}'s state['step'] = {step!r} is not a step count "
                "(a whole number in [0, 2**63 - 2])",
            )
        host_state_values(name, state, self.META.HOST_STATES)
        dtype = self._working_dtype(p)
        buffers = [(k, state[k], dtype) for k in self.META.STATES if k in state]
        if "master" in state:
            buffers.append(("master", state["master"], torch.float32))
        for key, value, want in buffers:
            where = f"{label}'s state[{key!r}]"
            check_kind(name, where, value, torch.Tensor, "torch.Tensor")
            if is_dtensor(value) != is_dtensor(param):
                kind = "a DTensor" if is_dtensor(param) else "a plain tensor"
                self._fail(ValueError, f"{where} must be {kind}, as its parameter is")
            value = local(value)
            check_dtype(name, where, value, (want,), str(want))
            check_state_shape(name, where, value, p, self.META.STATE_AXES.get(key), label)
            check_device(name, where, value, p, label)
            check_dense(name, where, value)
            self._check_writable(where, value)

    def _check_writable(self, label: str, x: torch.Tensor) -> None:
        """``x`` can be updated in place: no two of its indices reach one element (any strides
        otherwise: the module is shown a working copy where they are not contiguous)."""
        problem = overlap_problem(x, label)
        if problem is not None:
            self._fail(ValueError, problem)

    def _check_across(
        self,
        params: list[torch.Tensor],
        indices: dict[int, int],
        grads_written: bool,
        given: Any = None,
    ) -> None:
        """No buffer the step writes (a parameter, its state tensors, its master copy; its
        gradient when unscaled in place) shares memory with any other buffer of the step, its
        own or another parameter's (``p.grad = p``, one parameter a view of another, one
        gradient another's parameter); gradients only read may share memory. Writes nothing."""
        if len({id(p) for p in params}) < len(params):
            self._refuse_listed_twice()
        buffers: list[tuple[str, torch.Tensor, bool]] = []
        grads: set[tuple[Any, ...]] = set()  # a gradient shared by parameters is unscaled once
        for p in params:
            label = f"parameter {indices[id(p)]}"
            buffers.append((label, local(p), True))
            grad = local(p.grad)
            if not (grads_written and view_key(grad) in grads):
                buffers.append((f"{label}'s grad", grad, grads_written))
            grads.add(view_key(grad))
            if given is not None:  # the step's per-element inputs: read only, like gradients
                buffers += [(f"{label}'s {key}", local(x), False) for key, x in given.of(p).items()]
            state = self.state.get(p) or {}
            buffers += [
                (f"{label}'s state[{key!r}]", local(value), True)
                for key, value in state.items()
                if isinstance(value, torch.Tensor)
            ]
        check_overlaps(type(self).__name__, buffers)

    def _refuse_listed_twice(self) -> None:
        """A parameter listed twice in the param groups (torch.optim warns that it will refuse
        this, pytorch/pytorch#40967, and steps it twice until then): refused, naming both."""
        first: dict[int, int] = {}
        for index, p in enumerate(p for group in self.param_groups for p in group["params"]):
            if id(p) in first and p.grad is not None:
                self._fail(
                    ValueError,
                    f"parameter {first[id(p)]} is listed again as parameter {index}: a "
                    "parameter is updated once per step, so list it once (torch.optim warns "
                    "that it will refuse this too, and steps it twice meanwhile)",
                )
            first.setdefault(id(p), index)

    def _indices(self) -> dict[int, int]:
        """id(param) -> its index in ``state_dict()`` (through the groups in order)."""
        params = (p for group in self.param_groups for p in group["params"])
        return {id(p): i for i, p in enumerate(params)}
