"""The host scalars of the fast step (:mod:`optgen_runtime.optim.fast`): computed every step,
range-checked and made into the module's tables only when their values differ from the last
step's, to the bit (``step_tables`` of the numba or Triton module that runs); or, for a module
that takes no tables, checked as the full step checks them (``_check_scalar_rows``)."""

from __future__ import annotations

import struct
from types import ModuleType
from typing import Any

import numpy as np

from optgen_runtime.common import host_state_values
from optgen_runtime.optim.plan import Planning
from optgen_runtime.optim.plan_data import Group
from optgen_runtime.scalars import check_scalars, computed
from optgen_runtime.triton_rows import ScalarRows, float32_rows


class FastScalars(Planning):
    """The fast step's host-scalar tables and checks (see the module docstring)."""

    def _tables(
        self, part: Group, module: ModuleType, resolved: dict[str, float], counts: Any
    ) -> list[np.ndarray]:
        """The group's tables of host scalars for the module's ``step_tables`` (per dtype group
        of its buffers, one row per tensor), computed and range-checked as
        ``_check_scalar_rows`` and the module's ``_run`` do, errors naming the class; the last
        step's tables where the same module takes the same values, to the bit (-0.0 is not 0.0).
        ``module``: the numba module that runs at ``resolved`` (``_tabled``)."""
        name = type(self).__name__
        assert part.buffers is not None
        if type(counts) is int:
            value = computed(name, module.host_scalars, counts, **resolved)[0]
            key = _key(module, value)
            if key is not None and key == part.table_key:
                return part.tables
            values, which = [value], None
        else:
            firsts: dict[int, int] = {}
            which = [firsts.setdefault(t, len(firsts)) for t in counts]
            values = [computed(name, module.host_scalars, t, **resolved)[0] for t in firsts]
            key = None
        tables = []
        for indices, _, _, dtype in part.buffers.groups:
            rows = [check_scalars(name, module.SCALARS, v, dtype.type) for v in values]
            table = np.array(rows, dtype=dtype).reshape(len(rows), -1)
            if which is None and len(indices) > 1:
                table = np.repeat(table, len(indices), axis=0)
            elif which is not None:
                table = table[[which[j] for j in indices]]
            tables.append(table)
        if key is not None:
            part.table_key, part.tables = key, tables
        return tables

    def _rows(
        self, part: Group, module: ModuleType, resolved: dict[str, float], counts: Any
    ) -> ScalarRows:
        """The group's host scalars for the Triton module's ``step_tables``: computed and
        range-checked for float32 (the kernels' compute type) as ``_check_scalar_rows`` and the
        module's ``step_rows`` do, errors naming the class, once per distinct step count, rounded
        as ``step_rows`` rounds them; the last step's rows where the same module takes the same
        values, to the bit. ``module``: the Triton module that runs at ``resolved``."""
        name = type(self).__name__
        if type(counts) is int:
            value = computed(name, module.host_scalars, counts, **resolved)[0]
            key = _key(module, value)
            if key is not None and key == part.table_key:
                return part.tables
            check_scalars(name, module.SCALARS, value, np.float32)
            rows = ScalarRows(float32_rows([value], True), np.zeros(len(part.states), np.int64))
            if key is not None:
                part.table_key, part.tables = key, rows
            return rows
        firsts: dict[int, int] = {}
        which = [firsts.setdefault(t, len(firsts)) for t in counts]
        values = []
        for t in firsts:
            value = computed(name, module.host_scalars, t, **resolved)[0]
            values.append(check_scalars(name, module.SCALARS, value, np.float32))
        return ScalarRows(float32_rows(values, True), np.array(which, dtype=np.int64))

    def _check_fast_scalars(self, resolved: dict[str, float], ts: list[int], part: Group) -> None:
        """The group's kernel scalars checked as the full step checks them
        (``_check_scalar_rows``): rows of distinct (step count, dtype) where there are no host
        states, else one per tensor with its host states (read and checked here)."""
        name, host = type(self).__name__, self.META.HOST_STATES
        if host:
            rows = [
                (t, dtype, host_state_values(name, s, host), {})
                for t, dtype, s in zip(ts, part.dtypes, part.states, strict=True)
            ]
        else:
            rows = [(t, dtype, {}, {}) for t, dtype in set(zip(ts, part.dtypes, strict=True))]
        self._check_scalar_rows(resolved, rows, {})


def _key(module: ModuleType, value: Any) -> tuple[Any, ...] | None:
    """What a table of host scalars is kept under: the module and the values, to the bit
    (-0.0 is not 0.0; a NaN never equals itself, so its table is never taken again)."""
    try:
        return (module, *value, struct.pack(f"{len(value)}d", *value))
    except (struct.error, OverflowError, TypeError):
        return None
