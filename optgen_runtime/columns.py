"""Host code over columns: a rule's ``host_scalars_rows`` (generated beside ``host_scalars``
where the spec allows it) computes the kernel scalars of many tensors at one step count at once,
each per-tensor sum a float64 NumPy column with one entry per tensor.

It computes what ``host_scalars`` computes tensor by tensor, to the bit: the expressions that
depend on the sums are printed with IEEE-exact NumPy operations only (``+ - * /``, ``np.sqrt``,
comparisons, the NaN-propagating :func:`rows_max` and :func:`rows_min`, :func:`rows_where` for
a Piecewise or a guarded value), the rest exactly as ``host_scalars`` prints them (Python
floats, once). A rule whose sums enter anything else (a power, ``exp``, ``log``) gets no such
function. Where Python would raise (a division by zero, a square root of a negative number)
NumPy sets a floating-point flag instead: the caller (``scalars.sum_scalar_rows``) computes
under ``np.errstate`` raising on it, and goes tensor by tensor through ``host_scalars`` then,
which raises the error ``computed`` names. :func:`rows_where` computes each branch on the rows
that take it alone, as Python's conditional does, so a branch a row does not take flags
nothing (LAMB's trust ratio r1 / r2 where the update is zero and the ratio is 1). Imports NumPy
only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def rows_max(*values: Any) -> Any:
    """``common.host_max`` over columns (Python floats broadcast): NaN where any value is NaN,
    else the first largest, as ``host_max`` chooses (between 0.0 and -0.0: the first)."""
    return _first_by(np.greater, values)


def rows_min(*values: Any) -> Any:
    """``common.host_min`` over columns: NaN where any value is NaN, else the first smallest."""
    return _first_by(np.less, values)


def rows_f32(values: Any) -> Any:
    """``common.host_f32`` over a column: each entry rounded to the nearest float32 (NumPy's
    cast, ties to even, as the struct packing ``host_f32`` uses), a finite entry float32 cannot
    hold (past its range; nonzero and rounding to 0) kept as it is."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore", under="ignore"):
        held = values.astype(np.float32).astype(np.float64)
    kept = (np.isinf(held) & np.isfinite(values)) | ((held == 0.0) & (values != 0.0))
    return np.where(kept, values, held)


def _first_by(beats: Any, values: Sequence[Any]) -> Any:
    """Per entry, the first of ``values`` no later one ``beats`` (a later value replaces the
    kept one only when strictly beyond it: max's and min's choice), or NaN where any is NaN."""
    out, nan = values[0], np.isnan(values[0])
    for v in values[1:]:
        out = np.where(beats(v, out), v, out)
        nan = nan | np.isnan(v)
    return np.where(nan, np.nan, out)


def rows_where(rows: int | np.ndarray, *branches: Callable[[np.ndarray], Any]) -> np.ndarray:
    """A Piecewise over columns (float64, one entry per row), each row computed as Python's
    conditional expression computes it for that tensor alone. ``branches``: condition, value,
    condition, value, ..., then the value where none holds; each a function of the indices of
    the rows it runs on (into the columns; it returns a column over them, or one value for all)
    and called only on those: a condition on the rows no earlier condition took, a value on the
    rows its condition took. ``rows``: the number of rows (all), or the indices an enclosing
    ``rows_where`` branch runs on."""
    index = np.arange(rows) if isinstance(rows, int) else rows
    out = np.empty(len(index), dtype=np.float64)
    left = np.arange(len(index))  # the positions (in index) no condition took yet
    for k in range(0, len(branches) - 1, 2):
        here = index[left]
        taken = np.broadcast_to(np.asarray(branches[k](here), dtype=bool), here.shape)
        if taken.any():
            out[left[taken]] = branches[k + 1](here[taken])
            left = left[~taken]
            if not len(left):
                return out
    out[left] = branches[-1](index[left])
    return out


def scalar_columns(n: int, values: Sequence[Any]) -> np.ndarray:
    """The kernel scalars of ``n`` tensors as a float64 array, one row per tensor: each value a
    column (one entry per tensor) or a number every row shares (a bool as 1.0 or 0.0)."""
    out = np.empty((n, len(values)), dtype=np.float64)
    for i, value in enumerate(values):
        out[:, i] = value
    return out
