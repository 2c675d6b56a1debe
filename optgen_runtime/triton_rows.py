"""Per-tensor host scalars of a multi-tensor step as float32 rows (``ScalarRows``): computed
once per distinct step count, host states or sums, rounded as Triton rounds a float argument."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import chain
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np
import torch

from optgen_runtime.common import (
    host_state_values,
)
from optgen_runtime.scalars import (
    check_scalars,
    computed,
    computed_each,
    distinct,
    distinct_counts,
    step_scalar_rows,
    sum_scalar_rows,
)
from optgen_runtime.triton_launch import padded


def float32_rows(rows: Sequence[Sequence[float]], checked: bool = False) -> np.ndarray:
    """Rows of host scalars as a float32 array, each double rounded to nearest (even),
    overflowing to inf: exactly what Triton's launcher does to a Python float passed as an fp32
    argument (a C ``(float)`` cast; the interpreter casts with NumPy), so a kernel reading the
    table computes what the single-tensor kernel computes with the same scalars as arguments.
    A rule without host scalars gets one 0 per row (a table is never empty). ``checked``: every
    finite value passed ``check_scalars`` for float32, so none overflows (no warning to mute)."""
    array = None
    if rows and len(rows[0]) and all(type(x) is float for x in rows[0]):
        try:  # rows of Python floats (host code's results): converted in one C loop
            array = np.array(rows, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):  # ragged, or another kind of number
            array = None
        if array is not None and array.ndim != 2:
            array = None
    if array is None:
        array = np.array([[float(x) for x in row] or [0.0] for row in rows], dtype=np.float64)
    if checked:
        return array.astype(np.float32)
    with np.errstate(over="ignore"):
        return array.astype(np.float32)


def _padded_table(values: np.ndarray) -> torch.Tensor:
    """A flat float32 table padded with zeros to 16 bytes."""
    return torch.from_numpy(_padded_rows(values, np.arange(len(values))))


def _padded_rows(rows: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``rows[index]`` flat, float32, padded with zeros to 16 bytes (one row broadcast where
    there is one: no gather, ``index`` only counted)."""
    n, width = len(index), rows.shape[1]
    table = np.empty(padded(n * width, 4), dtype=np.float32)
    table[n * width :] = 0
    if len(rows) == 1:
        table[: n * width].reshape(n, width)[:] = rows[0]
    else:
        table[: n * width].reshape(n, width)[:] = rows[index]
    return table


class ScalarRows(NamedTuple):
    """The host scalars of a multi-tensor step: each distinct row once (``rows``, float32, as
    :func:`float32_rows` rounds), and the row of each tensor (``index``): the tensors of a step
    mostly share one row, which is then computed and converted once and broadcast."""

    rows: np.ndarray  # float32, (distinct rows, scalars per row)
    index: np.ndarray  # int64, one per tensor

    @classmethod
    def of(cls, rows: Sequence[Sequence[float]]) -> ScalarRows:
        """One row per tensor; the rows of tensors at one step count are one object
        (``computed_each``): each distinct object converted once (by identity: 0.0 and -0.0, or
        two NaNs, are never merged)."""
        ids = list(map(id, rows))
        first = dict.fromkeys(ids)  # distinct objects, in order
        where = {k: i for i, k in enumerate(first)}
        distinct_rows = dict(zip(ids, rows, strict=True))
        index = np.fromiter(map(where.__getitem__, ids), dtype=np.int64, count=len(ids))
        return cls(float32_rows([distinct_rows[k] for k in first]), index)

    def table(self, members: np.ndarray | None = None) -> torch.Tensor:
        """The flat float32 table of the tensors ``members`` (all: None), one row each, padded
        to 16 bytes."""
        return torch.from_numpy(self.padded(members))

    def padded(self, members: np.ndarray | None = None) -> np.ndarray:
        """:meth:`table` as a NumPy array."""
        if len(self.rows) == 1:  # broadcast: no gather
            return _padded_rows(self.rows, self.index if members is None else members)
        index = self.index if members is None else self.index[members]
        return _padded_rows(self.rows, index)


def scalar_table(rows: Sequence[Sequence[float]]) -> torch.Tensor:
    """Host scalars as a flat float32 table, one row per tensor, padded to 16 bytes
    (:class:`ScalarRows`: rounded as Triton rounds a float kernel argument)."""
    return ScalarRows.of(rows).table()


def step_rows(
    rule: str,
    host_code: Any,
    ts: Sequence[int],
    legend: dict[str, str],
    /,
    **kwargs: Any,
) -> ScalarRows:
    """The host scalars of a multi-tensor step whose host code depends on the tensor only
    through its step count (no host states, sums or sizes): ``host_code(t, **kwargs)`` computed
    and range-checked (``check_scalars`` against ``legend``) once per distinct step count, in
    order of first appearance (the errors ``computed_each`` gives), and broadcast: no Python
    row per tensor."""
    distinct_ts, index = distinct_counts(ts)
    results = [computed(rule, host_code, t, **kwargs)[0] for t in distinct_ts]
    for scalars in results:
        check_scalars(rule, legend, scalars, torch.float32)
    return ScalarRows(float32_rows(results), index)


def host_columns(rule: str, states: Sequence[Any], names: Sequence[str]) -> list[list[float]]:
    """The host states of a multi-tensor step, one column of floats per name, read once: each a
    finite float (or int) in every state dict, at C speed; anything else goes through
    ``host_state_values`` tensor by tensor, which names the first bad one."""
    try:
        columns = [list(map(itemgetter(name), states)) for name in names]
        kinds = set(map(type, chain.from_iterable(columns)))
        if set(map(type, states)) == {dict} and not kinds - {float, int}:
            columns = [col if kinds == {float} else list(map(float, col)) for col in columns]
            if all(math.isfinite(math.fsum(col)) for col in columns):  # inf/NaN reach the sum
                return columns
    except (KeyError, TypeError, OverflowError, ValueError):  # fsum: inf + -inf, overflow
        pass
    each = [host_state_values(rule, s, tuple(names)) for s in states]
    return [[h[name] for h in each] for name in names]


def host_rows(
    rule: str,
    host_code: Any,
    ts: Sequence[int],
    names: Sequence[str],
    columns: Sequence[Sequence[float]],
    legend: dict[str, str],
    /,
    **kwargs: Any,
) -> tuple[ScalarRows, list[dict[str, float]]]:
    """The host scalars and new host states of a multi-tensor step whose host code takes the
    step count and the host states (``columns``, :func:`host_columns`): computed once per
    distinct (t, host states), then range-checked (what ``computed_each`` and the checks of
    each ``distinct`` result give, in that order), with no Python row per tensor. A zero among
    the host states (0.0 and -0.0 are one key, and the host code may tell them apart) goes
    through ``computed_each``. Returns the rows and each tensor's new host states."""
    if any(0.0 in column for column in columns):
        each = [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
        new = computed_each(rule, host_code, ts, each, **kwargs)
        for scalars, _ in distinct(new):
            check_scalars(rule, legend, scalars, torch.float32)
        return ScalarRows.of([scalars for scalars, _ in new]), [h for _, h in new]
    keys = list(zip(ts, *columns, strict=True))
    where = {key: k for k, key in enumerate(dict.fromkeys(keys))}
    results = [
        computed(rule, host_code, key[0], **kwargs, **dict(zip(names, key[1:], strict=True)))
        for key in where
    ]
    for scalars, _ in results:
        check_scalars(rule, legend, scalars, torch.float32)
    index = list(map(where.__getitem__, keys))
    new = [host_new for _, host_new in results]
    rows = ScalarRows(float32_rows([scalars for scalars, _ in results]), np.array(index, np.int64))
    return rows, list(map(new.__getitem__, index))


def sum_rows(
    rule: str,
    host_code: Any,
    rows_code: Any,
    ts: Sequence[int],
    names: Sequence[str],
    sums: np.ndarray,
    legend: dict[str, str],
    /,
    **kwargs: Any,
) -> ScalarRows:
    """The host scalars of a multi-tensor step whose host code takes the step count and each
    tensor's sums (``sums``: float64, a row per tensor, a column per name in ``names``;
    :meth:`ChunkTable.reduce_rows`), range-checked for float32: ``scalars.sum_scalar_rows``
    (all at once by ``rows_code``, the rule's ``host_scalars_rows``, where it can; else tensor
    by tensor, raising the errors those name), rounded as :func:`float32_rows` rounds."""
    values = sum_scalar_rows(
        rule, host_code, rows_code, ts, names, sums, legend, torch.float32, **kwargs
    )
    return ScalarRows(_float32(values), np.arange(len(ts), dtype=np.int64))


def phase_rows(
    rule: str,
    host_code: Any,
    ts: Sequence[int],
    legend: dict[str, str],
    /,
    **kwargs: Any,
) -> ScalarRows:
    """A reduction phase's scalars when they depend on the step count alone, not on the
    tensor: ``scalars.step_scalar_rows`` for float32 (once per distinct step count, checked),
    broadcast."""
    rows, index = step_scalar_rows(rule, host_code, ts, legend, torch.float32, **kwargs)
    return ScalarRows(_float32(rows), index)


def _float32(values: np.ndarray) -> np.ndarray:
    """Checked float64 rows of scalars as :func:`float32_rows` rounds them (one 0 per row
    where there are no scalars: a table is never empty)."""
    if not values.shape[1]:
        return np.zeros((len(values), 1), dtype=np.float32)
    with np.errstate(over="ignore"):  # checked: only a NaN or inf the checks let through
        return values.astype(np.float32)
