"""A rule's hyperparameters at a step: their legal values (``Legal``), the resolution and
checks of the values a call gives (``resolve_hyperparams``, remembered per call signature),
per-step scalar inputs, per-element input lists, and the torch.optim mapping type of a rule
(``TorchEquivalent``); imports neither torch nor sympy."""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple


def short_repr(x: Any) -> str:
    """``repr(x)`` for a message, cut to about 40 characters (its length said)."""
    text = repr(x)
    return text if len(text) <= 40 else f"{text[:20]}...{text[-8:]} ({len(text)} characters)"


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
    labels: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """Defaults overridden by ``given``, checked, with ``None`` replaced by what it means.

    Raises TypeError for unknown names or non-numbers and ValueError for illegal values (NaN
    included), naming the rule and the hyperparameter, before anything is computed: as
    ``labels`` calls it where it has a label (a drop-in's ``betas[1]`` for the rule's
    ``beta2``: what its user set).

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
    values = _resolve(rule, defaults, legal, none_means, given, labels or {})
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
    labels: Mapping[str, str],
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
        shown = labels.get(name, name)  # the name the messages give it
        if rule_legal.choices or rule_legal.flag:
            none = value is None and rule_legal.allow_none  # the choice None stands for
            values[name] = none_means[name] if none else _discrete(rule, shown, value, rule_legal)
            continue
        if value is None:
            if not legal[name].allow_none:
                raise ValueError(f"{rule}: hyperparameter {shown} may not be None")
            values[name] = none_means[name]
            continue
        value = _real(rule, shown, value)
        if rule_legal.integer and math.isfinite(value) and not value.is_integer():
            raise ValueError(
                f"{rule}: hyperparameter {shown}={value!r} must be an integer "
                f"({rule_legal.describe()})"
            )
        if not legal[name].contains(value):
            raise ValueError(
                f"{rule}: hyperparameter {shown}={value!r} is outside its legal values "
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
                f"{size} elements ({short_repr(value)})"
            )
        if not bad and size == 1 and hasattr(value, "item"):
            value = value.item()  # NumPy refuses float() of a one-element array of rank >= 1
    if not bad:
        try:
            return float(value)  # numpy and 0-d torch scalars
        except OverflowError:
            raise ValueError(
                f"{rule}: hyperparameter {name}={short_repr(value)} is past the largest double"
            ) from None
        except (TypeError, ValueError, RuntimeError):
            pass
    raise TypeError(f"{rule}: hyperparameter {name} must be a real number, got {short_repr(value)}")


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
                f"{rule}: scalar input {name} must be a real number, got {short_repr(value)}"
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
