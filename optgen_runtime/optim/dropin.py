"""Drop-in ``torch.optim`` classes (``generated/torch/optim.py``): torch's constructor and
state_dict format over a rule with torch's semantics (``RULE.drop_in`` in ``specs/torch_*.py``).

- Constructor: torch's arguments and defaults (generated from the spec). The param groups
  hold torch's keys alone, as torch's do: a torch tuple (``betas``, ``etas``) is read into the
  rule's hyperparameters of its items (``beta1``, ``beta2``) at each step (``_hyper``; a
  scheduler edits the tuple), and a renamed setting likewise (Muon's ``weight_decay`` is the
  rule's ``wd``); a group given a rule's name of one is refused. So the live keys are the
  state_dict's, which torch.distributed.checkpoint's flattened load
  (``flatten_optimizer_state_dict=True``) rebuilds the state dict from
  (:mod:`~optgen_runtime.optim.torch_groups`). The class's ``FIXED``
  settings (AdamW's ``decoupled_weight_decay=True``) are always passed. The keyword-only
  ``multi_precision`` and ``backend`` are optgen's own, and so is each hyperparameter of the
  rule that torch has no argument for (Muon's ``ns_dtype``): keyword-only, at the rule's
  default; given otherwise, the groups (and so the state_dict) hold it, and a group may set its
  own; absent, the rule's default applies.
- torch's implementation switches: ``foreach`` and ``fused`` are accepted and kept in the groups
  but change nothing: every step already runs one fused kernel per dtype combination on CUDA and
  the chunked NumPy reference on the CPU. ``capturable=True`` is refused (the step computes its
  scalars from step counts on the host, so it cannot be captured in a CUDA graph), and so is
  ``differentiable=True`` (the step writes in place under ``no_grad``): in the constructor,
  ``add_param_group`` and ``load_state_dict``, before anything is written.
- Sparse gradients: SGD and Adagrad take them, as torch's do (``SPARSE_GRADS``), densified for
  the step; SparseAdam takes nothing else and updates only the elements they hold
  (:mod:`~optgen_runtime.optim.rows`); the other classes refuse them in the step's checks, as
  torch's do.
- ``state_dict()`` is torch's: per parameter only the buffers torch creates under the group's
  settings (RMSprop's ``grad_avg`` only when centered; the rule keeps no buffer torch lacks at
  torch's defaults, ``absent_when``, and unused ones elsewhere at their initial value), under
  torch's keys, ``step`` as torch's float32 count (exact to 2**24, as torch's own; torch's SGD keeps
  none; SparseAdam's is a Python int, as torch's), host states (NAdam's ``mu_product``,
  ASGD's ``eta`` and ``mu``) as 0-d float64 tensors (torch keeps float32 ones; its loader
  casts them), row/column states (Adafactor's) with torch's kept axis, or under torch's name
  for a weight of fewer than two dims (``BELOW_2D``); plus the top-level ``"optgen_rule"``,
  which torch's loader ignores.
- ``load_state_dict`` takes torch's (or ours): item names filled in from the tuples, absent
  switches and fixed settings from the defaults, buffers torch did not create at the rule's
  initial values, and, where torch keeps no step count (SGD), a count of 1 for a parameter with
  state (the count only tells the first step): :mod:`~optgen_runtime.optim.torch_states`. Then
  :mod:`~optgen_runtime.optim.checkpoint`'s checks and restore. ``to_torch_state_dict`` /
  ``load_torch_state_dict`` are the same.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch

from optgen_runtime.optim.base import GeneratedOptimizer
from optgen_runtime.optim.checkpoint import key_problems
from optgen_runtime.optim.exchange import host_state_tensor, torch_creates, torch_defaults
from optgen_runtime.optim.rows import ONLY_SPARSE, Densified, Refused, densify
from optgen_runtime.optim.state import step_tensor
from optgen_runtime.optim.torch_groups import TorchKeyedGroups
from optgen_runtime.optim.torch_states import TorchStates

# torch.optim's switches that no step of a generated class can honour, and why.
REFUSED = {
    "capturable": "the step computes its scalars from step counts on the host: it cannot be "
    "captured in a CUDA graph",
    "differentiable": "the step writes in place under no_grad: it cannot be differentiated",
}

# torch.optim's classes that take sparse (COO) gradients (nn.Embedding(sparse=True)), each with
# the settings torch refuses with them or that would then differ from torch's sparse update:
# (key, whether its value is refused, why). The step densifies such a gradient for its update
# (a copy: the parameter's grad is left as it was): torch's sparse update computes what its
# dense one does with zeros where the gradient has none (tests/test_dropin.py,
# test_sparse_gradients).
_DECAY = ("weight_decay", lambda v: v != 0, "torch refuses it: it would change every row")
SPARSE_GRADS: dict[str, tuple[Refused, ...]] = {
    "SGD": (_DECAY,),
    "Adagrad": (
        _DECAY,
        ("eps", lambda v: v == 0, "rows without a gradient would divide 0 by 0; torch skips them"),
    ),
}


@contextmanager
def _aside(opt: torch.optim.Optimizer, hooks: str) -> Iterator[Any]:
    """``opt``'s hooks of that kind (yielded) set aside while the block runs: torch's loader
    and saver run them on the rule's format, the drop-in runs them on torch's."""
    kept = getattr(opt, hooks)
    setattr(opt, hooks, OrderedDict())
    try:
        yield kept
    finally:
        setattr(opt, hooks, kept)


class DropIn(TorchKeyedGroups, TorchStates, GeneratedOptimizer):
    """Base of the drop-in classes; see the module docstring."""

    DROP_IN: ClassVar[str]  # the torch.optim class name
    FIXED: ClassVar[dict[str, Any]] = {}
    BELOW_2D: ClassVar[dict[str, str]] = {}  # see Rule.drop_in (Adafactor's variance)
    STATE_FROM_DEFAULTS: ClassVar[bool] = False  # see Rule.drop_in (Adagrad's)

    def __init__(
        self,
        params: Iterable[Any],
        settings: dict[str, Any],
        *,
        own: dict[str, Any] | None = None,
        multi_precision: bool = False,
        backend: str = "auto",
    ) -> None:
        self._refuse_switches(settings, "")
        self._torch_checks(settings)
        settings = {**settings, **self.FIXED}
        # the rule's own settings (Muon's ns_dtype) in the groups where given otherwise than
        # the rule's default: at it the groups hold torch's keys alone, as torch's saves them
        given = {k: v for k, v in (own or {}).items() if v != self.META.HYPERPARAMS[k]}
        defaults = {**settings, **given}
        for base, items in self._aliases().items():
            self._alias_value(base, items, defaults[base])  # checked (the groups keep it)
            if base not in self._renames():  # as torch's constructor keeps it: a tuple whose
                # tensors (0-d views) a user may change in place between steps
                defaults[base] = tuple(
                    x.squeeze() if isinstance(x, torch.Tensor) and x.dim() else x
                    for x in defaults[base]
                )
        GeneratedOptimizer.__init__(
            self, params, defaults, multi_precision=multi_precision, backend=backend
        )
        if self.STATE_FROM_DEFAULTS:  # torch's Adagrad makes every state in its constructor
            self.init_state()

    def _torch_checks(self, settings: dict[str, Any]) -> None:
        """torch's own checks of its constructor arguments (ranges, Nesterov's need of momentum
        and no dampening, ...): ``torch.optim.<DROP_IN>`` built over a 1 x 1 tensor (a matrix:
        Muon takes nothing else)."""
        try:
            getattr(torch.optim, self.DROP_IN)([torch.zeros(1, 1, requires_grad=True)], **settings)
        except (TypeError, ValueError, RuntimeError) as error:
            raise type(error)(f"{type(self).__name__}: {error}") from None

    def _refuse_switches(self, settings: Any, where: str) -> None:
        if not isinstance(settings, dict):
            return
        for key, why in REFUSED.items():
            if settings.get(key):
                raise ValueError(
                    f"{type(self).__name__}{where}: {key}=True is not supported ({why}); "
                    f"pass {key}=False"
                )

    def _densify(self) -> list[Densified]:
        """Each sparse COO grad of a class of ``SPARSE_GRADS`` densified for this step (the
        others refuse it in the step's checks), as torch's; see ``rows.densify``."""
        refused = SPARSE_GRADS.get(self.DROP_IN)
        if refused is None:
            return []
        return densify(type(self).__name__, self.param_groups, refused)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._refuse_switches(param_group, ".add_param_group")
        super().add_param_group(param_group)

    def _torch_settings(self, group: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
        keys = torch_defaults(self.DROP_IN)
        return tuple((k, v) for k, v in group.items() if k in keys)

    def _layout(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, str | None]:
        """Each state of ``p`` (and ``"step"``) -> its key in torch's state, None where torch
        keeps none under the group's settings (``torch_creates``). A row/column state is kept
        for a weight of two dims or more, else under its ``BELOW_2D`` name, if any."""
        created = torch_creates(self.DROP_IN, self._torch_settings(group))
        axes = self.META.STATE_AXES
        layout: dict[str, str | None] = {}
        for key in ("step", *self.META.STATES, *self.META.HOST_STATES):
            theirs = self.TORCH.states[key][0] if key in self.TORCH.states else key
            if key in axes:
                layout[key] = theirs if p.dim() >= 2 else self.BELOW_2D.get(key)
            else:
                layout[key] = theirs if "*" in created or theirs in created else None
        return layout

    def state_dict(self) -> dict[str, Any]:
        """torch's format; the hooks of ``register_state_dict_post_hook`` see it (they run after
        the conversion from the rule's), as on torch's class."""
        with _aside(self, "_optimizer_state_dict_post_hooks") as hooks:
            out = self._torch_state_dict()
        for hook in hooks.values():
            result = hook(self, out)
            if result is not None:
                out = result
        return out

    def _torch_state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        groups = out["param_groups"]  # torch's keys, and the rule's own (Muon's ns_dtype)
        params = [p for g in self.param_groups for p in g["params"]]
        group_of = {i: g for g in groups for i in g["params"]}
        axes = self.META.STATE_AXES
        state: dict[Any, Any] = {}
        for index, st in out["state"].items():
            group = group_of.get(index)
            if group is None or not isinstance(st, dict):
                state[index] = st
                continue
            p = params[index]
            layout = self._layout(p, group)
            kept: dict[str, Any] = {}
            for key, value in st.items():
                theirs = "master" if key == "master" else layout.get(key)
                if theirs is None:
                    continue
                if key == "step":  # torch's format: a float32 tensor (SparseAdam: an int)
                    value = int(value) if self.DROP_IN in ONLY_SPARSE else value.to(torch.float32)
                elif key in self.META.HOST_STATES:  # torch keeps a 0-d tensor
                    value = host_state_tensor(value)
                elif key in axes and p.dim() >= 2:  # torch keeps the reduced axis
                    value = value.unsqueeze(axes[key])
                elif key in axes:  # BELOW_2D: torch's state has the parameter's shape (0-d)
                    value = value.reshape(p.shape)
                kept[theirs] = value
            if kept:
                state[index] = kept
        out["state"] = state
        out["param_groups"] = groups
        return out

    def __setstate__(self, state: dict[str, Any]) -> None:
        """As torch's: the class's fixed settings are put back in every group (torch.optim.AdamW's
        ``__setstate__`` sets ``decoupled_weight_decay=True`` when it is unpickled or loads a
        state dict, whatever the group held)."""
        for group in state.get("param_groups", ()):
            if isinstance(group, dict):
                group.update(self.FIXED)
        super().__setstate__(state)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Takes torch's format; the hooks of ``register_load_state_dict_pre_hook`` see it as
        given (they run before the conversion to the rule's), as on torch's class."""
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        with _aside(self, "_optimizer_load_state_dict_pre_hooks"):
            self._load_torch_state_dict(state_dict)

    def _load_torch_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not (
            isinstance(state_dict, dict)
            and {"state", "param_groups"} <= set(state_dict)
            and isinstance(state_dict["param_groups"], list)
            and isinstance(state_dict["state"], dict)
        ):
            super().load_state_dict(state_dict)  # refused there, with its message
            return
        self._settle()
        groups = []
        for number, saved in enumerate(state_dict["param_groups"]):
            if not isinstance(saved, dict):
                groups.append(saved)
                continue
            group = {**saved, **self.FIXED}  # AdamW's decoupling, whatever the dict says
            for key, default in self.defaults.items():
                group.setdefault(key, default)
            self._refuse_switches(group, f".load_state_dict: param group {number}")
            self._check(group)  # its settings, named as torch names them, before its states
            groups.append(group)
        param_of: dict[Any, tuple[torch.Tensor, dict[str, Any]]] = {}
        for group, own in zip(groups, self.param_groups, strict=False):
            if isinstance(group, dict) and isinstance(group.get("params"), list):
                for index, p in zip(group["params"], own["params"], strict=False):
                    param_of[index] = (p, group)
        state: dict[Any, Any] = {}
        for index, st in state_dict["state"].items():
            if not isinstance(st, dict) or not st or index not in param_of:
                state[index] = st
                continue
            p, group = param_of[index]
            out, missing, extra = self._from_torch(p, group, st, index)
            if missing or extra:  # named as the state dict names them (torch's names)
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: not a state_dict of "
                    f"{type(self).__name__} (torch.optim.{self.DROP_IN}'s, these settings): "
                    + key_problems(index, missing, extra)
                )
            state[index] = out
        super().load_state_dict({**state_dict, "state": state, "param_groups": groups})

    def _state_for(self, p: torch.Tensor, hp: dict[str, Any]) -> dict[str, Any]:
        """As the rule's, but a buffer made mid-run (SGD's momentum switched on) where torch
        keeps no step count restarts the count: torch makes that buffer from the gradient
        itself (``clone(grad)``, no dampening), which is what the rule's first step does. With
        ``STATE_FROM_DEFAULTS`` the initial values come from the constructor's settings
        (``self.defaults``), as torch.optim.Adagrad's: a group's own
        ``initial_accumulator_value``, or one set after construction, is not read."""
        if self.STATE_FROM_DEFAULTS:  # torch's initial values from its defaults, not the group's
            made = self._check(self.defaults)
            hp = {**hp, **{k: made[k] for k in self.META.INIT_HYPERPARAMS}}
        before = set(self.state[p])
        state = super()._state_for(p, hp)
        if before and state.keys() - before:
            group = next(g for g in self.param_groups if any(q is p for q in g["params"]))
            created = torch_creates(self.DROP_IN, self._torch_settings(group))
            if "step" not in created and "*" not in created:
                state["step"] = step_tensor(0)
        return state

    def to_torch_state_dict(self) -> dict[str, Any]:
        """The same as ``state_dict()``: it is torch's format already."""
        return self.state_dict()

    def load_torch_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The same as ``load_state_dict``: it takes torch's format."""
        self.load_state_dict(state_dict)
