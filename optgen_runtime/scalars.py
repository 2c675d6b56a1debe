"""The range check on kernel scalars: a hyperparameter legal in double precision can make a host
scalar that float32 (the kernels' compute type, and float32 NumPy weights) cannot hold.

``lr=1e300`` is a legal learning rate; the host computes ``-lr`` in double, and the kernel would
receive ``-inf`` and write infinite weights where float64 weights stay finite. FTRL's ``1 / lr``
at ``lr=1e300`` rounds to 0 in float32 and turns the weights into NaN. A step whose scalar
float32 cannot hold (past its largest value, or a nonzero value that rounds to 0) is refused
before anything is written, naming the scalar, what it is in the spec's terms (the rule's
``SCALARS``) and its value.
"""

from __future__ import annotations

import linecache
import math
import struct
import traceback
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")


def computed(rule: str, host_code: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``host_code(*args, **kwargs)`` (a rule's ``host_scalars`` or ``reduction_scalars``), with
    an arithmetic failure of the host code (a division by zero, a square root of a negative
    number, an overflowing power) turned into a ValueError naming the rule and the failing line
    of host code; nothing has been written when it is raised."""
    try:
        return host_code(*args, **kwargs)
    except (ArithmeticError, ValueError) as error:
        frame = traceback.extract_tb(error.__traceback__)[-1]
        spec = _spec_line(frame.filename, frame.lineno or 0)
        raise ValueError(
            f"{rule}: with these hyperparameters (and sums) the host cannot compute the kernel "
            f"scalars: {error} in `{(frame.line or '').strip()}` ({frame.filename}:{frame.lineno}"
            f"{f'; from {spec}' if spec else ''})"
        ) from error


def _spec_line(filename: str, lineno: int) -> str | None:
    """The spec equation a generated host line computes for: the ``# specs/...`` comment the
    generator writes above each run of host lines from one equation (None where there is none:
    the function's start comes first)."""
    for number in range(lineno - 1, 0, -1):
        line = linecache.getline(filename, number).strip()
        if line.startswith("# specs/"):
            return line[2:]
        if line.startswith(("def ", '"""')) or not line:
            return None
    return None


# struct's IEEE formats by width: packing rounds to nearest even, as NumPy's casts do, and
# raises OverflowError where the value rounds past the largest finite one (no warning state to
# save and restore: this runs for every step)
_FORMATS = {4: "f", 2: "e"}
# Magnitudes each width holds without a doubt (its smallest subnormal to its largest finite
# value): a value in range, or zero, skips the packing (most scalars of most steps).
_HELD = {4: (2.0**-149, 3.4028234663852886e38), 2: (2.0**-24, 65504.0)}
_DTYPES: dict[Any, np.dtype] = {}


def _numpy_dtype(dtype: Any) -> np.dtype:
    """A NumPy or torch floating dtype as a NumPy dtype (memoised)."""
    found = _DTYPES.get(dtype)
    if found is None:
        if isinstance(dtype, torch.dtype):
            found = torch.empty((), dtype=dtype).numpy().dtype
        else:
            found = np.dtype(dtype)
        _DTYPES[dtype] = found
    return found


def check_scalars(
    rule: str, legend: Mapping[str, str], values: Sequence[float], dtype: Any
) -> Sequence[float]:
    """``values`` (the scalars ``legend`` names, in its order) unchanged when ``dtype`` (a NumPy
    or torch floating dtype) holds each finite one; else a ValueError naming the first it cannot.
    """
    dtype = _numpy_dtype(dtype)
    form = _FORMATS.get(dtype.itemsize)
    if form is None:
        return values  # float64: a finite double holds itself
    low, high = _HELD[dtype.itemsize]
    for (name, what), value in zip(legend.items(), values, strict=True):
        if low <= abs(value) <= high or value == 0.0:
            continue
        if not math.isfinite(value):
            continue  # an infinite clamp bound, or a NaN the caller's checks let through
        try:
            held = struct.unpack(form, struct.pack(form, value))[0]
        except OverflowError:
            held = math.inf
        if math.isinf(held) or (held == 0.0 and value != 0.0):
            why = "past its largest value" if math.isinf(held) else "rounds to 0"
            raise ValueError(
                f"{rule}: with these hyperparameters the kernel scalar {name} ({what}) is "
                f"{value:.6g}, which {dtype.name} cannot hold ({why}): the step would not "
                "compute the rule. Use hyperparameters in range (float64 NumPy weights "
                "take them)."
            )
    return values


def checked_scalar(rule: str, name: str, what: str, value: float, dtype: Any) -> float:
    """``value`` unchanged when ``dtype`` holds it (:func:`check_scalars` of one scalar, ``what``
    its host code): the matrix rules' modules check each host scalar so as they compute it,
    before the step writes anything."""
    check_scalars(rule, {name: what}, (value,), dtype)
    return value


def check_scalars_each(
    rule: str,
    legend: Mapping[str, str],
    results: Sequence[tuple[Sequence[float], Mapping[str, float]]],
    dtype: Any,
    host_states: bool = False,
) -> None:
    """:func:`check_scalars` of every (scalars, new host states) pair of a multi-tensor step
    (``distinct`` of :func:`computed_each`'s results), and :func:`check_host_states` of each
    when ``host_states``: the first error of checking one pair after the other, in order, but
    with the range check made once over all rows in NumPy (a step over GPT-2's 148 tensors has
    148 distinct rows of scalars when each tensor's sums enter them)."""
    dtype = _numpy_dtype(dtype)
    bad = len(results)
    if dtype.itemsize in _FORMATS and results:
        try:
            values = np.array([row for row, _ in results], dtype=np.float64)
        except (OverflowError, TypeError, ValueError):  # the one-by-one checks name it
            values = None
        bad = 0 if values is None else first_refused_row(values, dtype)
    if host_states:
        for _, new in results[:bad]:
            check_host_states(rule, new)
    for row, new in results[bad:]:  # from the first refused row: one by one, raising there
        if host_states:
            check_host_states(rule, new)
        check_scalars(rule, legend, row, dtype)


def first_refused_row(values: np.ndarray, dtype: Any) -> int:
    """The first row of ``values`` (float64, a row of scalars per tensor) that
    :func:`check_scalars` refuses for ``dtype``, by one NumPy pass; ``len(values)`` if none."""
    dtype = _numpy_dtype(dtype)
    if dtype.itemsize not in _FORMATS or not values.size:
        return len(values)
    with np.errstate(over="ignore"):
        held = values.astype(dtype)
    finite = np.isfinite(values)
    wrong = finite & (np.isinf(held) | ((held == 0) & (values != 0)))
    rows = np.flatnonzero(wrong.any(axis=1))
    return int(rows[0]) if len(rows) else len(values)


def check_host_states(rule: str, new: Mapping[str, float]) -> Mapping[str, float]:
    """The new host states, unchanged when finite; else a ValueError naming the first that is
    not, raised before the step writes anything (a state dict's host states stay finite numbers:
    a NaN or inf in the step's sums, from a NaN gradient, say, would otherwise be stored)."""
    for name, value in new.items():
        if not math.isfinite(value):
            raise ValueError(
                f"{rule}: this step would make host state {name} {value!r} (a NaN or inf in the "
                "gradients or the step's reductions); refused before anything is written"
            )
    return new


def computed_each(
    rule: str,
    host_code: Callable[..., T],
    ts: Sequence[int],
    each: Sequence[Mapping[str, float]],
    **kwargs: Any,
) -> list[T]:
    """``computed(rule, host_code, ts[j], **kwargs, **each[j])`` for every tensor j of a
    multi-tensor step, computed once per distinct (step count, per-tensor values): the tensors
    of a step mostly share both, and then share one result object (``distinct`` lists each
    once; ``triton_rows.ScalarRows.of`` converts each once). A rule whose host code takes the
    step count alone skips the per-tensor keys: ``triton_rows.step_rows``."""
    return _each(rule, host_code, ts, each, None, kwargs)


def checked_each(
    rule: str,
    legend: Mapping[str, str],
    host_code: Callable[..., Sequence[float]],
    ts: Sequence[int],
    each: Sequence[Mapping[str, float]],
    /,
    **kwargs: Any,
) -> list[Sequence[float]]:
    """:func:`computed_each` of host code that returns the scalars ``legend`` names (a rule's
    ``reduction_scalars``), each distinct result range-checked for float32 (``check_scalars``)
    as soon as it is computed: the errors, in the order, of computing and checking one tensor
    after the other, with the work done once per distinct step count and values."""
    return _each(
        rule, host_code, ts, each, lambda v: check_scalars(rule, legend, v, np.float32), kwargs
    )


def _each(
    rule: str,
    host_code: Callable[..., T],
    ts: Sequence[int],
    each: Sequence[Mapping[str, float]],
    check: Callable[[T], object] | None,
    kwargs: dict[str, Any],
) -> list[T]:
    memo: dict[tuple, T] = {}
    out = []
    bound = partial(host_code, **kwargs)  # the hyperparameters, bound once for every tensor
    sign = math.copysign
    for t, extra in zip(ts, each, strict=True):
        # the sign too: 0.0 == -0.0, and the host code may tell them apart
        key = (t, *extra.items(), *[sign(1.0, v) for v in extra.values()])
        found = memo.get(key)
        if found is None:
            try:
                found = memo[key] = bound(t, **extra)
            except (ArithmeticError, ValueError):  # again, for computed's error naming the line
                computed(rule, host_code, t, **kwargs, **extra)
                raise  # (not reached: the same call raises the same way)
            if check is not None:
                check(found)
        out.append(found)
    return out


def sum_scalar_rows(
    rule: str,
    host_code: Callable[..., tuple[Sequence[float], Mapping[str, float]]],
    rows_code: Callable[..., np.ndarray] | None,
    ts: Sequence[int],
    names: Sequence[str],
    sums: np.ndarray,
    legend: Mapping[str, str],
    dtype: Any,
    /,
    **kwargs: Any,
) -> np.ndarray:
    """The kernel scalars of many tensors whose host code takes the step count and each
    tensor's sums (``sums``: float64, a row per tensor, a column per name in ``names``), one
    float64 row per tensor, every one range-checked for ``dtype`` (:func:`check_scalars`).

    ``rows_code`` (the rule's ``host_scalars_rows``; ``optgen_runtime.columns``) computes them
    all at once, to the bits of ``host_code`` row by row: taken when the tensors share one step
    count, every sum is finite, NumPy flags nothing (a division by zero, a square root of a
    negative number, an overflow: where Python would raise, or give an infinity;
    ``rows_where`` computes no branch a row does not take) and ``dtype`` holds every scalar.
    Otherwise, or without ``rows_code``, the rows are computed tensor by tensor
    (:func:`computed_each`, once per distinct step count and sums) and checked
    (:func:`check_scalars_each`), which raise the errors they name: the same rows, or the same
    refusal, either way."""
    n = len(ts)
    if rows_code is not None and n and ts.count(ts[0]) == n and np.isfinite(sums).all():
        columns = {name: sums[:, k] for k, name in enumerate(names)}
        try:
            with np.errstate(divide="raise", over="raise", invalid="raise", under="ignore"):
                values = rows_code(ts[0], **kwargs, **columns)
        except (ArithmeticError, ValueError):  # FloatingPointError: tensor by tensor
            values = None
        if values is not None and first_refused_row(values, dtype) == n:
            return values
    each = [dict(zip(names, row, strict=True)) for row in sums.tolist()]
    new = computed_each(rule, host_code, ts, each, **kwargs)
    check_scalars_each(rule, legend, distinct(new), dtype)
    return np.array([scalars for scalars, _ in new], dtype=np.float64).reshape(n, len(legend))


def step_scalar_rows(
    rule: str,
    host_code: Callable[..., Sequence[float]],
    ts: Sequence[int],
    legend: Mapping[str, str],
    dtype: Any,
    /,
    **kwargs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Scalars that depend on the step count alone (a reduction phase's ``reduction_scalars``
    without host states or earlier sums): computed and range-checked for ``dtype`` once per
    distinct step count, in order of first appearance (the errors :func:`checked_each` gives).
    Returns the distinct rows (float64) and each tensor's row index (int64)."""
    distinct_ts, index = distinct_counts(ts)
    results = [
        check_scalars(rule, legend, computed(rule, host_code, t, **kwargs), dtype)
        for t in distinct_ts
    ]
    return np.array(results, dtype=np.float64).reshape(len(results), len(legend)), index


def distinct_counts(ts: Sequence[int]) -> tuple[list[int], np.ndarray]:
    """The distinct step counts of a multi-tensor step, in order of first appearance, and each
    tensor's index among them (int64)."""
    distinct_ts = list(dict.fromkeys(ts))
    if len(distinct_ts) == 1:
        return distinct_ts, np.zeros(len(ts), dtype=np.int64)
    where = {t: k for k, t in enumerate(distinct_ts)}
    return distinct_ts, np.fromiter(map(where.__getitem__, ts), dtype=np.int64, count=len(ts))


def distinct(results: Sequence[T]) -> list[T]:
    """Each result object of :func:`computed_each` once, in order (for the range checks)."""
    return list({id(r): r for r in results}.values())
