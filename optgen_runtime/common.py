"""Checks shared by every generated module (the step count, host states, lists of tensors,
stream and element offsets), the layouts of the compiled loops, matrix sizes and the host
scalars' float32 and NaN-propagating max/min; imports neither torch nor sympy (hyperparameters:
:mod:`optgen_runtime.hyperparams`; variants: :mod:`optgen_runtime.variants`; all-or-nothing
writes: :mod:`optgen_runtime.writes`)."""

from __future__ import annotations

import math
import numbers
import operator
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from optgen_runtime.hyperparams import short_repr

# The largest step count: counts are kept exactly as int64 (the torch classes' state["step"]).
MAX_STEP = 2**63 - 1

# How the compiled CPU loops take a tensor's weight and gradient (``numba_support.Buffers``):
# arrays of its dtype (PLAIN); a bfloat16 weight and gradient as their bits, computed in float32
# (BITS: a module's ``_update_bits``); a float32 master copy as the weight, the bfloat16
# gradient as its bits, the bfloat16 parameter rounded from the master after each chunk's
# update, its address the row's last (MASTER: ``_update_master``, ``round_into``); the same two
# with float16 in place of bfloat16 (HALF_BITS, HALF_MASTER: the same loops on float16 bits).
PLAIN, BITS, MASTER = "plain", "bits", "master"
HALF_BITS, HALF_MASTER = "half bits", "half master"


def check_step_count(rule: str, t: Any) -> int:
    """The step count is an integer in [1, 2**63 - 1] (1 on the first step); a bool, a float
    (even 2.0), NaN or a string is refused with a TypeError, an out-of-range integer with a
    ValueError, each naming the rule."""
    if isinstance(t, bool) or type(t).__name__ == "bool_":
        raise TypeError(f"{rule}: step count t must be an int >= 1, got the bool {t!r}")
    if not isinstance(t, int):
        try:
            t = operator.index(t)
        except TypeError:
            raise TypeError(
                f"{rule}: step count t must be an int >= 1, got {short_repr(t)} "
                f"({type(t).__name__})"
            ) from None
    if t < 1:
        raise ValueError(f"{rule}: step count t must be >= 1 (1 on the first step), got {t}")
    if t > MAX_STEP:
        raise ValueError(
            f"{rule}: step count t={short_repr(t)} is past the largest step count 2**63 - 1"
        )
    return int(t)


def host_state_values(rule: str, state: Any, names: tuple[str, ...]) -> dict[str, float]:
    """The host-side scalar states of a state dict, checked to be finite numbers."""
    if not isinstance(state, Mapping):
        raise TypeError(f"{rule}: state must be a dict, got {type(state).__name__}")
    values = {}
    for name in names:
        if name not in state:
            raise ValueError(f"{rule}: state has no host state {name!r}")
        value = state[name]
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)  # NumPy's float32 too (as a double)
            or not math.isfinite(value)
        ):
            raise ValueError(f"{rule}: host state {name} must be a finite float, got {value!r}")
        values[name] = float(value)
    return values


def of_tensor(rule: str, j: int, error: Exception, n: int) -> Exception:
    """``error``, raised checking tensor ``j`` of a step of ``n`` tensors, with the tensor named
    (``adam: tensor 2: grad dtype must be ...``); ``error`` itself for one tensor, or when its
    type takes no plain message."""
    if n == 1:
        return error
    message = str(error)
    head = f"{rule}: "
    named = f"{head}tensor {j}: {message.removeprefix(head)}"
    try:
        renamed = type(error)(named)
    except Exception:
        return error
    return renamed.with_traceback(error.__traceback__)


def each_tensor(
    rule: str, check: Callable[..., Any], weights: Sequence[Any], *columns: Sequence[Any]
) -> list[Any]:
    """``[check(w, *others) for each tensor]`` (``columns``: the grads, states, ...), a refusal
    of one of several naming its tensor (:func:`of_tensor`)."""
    out, j = [], 0
    try:
        for j in range(len(weights)):
            out.append(check(weights[j], *(c[j] for c in columns)))
    except (TypeError, ValueError) as error:
        raise of_tensor(rule, j, error, len(weights)) from None
    return out


def check_lists(rule: str, weights: Any, grads: Any, states: Any) -> None:
    """A multi-tensor step's three lists (or tuples): one entry per tensor, as many of each."""
    for name, value in (("weights", weights), ("grads", grads), ("states", states)):
        if not isinstance(value, (list, tuple)):
            raise TypeError(
                f"{rule}: step_multi takes {name} as a list (one per tensor), got "
                f"{type(value).__name__}"
            )
    if not len(weights) == len(grads) == len(states):
        counts = f"{len(weights)} weights, {len(grads)} grads, {len(states)} states"
        raise ValueError(f"{rule}: {counts}")


def step_counts(rule: str, t: Any, n: int) -> list[int]:
    """Per-tensor step counts of a multi-tensor step: one int for all, or a sequence of ``n``
    (a list, a tuple, or a 1-D NumPy array or tensor of them)."""
    if getattr(t, "ndim", None) == 1 and hasattr(t, "tolist"):
        t = t.tolist()
    if isinstance(t, Sequence) and not isinstance(t, str):
        if len(t) != n:
            raise ValueError(f"{rule}: {len(t)} step counts for {n} tensors")
        if n and set(map(type, t)) == {int} and 1 <= min(t) and max(t) <= MAX_STEP:
            return list(t)  # plain ints in range: what check_step_count returns, at C speed
        return [check_step_count(rule, x) for x in t]
    return [check_step_count(rule, t)] * n


def stream_indices(rule: str, stream_ids: Any, n: int) -> list[int]:
    """Per-tensor noise stream indices (ints >= 0) of a multi-tensor step; ``None``: 0..n-1."""
    if stream_ids is None:
        return list(range(n))
    if not isinstance(stream_ids, Sequence) or len(stream_ids) != n:
        raise ValueError(f"{rule}: stream_ids must be a sequence of {n} ints, got {stream_ids!r}")
    if n and set(map(type, stream_ids)) == {int} and min(stream_ids) >= 0:
        return list(stream_ids)  # plain ints >= 0: what the loop below returns, at C speed
    out = []
    for k in stream_ids:
        try:
            index = -1 if isinstance(k, bool) else operator.index(k)
        except TypeError:
            index = -1
        if index < 0:
            raise ValueError(f"{rule}: stream id {k!r} is not an int >= 0")
        out.append(index)
    return out


# ---------------------------------------------------------------------------------- matrices
def matrix_dims(shape: Sequence[int]) -> tuple[int, int, int]:
    """A weight of this shape viewed as (batch, rows, cols): its last two dims are the matrix,
    the others the batch; a 1-D weight is one row, a 0-D weight one element."""
    dims = [1, 1, *shape]
    batch = 1
    for n in dims[:-2]:
        batch *= int(n)
    return batch, int(dims[-2]), int(dims[-1])


def vector_shape(shape: Sequence[int], axis: int) -> tuple[int, ...]:
    """The shape of a state of one value per row (``axis=-1``: the weight's shape without its
    last dim) or per column (``axis=-2``: without the second-to-last); 1-D: one row."""
    shape = tuple(int(n) for n in shape)
    if axis == -1:
        return shape[:-1] if len(shape) >= 2 else (1,)
    return shape[:-2] + shape[-1:] if len(shape) >= 2 else shape[-1:] or (1,)


def matrix_sizes(shape: Sequence[int], names: tuple[str, ...]) -> dict[str, int]:
    """The per-tensor sizes a rule's host code takes (``SIZES``), for a weight of this shape."""
    batch, rows, cols = matrix_dims(shape)
    every = {"numel": batch * rows * cols, "ndim": len(shape), "rows": rows, "cols": cols}
    return {name: every[name] for name in names}


# ------------------------------------------------------------------------- guarded host lets
class Unavailable:
    """A host ``let`` that could not be computed (``q = 1/n`` at ``n == 0``) and that only
    branches of a Piecewise use: host code evaluates only the branch taken, so where its
    guard is false the step goes on; any use of it (arithmetic, a comparison, ``float()``)
    raises the error computing it raised, naming the let."""

    __slots__ = ("_error",)

    def __init__(self, name: str, error: BaseException) -> None:
        self._error = (type(error), f"{name}: {error}")

    def _raise(self, *_: Any) -> Any:
        kind, message = self._error
        raise kind(message)

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _raise
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = _raise
    __pow__ = __rpow__ = __neg__ = __pos__ = __abs__ = _raise
    __float__ = __int__ = __index__ = __bool__ = __round__ = __trunc__ = _raise
    __lt__ = __le__ = __gt__ = __ge__ = __eq__ = __ne__ = _raise
    __hash__ = None  # type: ignore[assignment]


def unavailable(name: str, error: BaseException) -> Unavailable:
    """What a guarded host let holds when computing it raised ``error``."""
    return Unavailable(name, error)


# ---------------------------------------------------------------------------------- host max/min
_FLOAT32 = struct.Struct("<f")


def host_f32(value: float) -> float:
    """``value`` rounded to the nearest float32 (ties to even) and back: a reference kernel's
    float32 arithmetic on its scalars (the spec function ``f32``). A finite value float32
    cannot hold (past its range, or a nonzero one that rounds to 0) stays as it is: a float32
    kernel then refuses the scalar computed from it (``check_scalars``) and a float64 one
    computes with it, where an inf or a 0 would pass unnoticed."""
    try:
        held = _FLOAT32.unpack(_FLOAT32.pack(value))[0]
    except OverflowError:
        return value
    return value if held == 0.0 and value != 0.0 else held


def host_max(*values: float) -> float:
    """The largest value, or NaN if any is NaN: the kernels' max, on the host (Python's
    ``max`` keeps whichever comes first when a NaN is compared)."""
    if len(values) == 2:  # the common case, without a generator (once per tensor and step)
        a, b = values
        return math.nan if a != a or b != b else (b if b > a else a)  # max's choice
    return math.nan if any(v != v for v in values) else max(values)


def host_min(*values: float) -> float:
    """The smallest value, or NaN if any is NaN."""
    if len(values) == 2:
        a, b = values
        return math.nan if a != a or b != b else (b if b < a else a)  # min's choice
    return math.nan if any(v != v for v in values) else min(values)


def element_offsets(rule: str, offsets: Any, n: int) -> list[int]:
    """Per-tensor noise offsets of a step (ints in ``[0, 2**62]``): the index of each tensor's
    first element in the full tensor it is a shard of, so that a shard draws the full tensor's
    noise; ``None``: 0 for each of the ``n`` tensors."""
    if offsets is None:
        return [0] * n
    if not isinstance(offsets, Sequence) or len(offsets) != n:
        raise ValueError(f"{rule}: noise offsets must be a sequence of {n} ints, got {offsets!r}")
    out = []
    for k in offsets:
        try:
            value = -1 if isinstance(k, bool) else operator.index(k)
        except TypeError:
            value = -1
        if not 0 <= value <= 2**62:
            raise ValueError(f"{rule}: noise offset {k!r} is not an int in [0, 2**62]")
        out.append(value)
    return out


def check_distinct_states(rule: str, states: Sequence[Any]) -> None:
    """ValueError if one state dict is given for two tensors of a multi-tensor step."""
    if len(set(map(id, states))) == len(states):
        return  # all distinct objects: one C-level pass (the step's common case)
    first: dict[int, int] = {}
    for j, state in enumerate(states):
        k = first.setdefault(id(state), j)
        if k != j and isinstance(state, dict):
            raise ValueError(
                f"{rule}: tensors {k} and {j} share one state dict: its buffers and host "
                "states would be updated twice"
            )
