"""Checks shared by every generated module (hyperparameters, the step count, host states) and
the torch.optim mapping type of a rule; imports neither torch nor sympy."""

from __future__ import annotations

import importlib
import math
import numbers
import operator
import struct
from collections.abc import Callable, Collection, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, NamedTuple


class Legal(NamedTuple):
    """The legal values of a hyperparameter: an interval (of integers when ``integer``), and
    whether ``None`` is accepted."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    allow_none: bool = False
    choices: tuple[str, ...] = ()  # a choice: one of these strings, passed as its index
    flag: bool = False  # a flag: True/False, passed as 1.0/0.0
    integer: bool = False  # a count or period: only whole numbers (passed as floats)

    def contains(self, value: float) -> bool:
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        whole = not self.integer or float(value).is_integer()
        return above and below and whole and not math.isinf(value)

    def describe(self) -> str:
        if self.lo == self.hi:  # a variant's hyperparameter (codegen/variants.py): one value
            if self.choices:
                return f"only {self.choices[int(self.lo)]!r}"
            if self.flag:
                return f"only {bool(self.lo)}"
        if self.choices:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
            return text + " or None" if self.allow_none else text
        if self.flag:
            return "True or False"

        def num(x: float) -> str:
            if math.isinf(x):
                return "inf" if x > 0 else "-inf"
            return str(int(x)) if float(x).is_integer() else repr(float(x))

        lo = "(" if self.lo_open or math.isinf(self.lo) else "["
        hi = ")" if self.hi_open or math.isinf(self.hi) else "]"
        text = f"{lo}{num(self.lo)}, {num(self.hi)}{hi}"
        if self.lo == self.hi:
            text = f"only {num(self.lo)}"
        if self.integer:
            text = f"an integer in {text}"
        return text + " or None" if self.allow_none else text


class TorchEquivalent(NamedTuple):
    """How a torch.optim optimizer maps onto a rule (for state_dict exchange and comparison).

    ``hyper``: our hyperparameter -> torch's param-group key (``"betas[0]"`` for a tuple item).
    ``states``: our state -> (torch's state key, factor), ours = factor * torch's. In a spec a
    factor is a SymPy expression of hyperparameters (SGD keeps ``momentum_buffer = -mom / lr``:
    factor ``-lr``); in generated code, a function of the hyperparameters as keyword arguments.
    ``fixed``: torch settings the rule always has (``{"centered": True}``): exported as such and
    required on import. Every other torch setting must keep torch's default on import.
    """

    class_name: str
    hyper: dict[str, str]
    states: dict[str, tuple[str, Any]]
    fixed: dict[str, bool | int | float | str | None] = {}  # noqa: RUF012 (never mutated)


def resolve_hyperparams(
    rule: str,
    defaults: Mapping[str, float | None],
    legal: Mapping[str, Legal],
    none_means: Mapping[str, float],
    given: Mapping[str, Any],
) -> dict[str, float]:
    """Defaults overridden by ``given``, checked, with ``None`` replaced by what it means.

    Raises TypeError for unknown names or non-numbers and ValueError for illegal values (NaN
    included), naming the rule and the hyperparameter, before anything is computed.

    A call whose given values are all Python floats, ints, strings or None is remembered
    (``_RESOLVED``: the modules' every ``step`` resolves its keywords, 10-20 us each time on
    this machine): the same keywords again, for the same tables, return a copy of the result.
    Anything else (a tensor, a NumPy scalar: it may change in place) is resolved every time.
    The tables are a module's constants (``HYPERPARAMS``, ``LEGAL``, ``NONE_MEANS``): one changed
    in place is not seen by a call remembered before (``_RESOLVED.clear()`` forgets them).
    """
    tables = (defaults, legal, none_means)  # (a rule's variants share its name, not these)
    key = _resolved_key(rule, tables, given)
    if key is not None:
        entry = _RESOLVED.get(key)
        # keyed by the tables' ids, checked to be them: an entry keeps its tables alive, so an
        # id it was made with is no other table's while it is there
        if entry is not None and all(map(operator.is_, entry[:3], tables)):
            return dict(entry[3])
    values = _resolve(rule, defaults, legal, none_means, given)
    if key is not None:
        if len(_RESOLVED) >= _RESOLVED_MAX:
            _RESOLVED.clear()
        _RESOLVED[key] = (defaults, legal, none_means, dict(values))
    return values


_RESOLVED: dict[tuple[Any, ...], tuple[Any, Any, Any, dict[str, float]]] = {}
_RESOLVED_MAX = 1024
_REMEMBERED = frozenset((float, int, str, type(None)))


def _resolved_key(
    rule: str, tables: tuple[Any, ...], given: Mapping[str, Any]
) -> tuple[Any, ...] | None:
    """``resolve_hyperparams``'s memo key: the rule, its tables' ids and each given (name, type,
    value, sign), the sign telling -0.0 from 0.0 (equal as keys); None where a value is not
    plain."""
    parts: list[Any] = [rule, *map(id, tables)]
    for name, value in given.items():
        kind = type(value)
        if kind not in _REMEMBERED:
            return None
        parts.append((name, kind, value, kind is float and math.copysign(1.0, value) < 0))
    return tuple(parts)


def _resolve(
    rule: str,
    defaults: Mapping[str, float | None],
    legal: Mapping[str, Legal],
    none_means: Mapping[str, float],
    given: Mapping[str, Any],
) -> dict[str, float]:
    """``resolve_hyperparams``, every time."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise TypeError(
            f"{rule}: unknown hyperparameter(s) {', '.join(unknown)}; "
            f"expected some of {', '.join(defaults)}"
        )
    values: dict[str, float] = {}
    for name, default in defaults.items():
        value = given.get(name, default)
        rule_legal = legal[name]
        if rule_legal.choices or rule_legal.flag:
            none = value is None and rule_legal.allow_none  # the choice None stands for
            values[name] = none_means[name] if none else _discrete(rule, name, value, rule_legal)
            continue
        if value is None:
            if not legal[name].allow_none:
                raise ValueError(f"{rule}: hyperparameter {name} may not be None")
            values[name] = none_means[name]
            continue
        value = _real(rule, name, value)
        if rule_legal.integer and math.isfinite(value) and not value.is_integer():
            raise ValueError(
                f"{rule}: hyperparameter {name}={value!r} must be an integer "
                f"({rule_legal.describe()})"
            )
        if not legal[name].contains(value):
            raise ValueError(
                f"{rule}: hyperparameter {name}={value!r} is outside its legal values "
                f"{legal[name].describe()}"
            )
        values[name] = value
    return values


def _real(rule: str, name: str, value: Any) -> float:
    """A numeric hyperparameter as a float: Python/NumPy reals and one-element NumPy arrays and
    torch tensors, of any shape; never a bool, a string or bytes (``"0.05"`` would pass
    ``float()`` and fail later) nor an array of several elements (named by its size)."""
    bad = isinstance(value, (bool, str, bytes, bytearray)) or type(value).__name__ == "bool_"
    if not bad and not isinstance(value, (int, float)):
        bad = not (hasattr(value, "__float__") or hasattr(value, "__index__"))
        bad = bad or (getattr(value, "dtype", None) is not None and "bool" in str(value.dtype))
        size = getattr(value, "size", None)
        size = size() if callable(size) else size  # torch's is a method, NumPy's a number
        if not bad and isinstance(size, tuple):
            size = math.prod(size)
        if not bad and isinstance(size, int) and size != 1:
            raise TypeError(
                f"{rule}: hyperparameter {name} must be a real number, got an array of "
                f"{size} elements ({_short(value)})"
            )
        if not bad and size == 1 and hasattr(value, "item"):
            value = value.item()  # NumPy refuses float() of a one-element array of rank >= 1
    if not bad:
        try:
            return float(value)  # numpy and 0-d torch scalars
        except OverflowError:
            raise ValueError(
                f"{rule}: hyperparameter {name}={_short(value)} is past the largest double"
            ) from None
        except (TypeError, ValueError, RuntimeError):
            pass
    raise TypeError(f"{rule}: hyperparameter {name} must be a real number, got {_short(value)}")


def _discrete(rule: str, name: str, value: Any, legal: Legal) -> float:
    """A choice as the index of its string, a flag as 1.0/0.0."""
    if legal.flag:
        if value not in (True, False, 0, 1) or value is None:
            raise ValueError(f"{rule}: hyperparameter {name}={value!r} must be True or False")
        return 1.0 if value else 0.0
    if value not in legal.choices:
        raise ValueError(f"{rule}: hyperparameter {name}={value!r} is not {legal.describe()}")
    return float(legal.choices.index(value))


def scalar_inputs(rule: str, names: Sequence[str], given: Mapping[str, Any]) -> dict[str, float]:
    """A step's scalar inputs (the loss, say) as floats, each a finite real number: NaN, an
    infinity, a bool, a string or a many-element tensor is refused naming the input, before
    anything is written."""
    values = {}
    for name in names:
        value = given[name]
        if value is None:
            raise TypeError(f"{rule}: the scalar input {name} is missing (a keyword argument)")
        try:
            number = _real(rule, name, value)
        except TypeError:
            raise TypeError(
                f"{rule}: scalar input {name} must be a real number, got {_short(value)}"
            ) from None
        if not math.isfinite(number):
            raise ValueError(f"{rule}: scalar input {name}={number!r} must be finite")
        values[name] = number
    return values


def check_inputs_given(rule: str, given: Mapping[str, Any]) -> None:
    """Every per-element input of a step is there: a TypeError naming the first missing one."""
    for name, value in given.items():
        if value is None:
            raise TypeError(
                f"{rule}: the input {name} is missing (a keyword argument of the step, "
                "shaped like the weight)"
            )


def input_lists(rule: str, given: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
    """A multi-tensor step's per-element inputs, one list of ``n`` per input, as one dict per
    tensor; a list of another length (or no list) is refused naming the input."""
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    for name, values in given.items():
        if values is None:
            raise TypeError(f"{rule}: the input {name} is missing (a list of {n} tensors)")
        if not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
            raise TypeError(
                f"{rule}: input {name} must be a list of {n} tensors (one per weight), "
                f"got {type(values).__name__}"
            )
        if len(values) != n:
            raise ValueError(f"{rule}: {len(values)} {name} tensors for {n} weights")
        for j, value in enumerate(values):
            out[j][name] = value
    return out


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


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 40 else f"{text[:20]}...{text[-8:]} ({len(text)} characters)"


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
                f"{rule}: step count t must be an int >= 1, got {_short(t)} ({type(t).__name__})"
            ) from None
    if t < 1:
        raise ValueError(f"{rule}: step count t must be >= 1 (1 on the first step), got {t}")
    if t > MAX_STEP:
        raise ValueError(
            f"{rule}: step count t={_short(t)} is past the largest step count 2**63 - 1"
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


def absent_states(
    absent: Mapping[str, Mapping[str, float]], hp: Mapping[str, float]
) -> tuple[str, ...]:
    """The rule's ``ABSENT`` states that the resolved hyperparameters ``hp`` make absent (each
    by its spec's ``state(absent_when=...)``), in order: where there are some, the step runs the
    rule's variant modules without them (its ``WITHOUT``)."""
    return tuple(k for k, when in absent.items() if all(hp[n] == v for n, v in when.items()))


def matches(when: Mapping[str, float], hp: Mapping[str, float]) -> bool:
    """True when the resolved hyperparameters ``hp`` have the values ``when`` (a rule's
    ``SPECIAL`` case: its spec's ``special_case``): the step then runs that case's modules."""
    return all(hp[n] == v for n, v in when.items())


def running_variant(meta: Any, hp: Mapping[str, float]) -> str | None:
    """The variant a rules module ``meta``'s step functions run at the resolved ``hp``: its
    first matching special case, else the variant without its absent states, else None."""
    for name, when in meta.SPECIAL.items():
        if matches(when, hp):
            return name
    gone = absent_states(meta.ABSENT, hp)
    return meta.WITHOUT[gone] if gone else None


def running_module(module: Any, meta: Any, hp: Mapping[str, float]) -> Any:
    """The module of ``module``'s package (a rule's rules, numba or Triton module) whose update
    runs at the resolved ``hp``: ``running_variant``'s, else ``module`` itself."""
    variant = running_variant(meta, hp)
    if variant is None:
        return module
    package = module.__name__.rsplit(".", 1)[0]
    return importlib.import_module(f"{package}.{variant}")


def run_variant(
    function: Callable[..., Any],
    weights: Any,
    grads: Any,
    states: Any,
    t: Any,
    absent: Collection[str],
    **kwargs: Any,
) -> Any:
    """``function`` (a variant's step function) on ``states`` without the ``absent`` entries: a
    state that has them (momentum switched off mid-run) keeps them, untouched; what the variant
    sets (host states) is written back. States that are not dicts go as they are (refused)."""
    single = isinstance(states, Mapping)
    given = [states] if single else list(states) if isinstance(states, Sequence) else []
    if not any(isinstance(s, Mapping) and any(k in s for k in absent) for s in given):
        return function(weights, grads, states, t, **kwargs)
    made: dict[int, dict[str, Any]] = {}  # one view per state dict: a dict given twice stays
    views = []  # one object, so the variant's step refuses it as it refuses the dict itself
    for s in given:
        if isinstance(s, Mapping):
            if id(s) not in made:
                made[id(s)] = {k: v for k, v in s.items() if k not in absent}
            views.append(made[id(s)])
        else:
            views.append(s)
    result = function(weights, grads, views[0] if single else views, t, **kwargs)
    for s, view in zip(given, views, strict=True):
        if isinstance(s, MutableMapping):
            s.update(view)
    return result


def run_steps(rule: str, steppers: Sequence[Iterator[None]]) -> None:
    """One step per tensor in two stages: each stepper runs to its ``yield None`` (its
    reductions, checks and host scalars: it reads, writes only temporaries) and only when
    every one has does any resume to write, so a refusal of any tensor (a scalar its data
    make unrepresentable) leaves every tensor as it was."""
    for j in range(len(steppers)):
        if advance(rule, steppers, j) is not None:
            raise RuntimeError(f"{rule}: a step yielded before its checks")  # a generator bug
    finish_steps(rule, steppers)


def advance(rule: str, steppers: Sequence[Iterator[Any]], j: int, value: Any = None) -> Any:
    """Stepper ``j`` run to its next ``yield`` (sent ``value``); a refusal of one of several
    tensors names it (:func:`of_tensor`)."""
    try:
        return steppers[j].send(value)
    except (TypeError, ValueError) as error:
        raise of_tensor(rule, j, error, len(steppers)) from None


def finish_steps(rule: str, steppers: Sequence[Iterator[Any]]) -> None:
    """Resume every stepper, each at its ``yield None``, to its writes and its end (through
    :func:`commit`: inside :func:`deferred_writes`, once every step of the block has passed)."""

    def writes() -> None:
        for s in steppers:
            try:
                next(s)
            except StopIteration:
                continue
            raise RuntimeError(f"{rule}: a step did not finish after its writes")  # a bug

    commit(writes)


# The writes of the steps made inside ``deferred_writes()``, queued in order (None: none is
# open, a step writes at once). A torch class steps its param groups one after the other, and a
# module can refuse a group only once it has its sums or host states: the class opens the block
# around every group's step and runs the writes once all have passed, so a later group's refusal
# leaves every group as it was.
_PENDING: ContextVar[list[Callable[[], None]] | None] = ContextVar("optgen_pending", default=None)


def commit(writes: Callable[[], None], *alive: object) -> None:
    """Run a step's ``writes`` (its every check passed) now, or queue them inside
    :func:`deferred_writes`, with ``alive`` (the buffers the writes reach by address: a
    gradient converted for the step, say) kept alive while they wait."""
    pending = _PENDING.get()
    if pending is None:
        writes()
    else:
        pending.append(_Queued(writes, alive))


class _Queued:
    """Queued writes and what they need alive until they run."""

    __slots__ = ("alive", "writes")

    def __init__(self, writes: Callable[[], None], alive: tuple[object, ...]) -> None:
        self.writes, self.alive = writes, alive

    def __call__(self) -> None:
        self.writes()


@contextmanager
def deferred_writes() -> Iterator[list[Callable[[], None]]]:
    """A block whose steps queue their writes (:func:`commit`) instead of making them: the
    caller runs the list it yields, in order, once the block has ended without an error (a
    refused step leaves the list to be dropped: nothing written). Steps that take buffers of
    the caller's must keep them unchanged until then (no scratch reused between them)."""
    pending: list[Callable[[], None]] = []
    token = _PENDING.set(pending)
    try:
        yield pending
    finally:
        _PENDING.reset(token)


@contextmanager
def all_or_nothing() -> Iterator[None]:
    """The steps made inside write only if every one passes: their writes queued and made at
    the end of the block, or, inside an enclosing :func:`deferred_writes` (a torch class's
    step), left queued for its caller."""
    if deferring():
        yield
        return
    with deferred_writes() as writes:
        yield
    for write in writes:
        write()


def deferring() -> bool:
    """Whether a :func:`deferred_writes` block is open (its steps' writes are queued)."""
    return _PENDING.get() is not None


def check_distinct_states(rule: str, states: Sequence[Any]) -> None:
    """ValueError if one state dict is given for two tensors of a multi-tensor step."""
    first: dict[int, int] = {}
    for j, state in enumerate(states):
        k = first.setdefault(id(state), j)
        if k != j and isinstance(state, dict):
            raise ValueError(
                f"{rule}: tensors {k} and {j} share one state dict: its buffers and host "
                "states would be updated twice"
            )
