"""Per-parameter state: creation, checks, restore, ``state_dict`` / ``load_state_dict``.

- State in torch's layout (``"step"`` as a 0-d CPU tensor, the rule's buffers, its host-side
  scalars as Python floats, ``"master"`` for multi-precision), so ``state_dict()`` /
  ``load_state_dict()`` round-trip and a resumed run is bit-identical to an uninterrupted one
  (the loader restores every buffer in the rule's dtype: fp32 state of fp16/bf16 parameters never
  passes through the parameter's dtype, unlike torch.optim's loader). ``"step"`` is an int64
  tensor, exact up to ``2**63 - 1`` (torch's float32 count stops counting at ``2**24``: SGLD
  would draw the same noise every step); ``to_torch_state_dict`` exports torch's float32 count,
  and the loaders accept either, if it holds a whole number.
- ``state_dict()`` records the rule (``"rule"`` in every param group), and ``load_state_dict``
  refuses another rule's state dict; one without the record (an older one) must have exactly
  this rule's state entries and hyperparameters.
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
from optgen_runtime.common import MAX_STEP, host_state_values
from optgen_runtime.triton_support import check_kernel_device, check_kernel_dtype

LOW_PRECISION = (torch.float16, torch.bfloat16)
KERNEL_DTYPES = (torch.float32, *LOW_PRECISION)
RULE_KEY = "optgen_rule"  # state_dict()'s record of the rule that saved it


def _root(cls: type) -> type:
    """The outermost class of the MRO that has ``META`` annotations: ``GeneratedOptimizer``."""
    for base in reversed(cls.__mro__):
        if "RULE" in getattr(base, "__annotations__", {}):
            return base
    return cls


def _all_subclasses(cls: type) -> list[type]:
    out, todo = [], [cls]
    while todo:
        for sub in todo.pop().__subclasses__():
            out.append(sub)
            todo.append(sub)
    return out


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
            step = state["step"]
            if step.dtype != torch.int64 or step.device.type != "cpu" or step.dim():
                state["step"] = step_tensor(int(step.item()))  # exact from now on
            return state
        dtype = self._working_dtype(p)
        weight = p.detach().to(dtype).cpu().numpy()
        initial = self.NUMPY.init_state(weight.copy())
        state["step"] = step_tensor(0)
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
        check_dense(name, label, p)
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
        if step_value(step) is None:
            self._fail(
                ValueError,
                f"{label}'s state['step'] = {step!r} is not a step count "
                "(a whole number in [0, 2**63 - 2])",
            )
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
        name = type(self).__name__
        count = step_value(saved["step"])
        if count is None:
            raise ValueError(
                f"{name}.load_state_dict: saved state {index}['step'] = {saved['step']!r} is "
                "not a step count (a whole number in [0, 2**63 - 2])"
            )
        out: dict[str, Any] = {"step": step_tensor(count)}
        for key, value in host_state_values(
            f"{name}.load_state_dict: saved state {index}", saved, self.META.HOST_STATES
        ).items():
            out[key] = value
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
        out = super().state_dict()
        out[RULE_KEY] = self.RULE  # torch.optim's loaders read only "state" and "param_groups"
        return out

    def _check_origin(self, state_dict: Any) -> None:
        """Refuse a state dict saved by another rule (before anything is written)."""
        name = type(self).__name__
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise TypeError(
                f"{name}.load_state_dict: expected a dict with 'state' and 'param_groups', "
                f"got {type(state_dict).__name__}"
            )
        rule = state_dict.get(RULE_KEY)
        if rule is not None and rule != self.RULE:
            raise ValueError(self._foreign(f"it was saved by the rule {rule!r}, not {self.RULE!r}"))
        if rule is None:  # an older state dict: no hyperparameter of another rule
            ours = set(self.META.HYPERPARAMS) | set(self._aliases())
            others: dict[str, str] = {}
            for cls in _all_subclasses(_root(type(self))):
                meta = getattr(cls, "META", None)
                for key in getattr(meta, "HYPERPARAMS", ()):
                    if key not in ours:
                        others.setdefault(key, cls.__name__)
            for number, group in enumerate(state_dict["param_groups"]):
                if not isinstance(group, dict):
                    continue
                foreign = sorted(k for k in group if k in others)
                if foreign:
                    raise ValueError(
                        self._foreign(
                            f"its param group {number} has {foreign}, which {name} does not have "
                            f"(hyperparameters of another rule, e.g. {others[foreign[0]]})"
                        )
                    )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch.optim's loader, except that buffers keep the rule's dtypes and are checked first.

        torch casts every saved tensor but ``step`` to the parameter's dtype, so fp32 state of a
        bf16 parameter would pass through bf16; here each buffer is restored (copied) in the dtype
        the rule keeps it in, and nothing is changed unless the whole state_dict is accepted.
        """
        self._settle()
        self._check_origin(state_dict)
        state_dict = {k: v for k, v in state_dict.items() if k != RULE_KEY}
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
