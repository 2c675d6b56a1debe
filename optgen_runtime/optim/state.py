"""Per-parameter state: creation, checks, restore, ``state_dict`` / ``load_state_dict``.

- State in torch's format (``"step"`` as a float32 tensor, the rule's buffers, its host-side
  scalars as Python floats, ``"master"`` for multi-precision), so ``state_dict()`` /
  ``load_state_dict()`` round-trip and a resumed run is bit-identical to an uninterrupted one
  (the loader restores every buffer in the rule's dtype: fp32 state of fp16/bf16 parameters never
  passes through the parameter's dtype, unlike torch.optim's loader).
- Every check comes before any write: a step validates every group, parameter and state buffer
  (hyperparameters, sparse gradients, shapes, dtypes, devices, a group spanning devices) before
  it creates state or updates anything, with the checks the generated modules use
  (:mod:`optgen_runtime.checks`); parameters without a gradient are skipped.
- ``multi_precision=True`` (MXNet's name): fp16/bf16 parameters keep an fp32 master copy that the
  rule updates, and the parameter is the master rounded to its dtype.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from typing import Any

import torch

from optgen_runtime.checks import (
    check_contiguous,
    check_dense,
    check_device,
    check_disjoint,
    check_dtype,
    check_kind,
    check_shape,
    check_state_keys,
    state_key_problems,
)
from optgen_runtime.common import host_state_values
from optgen_runtime.triton_support import check_kernel_device, check_kernel_dtype

LOW_PRECISION = (torch.float16, torch.bfloat16)
KERNEL_DTYPES = (torch.float32, *LOW_PRECISION)


class ParamState:
    """The per-parameter state of ``GeneratedOptimizer``."""

    def _use_triton(self, p: torch.Tensor) -> bool:
        return self.backend == "triton" or (self.backend == "auto" and p.device.type == "cuda")

    def _working_dtype(self, p: torch.Tensor) -> torch.dtype:
        """The dtype of the rule's state buffers for ``p``."""
        if p.dtype == torch.float64 and not self._use_triton(p):
            return torch.float64
        return torch.float32

    def _state_names(self) -> tuple[str, ...]:
        return ("step", *self.META.STATES, *self.META.HOST_STATES)

    def _needs_master(self, p: torch.Tensor) -> bool:
        return self.multi_precision and p.dtype in LOW_PRECISION

    def _master(self, p: torch.Tensor) -> torch.Tensor:
        master = torch.empty(p.shape, dtype=torch.float32, device=p.device)
        master.copy_(p.detach())
        return master

    def _state_for(self, p: torch.Tensor) -> dict[str, Any]:
        """``p``'s state, created on its first step (after ``_check_param`` accepted ``p``)."""
        state = self.state[p]
        if state:
            return state
        dtype = self._working_dtype(p)
        weight = p.detach().to(dtype).cpu().numpy()
        initial = self.NUMPY.init_state(weight.copy())
        state["step"] = torch.tensor(0.0)
        for key in self.META.STATES:
            state[key] = torch.from_numpy(initial[key]).to(device=p.device, dtype=dtype)
        for key in self.META.HOST_STATES:
            state[key] = float(initial[key])
        if self._needs_master(p):
            state["master"] = self._master(p)
        return state

    def _fail(self, error: type[Exception], message: str) -> None:
        raise error(f"{type(self).__name__}: {message}")

    def _check_param(self, p: torch.Tensor, index: int) -> None:
        """Everything ``step`` needs of ``p``, its gradient and its state; writes nothing."""
        name, label = type(self).__name__, f"parameter {index}"
        grad = p.grad
        check_dense(name, f"{label}'s grad", grad)
        check_shape(name, f"{label}'s grad", grad, p, label)
        check_device(name, f"{label}'s grad", grad, p, label)
        check_dtype(name, label, p, (*KERNEL_DTYPES, torch.float64), "floating point")
        state = self.state.get(p) or {}
        if self._use_triton(p):
            check_kernel_device(name, label, p)
            check_kernel_dtype(name, label, p)
            check_kernel_dtype(name, f"{label}'s grad", grad)
        else:
            if p.device.type != "cpu":
                self._fail(ValueError, f"{label} is on {p.device}; the NumPy backend needs CPU")
            if p.dtype in LOW_PRECISION and not self.multi_precision and "master" not in state:
                self._fail(
                    TypeError,
                    f"{p.dtype} parameters on the CPU need multi_precision=True "
                    "(the NumPy reference computes in float32/float64)",
                )
        if state:
            self._check_state(p, state, label)
        elif not self._needs_master(p):
            check_contiguous(name, label, p)  # updated in place

    def _check_state(self, p: torch.Tensor, state: dict[str, Any], label: str) -> None:
        name = type(self).__name__
        names = self._state_names()
        check_state_keys(name, state, names, ("master",), label=f"{label}'s state")
        step = state["step"]
        if not isinstance(step, torch.Tensor) or step.numel() != 1:
            self._fail(ValueError, f"{label}'s state['step'] must be a 1-element tensor")
        count = float(step)
        if not (math.isfinite(count) and count >= 0 and count == int(count)):
            self._fail(ValueError, f"{label}'s state['step'] = {count} is not a step count")
        host_state_values(name, state, self.META.HOST_STATES)
        dtype = self._working_dtype(p)
        buffers = [(k, state[k], dtype) for k in self.META.STATES]
        if "master" in state:
            buffers.append(("master", state["master"], torch.float32))
        else:
            check_contiguous(name, label, p)  # updated in place
        for key, value, want in buffers:
            where = f"{label}'s state[{key!r}]"
            check_kind(name, where, value, torch.Tensor, "torch.Tensor")
            check_dtype(name, where, value, (want,), str(want))
            check_shape(name, where, value, p, label)
            check_device(name, where, value, p, label)
            check_dense(name, where, value)
            check_contiguous(name, where, value)
        check_disjoint(
            name,
            [(label, p), (f"{label}'s grad", p.grad)]
            + [(f"{label}'s state[{k!r}]", v) for k, v, _ in buffers],
        )

    def _restore(self, p: torch.Tensor, saved: dict[str, Any], index: int) -> dict[str, Any]:
        """One parameter's saved state in the rule's dtypes and ``p``'s device (copies)."""
        if not saved:
            return {}
        missing, extra = state_key_problems(saved, self._state_names(), ("master",))
        if extra or missing:
            raise ValueError(self._foreign(f"state {index} has keys {sorted(saved)}"))
        out: dict[str, Any] = {
            "step": torch.as_tensor(saved["step"]).detach().to("cpu", torch.float32, copy=True)
        }
        for key in self.META.HOST_STATES:
            out[key] = float(saved[key])
        tensors = [(k, self._working_dtype(p)) for k in self.META.STATES]
        if "master" in saved:
            tensors.append(("master", torch.float32))
        where = f"{type(self).__name__}.load_state_dict"
        for key, dtype in tensors:
            value, label = saved[key], f"saved state {index}[{key!r}]"
            check_kind(where, label, value, torch.Tensor, "torch.Tensor")
            check_shape(where, label, value, p, "its parameter")
            out[key] = value.detach().to(
                device=p.device, dtype=dtype, memory_format=torch.contiguous_format, copy=True
            )
        if "master" not in out and self._needs_master(p):
            out["master"] = self._master(p)
        return out

    def _foreign(self, what: str) -> str:
        name = type(self).__name__
        hint = (
            f"; a torch.optim.{self.TORCH.class_name} state_dict loads with "
            f"{name}.load_torch_state_dict()"
            if self.TORCH is not None
            else ""
        )
        return f"{name}.load_state_dict: not a state_dict of {name} ({what}){hint}"

    def _indices(self) -> dict[int, int]:
        """id(param) -> its index in ``state_dict()`` (through the groups in order)."""
        params = (p for group in self.param_groups for p in group["params"])
        return {id(p): i for i, p in enumerate(params)}

    def state_dict(self) -> dict[str, Any]:
        self._settle()
        for group in self.param_groups:
            self._sync_aliases(group)
        return super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch.optim's loader, except that buffers keep the rule's dtypes and are checked first.

        torch casts every saved tensor but ``step`` to the parameter's dtype, so fp32 state of a
        bf16 parameter would pass through bf16; here each buffer is restored (copied) in the dtype
        the rule keeps it in, and nothing is changed unless the whole state_dict is accepted.
        """
        self._settle()
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        groups = self.param_groups
        saved_groups = copy.deepcopy(state_dict["param_groups"])
        if len(groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(
            len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved_groups, strict=True)
        ):
            raise ValueError(
                "loaded state dict contains a parameter group "
                "that doesn't match the size of optimizer's group"
            )
        for saved in saved_groups:
            missing = [k for k in self.META.HYPERPARAMS if k not in saved]
            if missing:
                raise ValueError(self._foreign(f"its param groups lack {missing}"))
            self._check(saved)
            self._check_saved_aliases(saved)
        id_map = {
            saved_id: p
            for g, s in zip(groups, saved_groups, strict=True)
            for saved_id, p in zip(s["params"], g["params"], strict=True)
        }
        state: defaultdict[Any, dict[str, Any]] = defaultdict(dict)
        for key, value in state_dict["state"].items():
            if key in id_map:
                state[id_map[key]] = self._restore(id_map[key], value, key)
            else:
                state[key] = value  # as torch: state of no parameter is kept as it is
        new_groups = []
        for group, saved in zip(groups, saved_groups, strict=True):
            saved["params"] = group["params"]
            if "param_names" in group and "param_names" not in saved:
                saved["param_names"] = group["param_names"]
            new_groups.append(saved)
        self.__setstate__({"state": state, "param_groups": new_groups})
        self._seen = {id(g): (g, self._snapshot(g)) for g in self.param_groups}
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)
