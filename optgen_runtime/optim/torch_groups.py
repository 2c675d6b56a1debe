"""The param groups of a drop-in class (:mod:`~optgen_runtime.optim.dropin`) hold torch's keys
alone, as torch's do: ``betas`` (not also the rule's ``beta1``/``beta2``), Muon's
``weight_decay`` (not the rule's ``wd``). The rule's values are read from them at each step
(``_hyper``), so nothing is synced (:mod:`~optgen_runtime.optim.aliases` keeps both for the
spec-named classes), and a group given a rule's name of one is refused. The live keys are then
the state_dict's, from which torch.distributed.checkpoint's flattened load
(``flatten_optimizer_state_dict=True``) rebuilds a state dict.
"""

from __future__ import annotations

from typing import Any


class TorchKeyedGroups:
    """The group-key methods of ``DropIn`` (see the module docstring)."""

    @classmethod
    def _renames(cls) -> dict[str, str]:
        """torch's name -> the rule's, of each hyperparameter the rule names otherwise (Muon's
        ``weight_decay`` is the rule's ``wd``): the group keeps both, in step (see
        :mod:`~optgen_runtime.optim.aliases`); the state_dict has torch's alone."""
        cached = cls.__dict__.get("_RENAMES")
        if cached is None:
            cached = {}
            for ours, theirs in cls.TORCH.hyper.items() if cls.TORCH is not None else ():
                if "[" not in theirs and theirs != ours:
                    cached[theirs] = ours
            cls._RENAMES = cached
        return cached

    # The param groups hold torch's keys alone (``betas``, not the rule's ``beta1``/``beta2``;
    # Muon's ``weight_decay``, not ``wd``): the rule's values are read from them at each step.
    # torch.distributed.checkpoint's flattened load (``flatten_optimizer_state_dict=True``)
    # rebuilds the state dict from the live group keys, which are then ``state_dict()``'s.

    def _items(self) -> dict[str, tuple[str, int]]:
        """The rule's name of each item of torch's tuples and renamed settings -> (torch's
        key, index)."""
        return {ours: (base, i) for base, items in self._aliases().items() for i, ours in items}

    @classmethod
    def _labels(cls) -> dict[str, str]:
        """The rule's name of each item of torch's tuples and renamed settings -> torch's
        spelling of it (``beta2`` -> ``betas[1]``, Muon's ``wd`` -> ``weight_decay``): what a
        refusal calls it, as the user set it."""
        cached = cls.__dict__.get("_LABELS")
        if cached is None:
            renames = cls._renames()
            cached = {
                ours: base if base in renames else f"{base}[{index}]"
                for base, items in cls._aliases().items()
                for index, ours in items
            }
            cls._LABELS = cached
        return cached

    def _rule_values(self, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` (a group, or the rule's values) with torch's tuples and renamed settings
        read into the rule's names (checked; a tensor item by its value now)."""
        out = {k: values[k] for k in self.META.HYPERPARAMS if k in values}
        for key in self._own() - out.keys():  # not given: the rule's default
            out[key] = self.META.HYPERPARAMS[key]
        for base, items in self._aliases().items():
            if base in values:
                value = self._alias_value(base, items, values[base])
                out.update((ours, value[index]) for index, ours in items)
        return out

    def _hyper(self, group: dict[str, Any]) -> dict[str, Any]:
        values = self._rule_values(group)
        return {k: values[k] for k in self.META.HYPERPARAMS}

    def _check(self, values: dict[str, Any]) -> dict[str, float]:
        return super()._check(self._rule_values(values))

    def _alias_updates(self, group: dict[str, Any]) -> dict[str, Any]:
        """Nothing to sync (no rule names in the group): torch's tuples checked, and a rule
        name put in a group refused (it would change nothing)."""
        name = type(self).__name__
        for ours, (base, index) in self._items().items():
            if ours in group:
                item = base if base in self._renames() else f"{base}[{index}]"
                raise ValueError(
                    f"{name}: param group has {ours!r}, the rule's name of torch's {item}: a "
                    f"{name} group holds torch's keys; set {base}"
                )
        for base, items in self._aliases().items():
            self._alias_value(base, items, group[base])
        return {}

    def _apply_aliases(self, group: dict[str, Any], updates: dict[str, Any]) -> None:
        group.update(updates)

    def _adopt_aliases(self, group: dict[str, Any], given: set[str]) -> None:
        self._alias_updates(group)

    def _remember_groups(self) -> None:
        self._seen = {}

    def _check_saved_aliases(self, saved: dict[str, Any]) -> None:
        self._alias_updates(saved)

    def _required_keys(self) -> tuple[str, ...]:
        # (``_group_keys`` keeps the items' names: a group given one then changes the fast
        # step's record and is re-resolved, so refused, not passed over)
        skip = self._own() | self._items().keys()  # (own ones: the rule's default if absent)
        return tuple(k for k in self._group_keys() if k not in skip)

    @classmethod
    def _own(cls) -> set[str]:
        """The rule's hyperparameters torch has no argument for (Muon's ``ns_dtype``)."""
        mapped = cls.TORCH.hyper if cls.TORCH is not None else {}
        return {k for k in cls.META.HYPERPARAMS if k not in mapped}
