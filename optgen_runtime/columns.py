"""Host code over columns: a rule's ``host_scalars_rows`` (generated beside ``host_scalars``
where the spec allows it) computes the kernel scalars of many tensors at one step count at once,
each per-tensor sum a float64 NumPy column with one entry per tensor.

It computes what ``host_scalars`` computes tensor by tensor, to the bit: the expressions that
depend on the sums are printed with IEEE-exact NumPy operations only (``+ - * /``, ``np.sqrt``,
comparisons, ``np.where`` for a Piecewise, the NaN-propagating :func:`rows_max` and
:func:`rows_min`), the rest exactly as ``host_scalars`` prints them (Python floats, once). A
rule whose sums enter anything else (a power, ``exp``, a guarded let) gets no such function.
Where Python would raise (a division by zero, a square root of a negative number) NumPy sets
a floating-point flag instead: the caller (``triton_support.sum_rows``) computes under
``np.errstate`` raising on it, and goes tensor by tensor through ``host_scalars`` then, which
raises the error ``computed`` names, or gets the value from the branch Python takes. Imports
NumPy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def rows_max(*values: Any) -> Any:
    """``common.host_max`` over columns (Python floats broadcast): NaN where any value is NaN,
    else the first largest, as ``host_max`` chooses (between 0.0 and -0.0: the first)."""
    return _first_by(np.greater, values)


def rows_min(*values: Any) -> Any:
    """``common.host_min`` over columns: NaN where any value is NaN, else the first smallest."""
    return _first_by(np.less, values)


def _first_by(beats: Any, values: Sequence[Any]) -> Any:
    """Per entry, the first of ``values`` no later one ``beats`` (a later value replaces the
    kept one only when strictly beyond it: max's and min's choice), or NaN where any is NaN."""
    out, nan = values[0], np.isnan(values[0])
    for v in values[1:]:
        out = np.where(beats(v, out), v, out)
        nan = nan | np.isnan(v)
    return np.where(nan, np.nan, out)


def scalar_columns(n: int, values: Sequence[Any]) -> np.ndarray:
    """The kernel scalars of ``n`` tensors as a float64 array, one row per tensor: each value a
    column (one entry per tensor) or a number every row shares (a bool as 1.0 or 0.0)."""
    out = np.empty((n, len(values)), dtype=np.float64)
    for i, value in enumerate(values):
        out[:, i] = value
    return out
