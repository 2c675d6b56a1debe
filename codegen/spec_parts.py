"""The parts of a spec besides :class:`codegen.spec.Rule`: legal-value builders, the records a
rule keeps of its declarations, and the expression helpers a spec may import (``python_max``,
``as_is``)."""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

import sympy as sp

from codegen.ir import Origin
from optgen_runtime.hyperparams import Legal


def positive(allow_none: bool = False) -> Legal:
    """x > 0 (finite)."""
    return Legal(lo=0.0, lo_open=True, allow_none=allow_none)


def nonnegative() -> Legal:
    """x >= 0 (finite)."""
    return Legal(lo=0.0)


def unit(lo_open: bool = False, hi_open: bool = True) -> Legal:
    """x in [0, 1) by default; a decay factor."""
    return Legal(lo=0.0, hi=1.0, lo_open=lo_open, hi_open=hi_open)


def integer(lo: float = 0, hi: float = math.inf) -> Legal:
    """A whole number in [lo, hi]: a count or a period (a macro-batch in calls, epochs). The
    generated code refuses 1.5, which a step counter compared with it would never reach."""
    return Legal(lo=float(lo), hi=float(hi), integer=True)


# What a value varies along, of the weight viewed as (batch, rows, cols): its domain.
ELEMENT, ROW, COL, BATCH, SCALAR = (frozenset(a) for a in ("brc", "br", "bc", "b", ""))
DOMAIN_NAMES = {
    ELEMENT: "per element",
    ROW: "one per row",
    COL: "one per column",
    BATCH: "one per matrix",
    SCALAR: "one per tensor",
}


@dataclass(frozen=True)
class Hyper:
    """A hyperparameter: runtime argument of every generated step function."""

    name: str
    symbol: sp.Symbol
    default: float | str | bool | None
    legal: Legal
    none_value: float | None  # what ``None`` means in the equations (e.g. inf: clipping off)
    doc: str


@dataclass(frozen=True)
class State:
    """A per-element state buffer of the weight's shape."""

    name: str
    symbol: sp.Symbol
    new: sp.Symbol
    init: sp.Expr  # a constant, or an expression of the initial weight
    doc: str
    axis: int | None = None  # reduced along the weight's axis -1 (a row vector) or -2, or not


@dataclass(frozen=True)
class HostState:
    """A scalar carried across steps on the host, per weight (e.g. NAdam's momentum schedule).

    Its new value may depend only on hyperparameters, the step count and host states; it lives in
    the state dict as a Python float next to the per-element buffers.
    """

    name: str
    symbol: sp.Symbol
    new: sp.Symbol
    init: float
    doc: str


@dataclass(frozen=True)
class TestCase:
    """A setting the test suite runs besides the ones it derives (``Rule.test_case``)."""

    __test__ = False  # not a pytest class

    hyperparams: dict[str, float | str | bool | None]
    steps: int | None  # None: as many as the suite derives for the setting
    line: int


@dataclass(frozen=True)
class Input:
    """A per-element input besides the gradient (weight-shaped, read-only): AdaHessian's
    Hessian-diagonal estimate. Every step function takes it as a keyword argument."""

    name: str
    symbol: sp.Symbol
    doc: str


@dataclass(frozen=True)
class ScalarInput:
    """One number per step given by the caller (the loss, say): a host input like a
    hyperparameter, but required at every step and never a group setting."""

    name: str
    symbol: sp.Symbol
    doc: str


@dataclass(frozen=True)
class Equation:
    """``target = expr``: target is a new state/weight symbol or a named intermediate."""

    target: sp.Symbol
    expr: sp.Expr
    origin: Origin


def spec_frame() -> tuple[str, int] | None:
    """(file, line) of the innermost caller outside codegen/: the spec line that declared
    something. Walks the frames directly (``inspect.stack`` reads every frame's source)."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if os.path.basename(os.path.dirname(filename)) != "codegen":
            return filename, frame.f_lineno
        frame = frame.f_back
    return None


def caller_file() -> str:
    frame = spec_frame()
    return frame[0] if frame else "<unknown>"


def display_path(path: str) -> str:
    parent = os.path.basename(os.path.dirname(path))
    return f"{parent}/{os.path.basename(path)}" if parent else os.path.basename(path)


def python_max(a: sp.Expr, b: sp.Expr) -> sp.Expr:
    """Python's ``max(a, b)``, as torch computes it on ``.item()`` floats (Adafactor's step
    size and update clip): ``b`` where ``b > a``, else ``a``, so a NaN ``b`` gives ``a``.
    ``sp.Max`` is NaN-propagating on every target (the kernels' max), which spreads a NaN
    element's NaN through a norm to the whole tensor where torch's ``max`` drops it."""
    return sp.Piecewise((b, b > a), (a, True))


class AsIs(sp.UnevaluatedExpr):
    """:func:`as_is`'s node: SymPy's unevaluated expression with its argument's assumptions (a
    real one is real: ``Max`` and the comparisons take it; commutative, as every scalar here)."""

    is_commutative = True

    def __new__(cls, arg: sp.Expr, **kwargs: object) -> sp.Expr:
        """A number as itself: nothing to keep whole (a special case's ``wd = 0`` makes
        ``as_is(-lr * wd * w)`` a 0 that must vanish from its sum, not be added). A symbol stays
        wrapped: a ``let`` is inlined later, and ``as_is`` keeps its value whole."""
        arg = sp.sympify(arg)
        return arg if arg.is_Number else super().__new__(cls, arg, **kwargs)

    def _sympystr(self, printer: object) -> str:
        """Parenthesised where a sum: SymPy's printers take an unevaluated ``-a + b`` for a
        negative term of the sum it is part of and move its sign (``eps + (-a + b)`` printed
        ``eps - (a + b)``), in the generated comments and in code (``lambdify``'s); and where a
        product, which the host code evaluates first (``m * (b * c)``, not ``m * b * c``)."""
        text = printer._print(self.args[0])  # type: ignore[attr-defined]
        return f"({text})" if isinstance(self.args[0], (sp.Add, sp.Mul)) else text

    # every printer SymPy's lambdify and code printers use (their ``printmethod``)
    _pythoncode = _mpmathcode = _numpycode = _lambdacode = _sympystr

    def _eval_is_extended_real(self) -> bool | None:
        return self.args[0].is_extended_real

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real

    def _eval_is_finite(self) -> bool | None:
        return self.args[0].is_finite

    def _eval_is_zero(self) -> bool | None:
        return self.args[0].is_zero

    def _eval_is_extended_positive(self) -> bool | None:
        return self.args[0].is_extended_positive

    def _eval_is_extended_negative(self) -> bool | None:
        return self.args[0].is_extended_negative


def as_is(expr: sp.Expr) -> sp.Expr:
    """``expr`` computed first and used as one operand: SymPy neither merges it into the product
    it is a factor of nor distributes a power over it. torch's ``addcmul_(g, g, value=1 -
    beta2)`` is ``as_is((1 - beta2) * g) * g``, which stays finite where ``(1 - beta2) * g**2``
    squares first and overflows float32 (|g| > 1.8e19); ``as_is(delta)**2`` squares a ``let``
    that SymPy would otherwise expand (``(sqrt(a) / sqrt(b) * g)**2`` is ``a * g**2 / b``, inf /
    inf where ``g**2`` overflows). The high-precision references evaluate it as ``expr``."""
    return AsIs(sp.sympify(expr))


def torch_lerp(start: sp.Expr, end: sp.Expr, weight: sp.Expr) -> sp.Expr:
    """``torch.lerp(start, end, weight)`` (``exp_avg.lerp_(grad, 1 - beta1)``) as ATen computes
    it: ``start + weight * (end - start)`` where ``|weight| < 0.5``, else ``end - (end - start) *
    (1 - weight)``, exactly ``end`` at weight 1 (Adam's ``beta1 = 0``, common in GAN training,
    where the first form cancels: m + (g - m) is a rounding of the old m when |m| >> |g|).
    ``end`` is computed first, then ``end - start`` (``as_is``). ``weight``: host-only (the
    form is chosen per step; every target computes both and selects)."""
    end = as_is(end)
    diff = as_is(end - start)
    small = sp.Abs(weight) < sp.Rational(1, 2)
    return sp.Piecewise((start + weight * diff, small), (end - diff * (1 - weight), True))


def exact_exponent(exp: sp.Float) -> sp.Number:
    """A float exponent as the number it is the nearest double of, where that is a whole
    number or a half or third of one (``2.0``; ``0.5``, ``1.5``; Python's ``1/3`` and ``4/3``):
    a spec's ``g**2.0`` is ``g**2`` (SymPy keeps a float exponent, and a float power of a
    negative base is NaN) and its ``x**(1/3)`` the cube root. Any other float stays."""
    value = float(exp)
    for q in (1, 2, 3):
        p = round(value * q)
        if abs(p) <= 64 and float(sp.Rational(p, q)) == value:
            return sp.Rational(p, q)
    return exp


def exact_exponents(expr: sp.Expr) -> sp.Expr:
    """``expr`` with every float exponent :func:`exact_exponent` turns into a rational."""
    if not expr.has(sp.Pow):
        return expr
    return expr.replace(
        lambda e: isinstance(e, sp.Pow) and e.exp.is_Float,
        lambda e: sp.Pow(e.base, exact_exponent(e.exp)),
    )
