"""A drop-in class's (:mod:`~optgen_runtime.optim.dropin`) per-parameter state in torch's format
read as the rule keeps it: the rule's keys and types, torch's kept axis of a row/column state
squeezed, buffers torch does not create under the group's settings at the rule's initial values,
and a step count where torch keeps none (SGD's). ``load_state_dict`` reads each saved state so
(``_from_torch``), and so does the full step each state a caller wrote into ``self.state`` in
torch's format (``_adopt_states``: ``ZeroRedundancyOptimizer.load_state_dict`` does).
"""

from __future__ import annotations

from typing import Any

import torch

from optgen_runtime.checks import state_key_problems
from optgen_runtime.optim.state import step_tensor


class TorchStates:
    """The torch-format state readers of ``DropIn`` (see the module docstring)."""

    def _from_torch(
        self, p: torch.Tensor, group: dict[str, Any], st: dict[str, Any], index: Any = None
    ) -> tuple[dict[str, Any], list[str], list[str]]:
        """Parameter ``p``'s state ``st`` in torch's format (``group``'s settings) as the rule
        keeps it, and the keys missing from it and extra in it, in torch's names. ``index``:
        its key in the state dict, for the message of a refusal."""
        axes = self.META.STATE_AXES
        layout = self._layout(p, group)
        ours_of = {theirs: key for key, theirs in layout.items() if theirs is not None}
        out: dict[str, Any] = {}
        for theirs, value in st.items():
            key = ours_of.get(theirs, theirs)
            if isinstance(value, dict) and not value and key in layout:
                # torch.distributed.checkpoint's flattened load rebuilds each entry of the live
                # state by its name, a name the saved dict lacks as an empty dict: one torch does
                # not keep here is absent (made below as a first step makes it); one it keeps
                # under another name is refused (its saved values were left behind)
                if layout[key] is None:
                    continue
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: state {index!r} has "
                    f"{theirs!r} = {{}}, torch.distributed.checkpoint's rebuilding of a name "
                    "its flattened state dict lacks (flatten_optimizer_state_dict=True): "
                    f"{type(self).__name__} keeps torch's {layout[key]!r} as {key!r}; load "
                    "with flatten_optimizer_state_dict=False"
                )
            if value is None and key in self.META.ABSENT:
                continue  # torch before 2.x kept momentum_buffer=None where it had none
            tensor = isinstance(value, torch.Tensor)
            if key in axes and layout.get(key) == theirs:
                self._check_torch_factor(index, theirs, value, p, axes[key])
            if key in self.META.HOST_STATES and tensor and value.numel() == 1:
                value = value.item()  # torch's 0-d tensor: a Python float here
            elif key in axes and tensor and p.dim() >= 2 and value.dim() == p.dim():
                value = value.squeeze(axes[key])  # torch keeps the reduced axis
            elif key in axes and tensor and p.dim() == 0 and value.dim() == 0:
                value = value.reshape(1)  # BELOW_2D of a 0-d parameter: one column here
            out[key] = value
        if layout["step"] is None and "step" not in out:
            out["step"] = step_tensor(1)  # torch's SGD keeps no count: not the first step
        hp = self._rule_values(group)
        gone = self._absent(hp)  # no such state under these settings (nor in torch)
        absent = [
            key
            for key in self.META.STATES
            if key not in out and layout[key] is None and key not in gone
        ]
        if absent:  # buffers torch does not keep here: the rule's initial values
            initial = self._initial(p, hp)
            for key in absent:
                out[key] = initial[key]
        optional = ("master", *self.META.ABSENT)
        missing, extra = state_key_problems(out, self._state_names(), optional)
        theirs_of = {v: k for k, v in ours_of.items()}
        return out, [layout.get(k) or k for k in missing], [theirs_of.get(k, k) for k in extra]

    def _check_torch_factor(
        self, index: Any, theirs: str, value: Any, p: torch.Tensor, axis: int
    ) -> None:
        """A row/column state in torch's format (Adafactor's ``row_var``/``col_var`` with the
        reduced axis kept, ``variance`` of the parameter's shape below two dims) is a tensor of
        that shape: refused otherwise naming torch's key and shape, as the user's dict has
        them (the rule's own check, after the conversion, would name ``row``/``col``)."""
        name = f"{type(self).__name__}.load_state_dict: saved state {index}[{theirs!r}]"
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        shape = list(p.shape)
        if p.dim() >= 2:
            shape[axis] = 1  # torch keeps the reduced axis
        if tuple(value.shape) != tuple(shape):
            raise ValueError(
                f"{name} shape is {tuple(value.shape)}, expected {tuple(shape)} "
                f"(torch.optim.{self.DROP_IN}'s, for its parameter of shape {tuple(p.shape)})"
            )

    def _adopt_states(self) -> None:
        """Each parameter's state that a caller put in ``self.state`` in torch's format, as
        ``ZeroRedundancyOptimizer.load_state_dict`` does (it writes the saved state into its
        optimizer's ``state`` without calling its ``load_state_dict``), taken as
        ``load_state_dict`` takes it: the same values in the rule's keys and types. Once per
        full step, before its checks; a state of neither format is left to them (named)."""
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if st and isinstance(st, dict) and self._torch_format(p, st):
                    out, missing, extra = self._from_torch(p, group, st)
                    if not (missing or extra):
                        self.state[p] = out

    def _torch_format(self, p: torch.Tensor, st: dict[str, Any]) -> bool:
        """Whether ``st`` is not kept as the rule keeps it (its keys, a host state held as a
        tensor, a row/column state with torch's kept axis): torch's format, or neither."""
        optional = ("master", *self.META.ABSENT)
        missing, extra = state_key_problems(st, self._state_names(), optional)
        if missing or extra:
            return True
        if any(isinstance(st[k], torch.Tensor) for k in self.META.HOST_STATES):
            return True
        axes = self.META.STATE_AXES
        return any(
            isinstance(st[k], torch.Tensor) and p.dim() >= 2 and st[k].dim() == p.dim()
            for k in axes
            if k in st
        )
