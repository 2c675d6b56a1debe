"""State exchange with torch.optim, and the torch.optim optimizer that runs a rule.

``to_torch_state_dict`` / ``load_torch_state_dict``: names and scaling from the spec's
``torch_equivalent`` (the class's ``TORCH``); the rule's ``fixed`` torch settings are exported and
required on import; any other torch setting must keep torch's default (read from a
default-constructed ``torch.optim.<class>``), else the import is refused before anything is
written. Implementation switches (``IMPLEMENTATION_ONLY``) are ignored.

``torch_optimizer`` builds, from the same mapping, the torch.optim optimizer that runs what a
generated class runs with given hyperparameters (tests and benchmarks compare the two).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

import torch

from optgen_runtime.checks import check_kind
from optgen_runtime.hyperparams import TorchEquivalent, resolve_hyperparams

# torch.optim group keys that choose an implementation, not the math: never refused on import.
IMPLEMENTATION_ONLY = frozenset({"foreach", "fused", "capturable", "differentiable"})


@cache
def torch_defaults(class_name: str) -> dict[str, Any]:
    """Every group setting of ``torch.optim.<class_name>`` with torch's default value."""
    return dict(_probe(class_name, torch.zeros(1, requires_grad=True)).defaults)


def _probe(class_name: str, p: torch.Tensor) -> torch.optim.Optimizer:
    """``torch.optim.<class_name>([p])``; for an optimizer that takes only matrices
    (torch.optim.Muon refuses a 1-D parameter), over a 1 x 1 parameter instead."""
    cls = getattr(torch.optim, class_name)
    try:
        return cls([p])
    except ValueError:
        matrix = torch.nn.Parameter(p.detach().reshape(1, 1))
        if p.grad is not None:
            matrix.grad = p.grad.reshape(1, 1)
        return cls([matrix])


def torch_creates(class_name: str, settings: tuple[tuple[str, Any], ...]) -> frozenset[str]:
    """The state keys ``torch.optim.<class_name>`` with ``settings`` creates on a step: torch
    creates some buffers only when a setting needs them (RMSprop's ``momentum_buffer`` only with
    ``momentum > 0``), so a state dict of it may lack them."""
    return _torch_creates(class_name, tuple((k, plain(v)) for k, v in settings))


@cache
def _torch_creates(class_name: str, settings: tuple[tuple[str, Any], ...]) -> frozenset[str]:
    p = torch.nn.Parameter(torch.zeros(1))
    p.grad = torch.zeros(1)
    opt = _probe(class_name, p)
    p = opt.param_groups[0]["params"][0]
    # set as a loaded group would be (some group keys are no constructor arguments)
    opt.param_groups[0].update({k: v for k, v in settings if k not in IMPLEMENTATION_ONLY})
    # the step beneath torch's hook wrapper: the user's global step hooks (and a profiler) see
    # no step of this private optimizer
    step = type(opt).step
    try:
        getattr(step, "__wrapped__", step)(opt)
    except Exception:
        return frozenset({"*"})
    return frozenset(k for k, v in opt.state[p].items() if v is not None)


def host_state_tensor(value: float) -> torch.Tensor:
    """A host state (NAdam's ``mu_product``, ASGD's ``eta``) as torch.optim keeps it: a 0-d CPU
    tensor of torch's scalar dtype (float32; float64 where that is the default dtype, as
    ``torch.optim.optimizer._get_scalar_dtype``), or float64 where the value is not exactly a
    float32 (an MXNet rule's double: nothing is lost). Given a Python float, torch's foreach
    ASGD steps once with it unrounded."""
    dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    out = torch.tensor(value, dtype=dtype)
    if dtype != torch.float64 and value == value and out.item() != value:
        out = torch.tensor(value, dtype=torch.float64)
    return out


def split_key(key: str) -> tuple[str, int | None]:
    """``"betas[0]"`` -> ("betas", 0); ``"lr"`` -> ("lr", None)."""
    if key.endswith("]"):
        base, index = key[:-1].split("[")
        return base, int(index)
    return key, None


def plain(value: Any) -> Any:
    """A torch group value as a Python value (0-d tensors -> float, lists -> tuples)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, list):
        return tuple(plain(v) for v in value)
    return value


def same(a: Any, b: Any) -> bool:
    """Equal as group settings (tensors, lists and tuples compared by value)."""
    a, b = plain(a), plain(b)
    if isinstance(a, tuple) or isinstance(b, tuple):
        return (
            isinstance(a, tuple)
            and isinstance(b, tuple)
            and len(a) == len(b)
            and all(same(x, y) for x, y in zip(a, b, strict=True))
        )
    if a is None or b is None:
        return a is b
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):  # many elements
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    return bool(a == b)


def torch_settings(
    where: str,
    eq: TorchEquivalent,
    defaults: Mapping[str, Any],
    values: Mapping[str, Any],
) -> dict[str, Any]:
    """Our hyperparameter ``values`` as ``torch.optim.<eq.class_name>`` keyword arguments.

    Mapped through ``eq.hyper`` (a tuple item such as ``betas[0]`` completed from torch's
    defaults), plus ``eq.fixed``. A hyperparameter of ours that torch has no counterpart for must
    be at its default (``defaults``): torch could not run it otherwise.
    """
    for key, default in defaults.items():
        if key not in eq.hyper and not same(values[key], default):
            raise ValueError(
                f"{where}: {key}={values[key]!r} has no torch.optim.{eq.class_name} "
                f"counterpart (only {key}={default!r} does)"
            )
    kwargs: dict[str, Any] = dict(eq.fixed)
    torch_default = torch_defaults(eq.class_name)
    for key, theirs in eq.hyper.items():
        base, index = split_key(theirs)
        if index is None:
            kwargs[base] = _as_torch_type(values[key], torch_default.get(base))
        else:
            items = list(kwargs.get(base, torch_default[base]))
            items[index] = _as_torch_type(values[key], items[index])
            kwargs[base] = tuple(items)
    return kwargs


def _as_torch_type(value: Any, default: Any) -> Any:
    """A whole-number float where torch's default is an int (a count: Muon's ns_steps, which
    torch passes to range()) becomes an int; anything else is passed as it is."""
    whole = isinstance(value, float) and value.is_integer()
    return int(value) if whole and type(default) is int else value


def torch_optimizer(
    rule: Any,
    params: Iterable[Any],
    *,
    override: Mapping[str, Any] | None = None,
    **hyperparams: Any,
) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer over ``params`` that runs ``rule(params, **hyperparams)``.

    ``rule``: a generated optimizer class (or one of its instances) with a ``TORCH`` mapping.
    Our hyperparameters (their defaults where not given) become torch's settings through
    ``torch_settings``; ``override``: torch settings set on top (an implementation switch such
    as ``foreach``, or a deliberate difference a test documents).
    """
    cls = rule if isinstance(rule, type) else type(rule)
    if cls.TORCH is None:
        raise NotImplementedError(f"{cls.__name__} has no torch.optim equivalent")
    meta = cls.META
    resolve_hyperparams(cls.__name__, meta.HYPERPARAMS, meta.LEGAL, meta.NONE_MEANS, hyperparams)
    values = {**meta.HYPERPARAMS, **hyperparams}
    where = f"torch_optimizer({cls.__name__})"
    kwargs = torch_settings(where, cls.TORCH, meta.HYPERPARAMS, values) | dict(override or {})
    return getattr(torch.optim, cls.TORCH.class_name)(params, **kwargs)


class TorchExchange:
    """``to_torch_state_dict`` / ``load_torch_state_dict`` of ``GeneratedOptimizer``."""

    def _equivalent(self) -> TorchEquivalent:
        if self.TORCH is None:
            raise NotImplementedError(f"{type(self).__name__} has no torch.optim equivalent")
        if self.META.STATE_AXES:  # the drop-in (optim/dropin.py) overrides both methods
            raise NotImplementedError(
                f"{type(self).__name__}: torch keeps row/column states in its own layout; "
                f"generated.torch.optim.{self.TORCH.class_name} exchanges them (its state_dict "
                "is torch's)"
            )
        return self.TORCH

    def to_torch_state_dict(self) -> dict[str, Any]:
        """A state_dict that ``torch.optim.<TORCH.class_name>`` loads (its names and scaling).

        The group settings are torch's defaults, the rule's ``fixed`` settings and the mapped
        hyperparameters (``torch_settings``).
        """
        eq = self._equivalent()
        where = f"{type(self).__name__}.to_torch_state_dict"
        ours = self.state_dict()
        groups = []
        for group in ours["param_groups"]:
            kwargs = torch_settings(where, eq, self.META.HYPERPARAMS, group)
            # torch's defaults with this group's settings, as torch's own state_dict holds
            # them; not through torch's constructor, which refuses some groups its step and
            # load_state_dict take (SGD's nesterov at momentum 0, which loads and runs as
            # plain SGD)
            settings = torch_defaults(eq.class_name) | kwargs
            extras = {k: v for k, v in group.items() if k not in self.META.HYPERPARAMS}
            groups.append(extras | settings)
        state: dict[int, dict[str, Any]] = {}
        hp_of = {i: g for g in ours["param_groups"] for i in g["params"]}
        for index, st in ours["state"].items():
            hp = self._hyper(hp_of[index])
            # torch's format: a float32 count (exact up to 2**24, as torch's own)
            out: dict[str, Any] = {"step": st["step"].to(torch.float32)}
            for key, (theirs, factor) in eq.states.items():
                if key not in st and key in self.META.ABSENT:
                    continue  # absent under the group's settings: torch keeps none either
                value = st[key]
                if isinstance(value, torch.Tensor):
                    out[theirs] = value / factor(**hp)
                else:  # a host state, as torch keeps it
                    out[theirs] = host_state_tensor(value)
            state[index] = out
        return {"state": state, "param_groups": groups}

    def _check_torch_group(self, group: dict[str, Any], number: int) -> None:
        """Refuse any torch setting this rule cannot honour (see the module docstring)."""
        eq = self._equivalent()
        name = type(self).__name__
        mapped: dict[str, set[int] | None] = {}
        for theirs in eq.hyper.values():
            base, index = split_key(theirs)
            if index is None:
                mapped[base] = None
            else:
                indices = mapped.setdefault(base, set())
                assert indices is not None
                indices.add(index)
        for key, default in torch_defaults(eq.class_name).items():
            if key in IMPLEMENTATION_ONLY or (key in mapped and mapped[key] is None):
                continue
            value, expected = plain(group.get(key, default)), plain(eq.fixed.get(key, default))
            indices = mapped.get(key)
            if indices is not None:  # a tuple mapped item by item: the other items are torch's
                value = tuple(value)
                expected = tuple(
                    value[i] if i in indices and i < len(value) else item
                    for i, item in enumerate(expected)
                )
            if not same(value, expected):
                why = "fixed by the rule" if key in eq.fixed else "torch's default"
                raise ValueError(
                    f"{name}.load_torch_state_dict: torch.optim.{eq.class_name} param group "
                    f"{number} has {key}={value!r}, which {name} cannot honour "
                    f"(it runs {key}={expected!r}, {why})"
                )

    def load_torch_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a ``torch.optim.<TORCH.class_name>`` state_dict (renamed and rescaled to ours).

        Every group setting is checked first (see ``_check_torch_group``); nothing is written
        unless the whole state_dict is accepted.
        """
        eq = self._equivalent()
        name = type(self).__name__
        theirs_groups = state_dict["param_groups"]
        if len(theirs_groups) != len(self.param_groups):
            raise ValueError(
                f"{name}.load_torch_state_dict: {len(theirs_groups)} param groups, "
                f"this optimizer has {len(self.param_groups)}"
            )
        defaults = torch_defaults(eq.class_name)
        groups = []
        for number, (theirs_group, own) in enumerate(
            zip(theirs_groups, self.param_groups, strict=True)
        ):
            self._check_torch_group(theirs_group, number)
            group = {k: v for k, v in own.items() if k != "params"}
            group.update(  # scheduler bookkeeping (initial_lr, ...), not torch settings
                {k: v for k, v in theirs_group.items() if k not in defaults and k != "params"}
            )
            group["params"] = list(theirs_group["params"])
            for key, theirs in eq.hyper.items():
                base, index = split_key(theirs)
                value = theirs_group.get(base, defaults[base])
                group[key] = plain(value if index is None else value[index])
            for base, items in self._aliases().items():
                group[base] = self._alias_from_names(base, items, group)
            groups.append(group)
        hp_of = {i: g for g in groups for i in g["params"]}
        torch_group_of = {i: g for g in theirs_groups for i in g["params"]}
        param_of = {
            i: p
            for g, own in zip(groups, self.param_groups, strict=True)
            for i, p in zip(g["params"], own["params"], strict=False)
        }
        state: dict[int, dict[str, Any]] = {}
        for index, st in state_dict["state"].items():
            if index not in hp_of or not st:
                continue
            hp = self._hyper(hp_of[index])
            settings = tuple((k, v) for k, v in torch_group_of[index].items() if k in defaults)
            created = torch_creates(eq.class_name, settings)
            initial: dict[str, Any] | None = None
            # torch's SGD keeps no step count (its math needs none): count from 0 again
            out: dict[str, Any] = {"step": st.get("step", 0)}  # checked by load_state_dict
            for key, (theirs, factor) in eq.states.items():
                value = st.get(theirs)
                absent = "*" not in created and theirs not in created
                if value is None and key in self._absent(hp):
                    continue  # absent under these settings: created when they change
                if value is None and absent and index in param_of:
                    # torch never made it under these settings: the rule's initial value
                    if initial is None:
                        initial = self._initial(param_of[index], hp)
                    value = initial[key]
                    if key in self.META.STATES:
                        out[key] = value
                        continue
                if value is None:
                    changed = [  # the settings that make torch keep it (RMSprop's centered)
                        f"{k}={plain(v)!r}"
                        for k, v in settings
                        if k not in IMPLEMENTATION_ONLY and not same(v, defaults[k])
                    ]
                    raise ValueError(
                        f"{name}.load_torch_state_dict: state {index} has no {theirs!r} "
                        f"(keys {sorted(st)}), which torch.optim.{eq.class_name} keeps under "
                        f"its group's settings ({', '.join(changed) or 'its defaults'})"
                    )
                if key in self.META.STATES:
                    check_kind(
                        f"{name}.load_torch_state_dict",
                        f"state {index}[{theirs!r}]",
                        value,
                        torch.Tensor,
                        "torch.Tensor",
                    )
                    out[key] = value * factor(**hp)
                elif isinstance(value, torch.Tensor) and value.numel() == 1:
                    out[key] = value.item()  # a host state torch keeps as a 0-d tensor
                else:
                    out[key] = value  # a host state: load_state_dict checks it
            state[index] = out
        self.load_state_dict({"state": state, "param_groups": groups})
