"""torch's tuple settings (``betas``) kept in every param group, in step with the rule's names.

Rules whose torch equivalent keeps a tuple (``betas``) also keep that tuple in every group, in
step with ``beta1``/``beta2``: whichever of the two a user or a scheduler (OneCycleLR, CyclicLR
with ``cycle_momentum``) changed since the last step wins. A drop-in class
(:mod:`~optgen_runtime.optim.dropin`) maps torch's name of a renamed hyperparameter the same
way (``Muon``'s ``weight_decay`` to the rule's ``wd``: an alias of one item, held as a plain
value, not a tuple: ``_renames``), but its groups hold torch's keys alone: it reads the items
from them at each step and syncs nothing (``DropIn._hyper``).
"""

from __future__ import annotations

from typing import Any

from optgen_runtime.optim.exchange import plain, same, split_key, torch_defaults


class TupleAliases:
    """The ``betas`` aliases of ``GeneratedOptimizer``'s param groups."""

    @classmethod
    def _renames(cls) -> dict[str, str]:
        """torch's name -> the rule's, of each hyperparameter kept under both (``DropIn``)."""
        return {}

    @classmethod
    def _aliases(cls) -> dict[str, list[tuple[int, str]]]:
        """torch's tuple keys this rule maps item by item: {"betas": [(0, "beta1"), ...]}, and
        the renamed ones as one item: {"weight_decay": [(0, "wd")]}. Computed once per class
        (a step asks for them per group)."""
        cached = cls.__dict__.get("_ALIASES")
        if cached is not None:
            return cached
        aliases: dict[str, list[tuple[int, str]]] = {}
        if cls.TORCH is not None:
            for ours, theirs in cls.TORCH.hyper.items():
                base, index = split_key(theirs)
                if index is not None:
                    aliases.setdefault(base, []).append((index, ours))
        for theirs, ours in cls._renames().items():
            aliases[theirs] = [(0, ours)]
        cls._ALIASES = aliases
        return aliases

    def _group_keys(self) -> tuple[str, ...]:
        """The keys of a param group that hold the rule's hyperparameters: the fast step's
        record of what the last step resolved (a drop-in's: torch's keys alone)."""
        return (*self.META.HYPERPARAMS, *self._aliases())

    def _required_keys(self) -> tuple[str, ...]:
        """The keys a saved param group must hold (``betas`` is filled in from the names)."""
        return tuple(self.META.HYPERPARAMS)

    def _stored(self, base: str, items: tuple[Any, ...] | list[Any]) -> Any:
        """What a group keeps under ``base`` for these items: the value of a renamed one."""
        return items[0] if base in self._renames() else tuple(items)

    def _items(self, base: str, value: Any) -> tuple[Any, ...]:
        """A group's ``base`` value as items, unchecked (see ``_alias_value``)."""
        return (value,) if base in self._renames() else tuple(value)

    def _alias_from_names(
        self, base: str, items: list[tuple[int, str]], values: dict[str, Any]
    ) -> Any:
        assert self.TORCH is not None
        if base in self._renames():
            return values[items[0][1]]
        result = list(torch_defaults(self.TORCH.class_name)[base])
        for index, ours in items:
            result[index] = values[ours]
        return tuple(result)

    def _alias_value(self, base: str, items: list[tuple[int, str]], value: Any) -> tuple:
        """``value`` of ``base`` checked, as items (a renamed one's: one item)."""
        if base in self._renames():
            if isinstance(value, (tuple, list, dict, set)):
                raise ValueError(
                    f"{type(self).__name__}: {base} must be a single value, got {value!r}"
                )
            return (plain(value),)
        size = max(index for index, _ in items) + 1
        if not isinstance(value, (tuple, list)) or len(value) != size:
            raise ValueError(
                f"{type(self).__name__}: {base} must be a tuple of {size} values, got {value!r}"
            )
        return tuple(plain(v) for v in value)

    def _snapshot(self, group: dict[str, Any]) -> dict[str, Any]:
        """The aliases' values now (a tensor item's value: one changed in place is a change)."""
        return {
            base: (
                tuple(map(plain, self._items(base, group[base]))),
                tuple(group[ours] for _, ours in items),
            )
            for base, items in self._aliases().items()
        }

    def _adopt_aliases(self, group: dict[str, Any], given: set[str]) -> None:
        """A new group: ``betas`` given by the user sets beta1/beta2, else it follows them."""
        name = type(self).__name__
        for base, items in self._aliases().items():
            if base in given:
                value = self._alias_value(base, items, group[base])
                for index, ours in items:
                    if ours in given and not same(group[ours], value[index]):
                        raise ValueError(
                            f"{name}: param group gives {base}={self._stored(base, value)} "
                            f"and {ours}={group[ours]}"
                        )
                    group[ours] = value[index]
                if not isinstance(group[base], (tuple, list)) and base not in self._renames():
                    group[base] = self._stored(base, value)
                # else kept as given, as torch keeps it: a tensor item changed in place later
                # changes the rule's value at the next step, as torch reads it then
            else:  # the defaults' (torch's add_param_group put it there), unless names differ
                built = self._alias_from_names(base, items, group)
                if base not in group or not same(group[base], built):
                    group[base] = built
        self._seen[id(group)] = (group, self._snapshot(group))

    def _check_saved_aliases(self, saved: dict[str, Any]) -> None:
        """A loaded group: ``betas`` (filled in when absent) must agree with beta1/beta2."""
        for base, items in self._aliases().items():
            if base not in saved:
                saved[base] = self._alias_from_names(base, items, saved)
            value = self._alias_value(base, items, saved[base])
            for index, ours in items:
                if not same(value[index], saved[ours]):
                    raise ValueError(
                        f"{type(self).__name__}.load_state_dict: group has "
                        f"{base}={self._stored(base, value)} but {ours}={saved[ours]}"
                    )
            saved[base] = self._stored(base, value)

    def _sync_aliases(self, group: dict[str, Any]) -> None:
        """Bring ``betas`` and beta1/beta2 together: the one changed since the last sync wins."""
        self._apply_aliases(group, self._alias_updates(group))

    def _apply_aliases(self, group: dict[str, Any], updates: dict[str, Any]) -> None:
        group.update(updates)
        if self._aliases():
            if id(group) not in self._seen:  # a dict put in another's place: it replaces it
                params = group.get("params")
                for key, (other, _) in list(self._seen.items()):
                    if params is not None and other.get("params") is params:
                        del self._seen[key]
            self._seen[id(group)] = (group, self._snapshot(group))

    def _remember_groups(self) -> None:
        """Every param group's aliases and the defaults' as they are now (the last sync)."""
        self._seen = {id(g): (g, self._snapshot(g)) for g in [*self.param_groups, self.defaults]}

    def _last_seen(self, group: dict[str, Any]) -> dict[str, Any] | None:
        """``group``'s aliases at its last sync: its own, or, for a copy of a group put in its
        place (``param_groups[0] = {**group, "betas": ...}``: the same params list), that
        group's; None for a dict never seen."""
        seen = self._seen.get(id(group))
        if seen is not None and seen[0] is group:
            return seen[1]
        params = group.get("params")
        for other, snapshot in reversed(self._seen.values()):
            if params is not None and other.get("params") is params:
                return snapshot
        return None

    def _alias_updates(self, group: dict[str, Any]) -> dict[str, Any]:
        """What syncing ``group``'s aliases would write (the group is not changed): ``step``
        checks the synced values first and writes them only when the whole step is accepted.
        Of ``betas`` and beta1/beta2 the one changed since the last sync wins; a name the
        group lacks (a group of torch's keys alone) is taken from ``betas``; a group never
        seen whose two disagree is refused (nothing tells which was set)."""
        aliases = self._aliases()
        updates: dict[str, Any] = {}
        if not aliases:
            return updates
        name = type(self).__name__
        old = self._last_seen(group)
        for base, items in aliases.items():
            if base not in group:
                updates[base] = self._alias_from_names(base, items, group)
                continue
            value = self._alias_value(base, items, group[base])
            if old is None:
                for index, ours in items:
                    if ours in group and not same(group[ours], value[index]):
                        raise ValueError(
                            f"{name}: param group has {base}={self._stored(base, value)} and "
                            f"{ours}={group[ours]} (a group this optimizer has not synced: "
                            "set one of them)"
                        )
            old_alias, old_names = old[base] if old else (value, tuple(value[i] for i, _ in items))
            merged, renamed = list(value), False
            for k, (index, ours) in enumerate(items):
                if ours not in group:  # torch's keys alone: the name follows the tuple
                    updates[ours] = value[index]
                    continue
                alias_changed = not same(value[index], old_alias[index])
                name_changed = not same(group[ours], old_names[k])
                if alias_changed and name_changed and not same(value[index], group[ours]):
                    item = base if base in self._renames() else f"{base}[{index}]"
                    raise ValueError(
                        f"{name}: {item} was set to {value[index]} and {ours} to "
                        f"{group[ours]} since the last step; set one of them"
                    )
                if alias_changed:
                    updates[ours] = value[index]
                elif not same(group[ours], value[index]):
                    merged[index], renamed = group[ours], True
            if renamed:  # a name set since the last sync: the tuple follows it
                updates[base] = self._stored(base, merged)
        return updates
