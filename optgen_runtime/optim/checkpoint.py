"""Checkpoints: ``state_dict()`` / ``load_state_dict()`` of the generated optimizers.

- ``state_dict()`` is torch.optim's, plus a top-level ``"optgen_rule"`` entry naming the rule
  that saved it (torch.optim's loaders read only ``state`` and ``param_groups``).
- ``load_state_dict`` refuses another rule's state dict; one without the record (an older one)
  may not hold a hyperparameter of another generated rule. Saved step counts and host states are
  checked, and every buffer is restored (copied) in the rule's dtype: fp32 state of fp16/bf16
  parameters never passes through the parameter's dtype, unlike torch.optim's loader. Nothing is
  changed unless the whole state dict is accepted, so a resumed run is bit-identical.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from typing import Any

import torch

from optgen_runtime.checks import check_kind, check_state_shape, state_key_problems
from optgen_runtime.common import host_state_values
from optgen_runtime.optim.distributed import is_dtensor, like, local
from optgen_runtime.optim.state import ParamState, step_tensor, step_value

RULE_KEY = "optgen_rule"  # state_dict()'s record of the rule that saved it


def _generated_classes() -> list[type]:
    """Every class built on ``ParamState``: the generated optimizers (and their bases)."""
    out, todo = [], [ParamState]
    while todo:
        for sub in todo.pop().__subclasses__():
            out.append(sub)
            todo.append(sub)
    return out


def key_problems(index: Any, missing: list[str], extra: list[str]) -> str:
    """What is wrong with saved state ``index``'s entries, naming each."""
    problems = [f"lacks {missing}"] if missing else []
    if extra:
        problems.append(f"has {extra}, which this optimizer does not keep")
    return f"state {index} " + " and ".join(problems)


class Checkpoint:
    """``state_dict`` / ``load_state_dict`` of ``GeneratedOptimizer``."""

    def _restore(self, p: torch.Tensor, saved: dict[str, Any], index: int) -> dict[str, Any]:
        """One parameter's saved state in the rule's dtypes and ``p``'s device (copies)."""
        if not saved:
            return {}
        optional = ("master", *self.META.ABSENT)  # may be missing (see ParamState._absent)
        missing, extra = state_key_problems(saved, self._state_names(), optional)
        if extra or missing:
            raise ValueError(self._foreign(key_problems(index, missing, extra)))
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
        tensors = [(k, self._working_dtype(p)) for k in self.META.STATES if k in saved]
        if "master" in saved:
            tensors.append(("master", torch.float32))
        where = f"{type(self).__name__}.load_state_dict"
        for key, dtype in tensors:
            value, label = saved[key], f"saved state {index}[{key!r}]"
            check_kind(where, label, value, torch.Tensor, "torch.Tensor")
            axis = self.META.STATE_AXES.get(key)
            check_state_shape(where, label, value, p, axis, "its parameter")
            shard = self._shard_of(p, value, f"{where}: {label}").detach()
            if shard.layout != torch.strided:  # torch's SGD keeps a sparse momentum after
                shard = shard.to_dense()  # sparse gradients: the same values, kept dense
            if axis is None and key != "master":  # laid out as the step would make it
                buffer = self._new_buffer(p, dtype).copy_(shard)
            else:
                buffer = shard.to(
                    device=p.device, dtype=dtype, memory_format=torch.contiguous_format, copy=True
                )
            out[key] = like(p, buffer)
        if "master" not in out and self._needs_master(p):
            out["master"] = self._master(p)
        return out

    def _shard_of(self, p: torch.Tensor, value: torch.Tensor, what: str) -> torch.Tensor:
        """The part of a saved state tensor (of ``p``'s full shape) that ``p``'s rank keeps:
        a DTensor placed like ``p`` gives its local shard (torch.distributed.checkpoint loads
        it so), a plain tensor its rows of ``p``'s shard; all of it for a plain ``p`` (a
        DTensor saved from sharded state is gathered: every rank loads together)."""
        if not is_dtensor(p):
            return value.full_tensor() if is_dtensor(value) else value
        if is_dtensor(value):
            if value.device_mesh != p.device_mesh or value.placements != p.placements:
                raise ValueError(
                    f"{what} is placed {value.placements} on {value.device_mesh}, its parameter "
                    f"{p.placements} on {p.device_mesh}"
                )
            return value.to_local()
        shard = local(p)
        if shard.shape == value.shape:
            return value
        row = math.prod(p.shape[1:])
        return value.narrow(0, self._noise_offset(p) // row if row else 0, shard.shape[0])

    def _foreign(self, what: str) -> str:
        name = type(self).__name__
        hint = (
            f"; a torch.optim.{self.TORCH.class_name} state_dict loads with "
            f"{name}.load_torch_state_dict()"
            if self.TORCH is not None and not getattr(self, "DROP_IN", None)
            else ""
        )
        return f"{name}.load_state_dict: not a state_dict of {name} ({what}){hint}"

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
            for cls in _generated_classes():
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
        where = f"{type(self).__name__}.load_state_dict"
        if len(groups) != len(saved_groups):
            raise ValueError(
                f"{where}: the state dict has {len(saved_groups)} param groups, "
                f"the optimizer {len(groups)}"
            )
        for number, (g, saved) in enumerate(zip(groups, saved_groups, strict=True)):
            if len(g["params"]) != len(saved["params"]):
                raise ValueError(
                    f"{where}: param group {number} of the state dict has "
                    f"{len(saved['params'])} parameters, the optimizer's {len(g['params'])}"
                )
        for saved in saved_groups:
            missing = [k for k in self._required_keys() if k not in saved]
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
        self._remember_groups()
        self._plan = None  # the fast step's: it holds the replaced buffers (freed now)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)
