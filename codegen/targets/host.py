"""Host code: plain Python floats (double precision), computed once per step.

Shared by every target: the rule's metadata module (``generated/rules``) holds the host code, and
the NumPy and Triton modules call it. Every decision about literals and function names is made
here, never by editing printed text.
"""

from __future__ import annotations

import math
from typing import Any

import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

from codegen.ops import Guarded, element_constant, f32
from codegen.spec import SpecError
from optgen_runtime.hyperparams import Legal


class HostPrinter(PythonCodePrinter):
    """Host scalars in plain Python floats (double), computed once per step."""

    def _math(self, name: str) -> str:
        """``math.<name>``, recorded as an import the module needs."""
        self.module_imports["math"].add(name)
        return f"math.{name}"

    def _print_Infinity(self, expr: sp.Expr) -> str:
        """``math.inf`` rather than ``float('inf')``."""
        return self._math("inf")

    def _print_NegativeInfinity(self, expr: sp.Expr) -> str:
        """``-math.inf`` rather than ``-float('inf')``."""
        return f"-{self._math('inf')}"

    def _print_Rational(self, expr: sp.Rational) -> str:
        """Exact ratios as a float division of integers (1/3, not 0.3333)."""
        return f"({expr.p} / {expr.q})"

    def _print_Float(self, expr: sp.Float) -> str:
        """repr of the double, which round-trips (SymPy prints 15 digits)."""
        return repr(float(expr))

    def _runtime(self, name: str) -> str:
        """A helper of ``optgen_runtime.common``, recorded as an import the module needs."""
        self.runtime.add(name)
        return name

    def _print_Max(self, expr: sp.Expr) -> str:
        """NaN-propagating, as the kernels' max (Python's ``max(1, nan)`` is 1)."""
        return f"{self._runtime('host_max')}({', '.join(self._print(a) for a in expr.args)})"

    def _print_Min(self, expr: sp.Expr) -> str:
        """NaN-propagating, as the kernels' min."""
        return f"{self._runtime('host_min')}({', '.join(self._print(a) for a in expr.args)})"

    def _print_Guarded(self, expr: sp.Expr) -> str:
        """A guarded scalar: its value where its branch's condition holds, else 0."""
        value, condition = expr.args
        return f"(({self._print(value)}) if ({self._print(condition)}) else 0.0)"

    def _print_f32(self, expr: sp.Expr) -> str:
        """Rounded to float32 and back (``host_f32``), as a reference kernel's float32 scalars."""
        return f"{self._runtime('host_f32')}({self._print(expr.args[0])})"

    def _print_softplus(self, expr: sp.Expr) -> str:
        """``log(1 + exp(x))`` as ``max(x, 0) + log1p(exp(-|x|))``: no overflow for large x."""
        x = self._print(expr.args[0])
        log1p, exp = self._math("log1p"), self._math("exp")
        return f"(max({x}, 0.0) + {log1p}({exp}(-abs({x}))))"

    def _print_Pow(self, expr: sp.Pow, rational: bool = False) -> str:
        """sqrt as ``math.sqrt``; other powers as Python ``**`` on floats."""
        if expr.exp == sp.Rational(1, 2):
            return f"{self._math('sqrt')}({self._print(expr.base)})"
        if expr.exp == -sp.Rational(1, 2):
            return f"(1.0 / {self._math('sqrt')}({self._print(expr.base)}))"
        base = self.parenthesize(expr.base, 100)
        exponent = self.parenthesize(expr.exp, 100)
        return f"{base} ** {exponent}"


class SpecTermsPrinter(HostPrinter):
    """A host expression as the host code computes it but with the spec's function names
    (``f32``, ``Max``, ``Min``, not the runtime's ``host_f32``, ...): the legends of kernel
    scalars, which refusals quote to the user who wrote the spec."""

    def _print_f32(self, expr: sp.Expr) -> str:
        return f"f32({self._print(expr.args[0])})"

    def _print_Max(self, expr: sp.Expr) -> str:
        return f"Max({', '.join(self._print(a) for a in expr.args)})"

    def _print_Min(self, expr: sp.Expr) -> str:
        return f"Min({', '.join(self._print(a) for a in expr.args)})"


def spec_terms(expr: sp.Expr) -> str:
    """One host expression in the spec's terms (``SpecTermsPrinter``)."""
    return HostCode(SpecTermsPrinter)(expr)


class HostCode:
    """Prints host expressions for one generated file and records the modules they need."""

    def __init__(self, printer: type[HostPrinter] = HostPrinter) -> None:
        self.printer = printer({"standard": "python3", "fully_qualified_modules": True})
        self.printer.runtime = set()

    def __call__(self, expr: sp.Expr) -> str:
        text = self.printer.doprint(expr)
        unsupported = self.printer.module_imports.keys() - {"math"}
        if unsupported:  # never fall back silently to another module
            raise SpecError(f"host expression {expr} needs {sorted(unsupported)}")
        return text

    @property
    def runtime(self) -> list[str]:
        """The ``optgen_runtime.common`` helpers printed so far."""
        return sorted(self.printer.runtime)

    @property
    def uses_math(self) -> bool:
        """True when anything printed so far calls into ``math``."""
        return "math" in self.printer.module_imports


def host_code(expr: sp.Expr) -> str:
    """One host expression as code (where no import bookkeeping is needed: comments)."""
    return HostCode()(expr)


def legal_code(legal: Legal, code: HostCode) -> str:
    """A hyperparameter's legal values as a ``Legal(...)`` call with keywords (defaults omitted)."""
    parts = []
    for field, default in Legal._field_defaults.items():
        value = getattr(legal, field)
        if value == default and not (isinstance(value, float) and math.isnan(value)):
            continue
        if field in ("lo", "hi"):
            parts.append(f"{field}={code(sp.sympify(value))}")
        else:
            parts.append(f"{field}={value!r}")
    return f"Legal({', '.join(parts)})"


# Comparisons printed infix, the same in every scalar-expression target (Triton, numba).
INFIX_COMPARISONS = {
    "gt": lambda a: f"{a[0]} > {a[1]}",
    "ge": lambda a: f"{a[0]} >= {a[1]}",
    "lt": lambda a: f"{a[0]} < {a[1]}",
    "le": lambda a: f"{a[0]} <= {a[1]}",
    "ne": lambda a: f"{a[0]} != {a[1]}",
}


class CommentedLines:
    """A per-element printer's ``lines``: each op (``self.op``), after a comment naming the spec
    line(s) of the equation it starts."""

    def op(self, op: Any) -> str:
        raise NotImplementedError

    def lines(self, ops_: list[Any]) -> list[str]:
        out = []
        for op in ops_:
            out += [f"# {o.comment()}" for o in op.origin]
            out.append(self.op(op))
        return out


def literal(value: sp.Expr, where: str = "") -> str:
    """A per-element constant as code: the double's repr (checked by
    :func:`codegen.ops.element_constant`; ``where`` names the spec file or line)."""
    return repr(element_constant(value, where))


class NotColumnwise(Exception):
    """A host expression over sums that :class:`RowsPrinter` cannot print with IEEE-exact NumPy
    operations (a power, ``exp``, ``log``, a modulo of a sum): the rule gets no
    ``host_scalars_rows``, and its multi-tensor steps compute tensor by tensor."""


# What may sit above a sum in an expression host_scalars_rows computes: operations NumPy does
# as Python does them on floats, to the bit (Pow: only sqrt, checked by the printer; Mul prints
# a factor x**-1 as a division).
COLUMNWISE = (
    sp.Symbol,
    sp.Number,
    sp.Add,
    sp.Mul,
    sp.Pow,
    sp.Max,
    sp.Min,
    sp.Piecewise,
    sp.functions.elementary.piecewise.ExprCondPair,
    sp.Abs,
    Guarded,
    sp.core.relational.Relational,
    sp.And,
    sp.Or,
    sp.Not,
    sp.logic.boolalg.BooleanAtom,
    f32,
)


class RowsPrinter(HostPrinter):
    """Host code over columns (``optgen_runtime.columns``): the ``varying`` symbols (a tensor's
    sums, and the lets computed from them) hold a float64 NumPy array, one entry per tensor.
    What depends on them is printed with NumPy's IEEE-exact operations, a Piecewise or guarded
    value as ``rows_where`` (each branch computed on the rows that take it alone); what does
    not, exactly as :class:`HostPrinter` prints it (the same Python float operations: the same
    bits)."""

    def varies(self, expr: sp.Basic) -> bool:
        return bool(expr.free_symbols & self.varying)

    def _print(self, expr: Any, **kwargs: Any) -> str:
        if isinstance(expr, sp.Basic) and self.varies(expr) and not isinstance(expr, COLUMNWISE):
            raise NotColumnwise(f"{type(expr).__name__} of a sum: {expr}")
        return super()._print(expr, **kwargs)

    def _numpy(self, name: str) -> str:
        self.uses_numpy = True
        return f"np.{name}"

    def _columns(self, name: str) -> str:
        """A helper of ``optgen_runtime.columns``, recorded as an import the module needs."""
        self.columns.add(name)
        return name

    def _print_Pow(self, expr: sp.Pow, rational: bool = False) -> str:
        if not self.varies(expr):
            return super()._print_Pow(expr, rational)
        if expr.exp == sp.Rational(1, 2):
            return f"{self._numpy('sqrt')}({self._print(expr.base)})"
        if expr.exp == -sp.Rational(1, 2):
            return f"(1.0 / {self._numpy('sqrt')}({self._print(expr.base)}))"
        raise NotColumnwise(f"a power of a sum: {expr}")  # libm's pow and NumPy's may differ

    def _print_f32(self, expr: sp.Expr) -> str:
        if not self.varies(expr):
            return super()._print_f32(expr)
        return f"{self._columns('rows_f32')}({self._print(expr.args[0])})"

    def _print_Max(self, expr: sp.Expr) -> str:
        if not self.varies(expr):
            return super()._print_Max(expr)
        return f"{self._columns('rows_max')}({', '.join(self._print(a) for a in expr.args)})"

    def _print_Min(self, expr: sp.Expr) -> str:
        if not self.varies(expr):
            return super()._print_Min(expr)
        return f"{self._columns('rows_min')}({', '.join(self._print(a) for a in expr.args)})"

    def _print_Symbol(self, expr: sp.Symbol) -> str:
        """A column inside a branch (``rows_where``): only the rows that branch runs on."""
        text = super()._print_Symbol(expr)
        if self.within and expr in self.varying:
            return f"{text}[{self.within[-1]}]"
        return text

    def _print_Piecewise(self, expr: sp.Piecewise) -> str:
        """``rows_where``: each condition and value a function of the rows it runs on, called
        on the rows Python's conditional would evaluate it for (no untaken branch computed: NumPy
        flags only what Python raises on); the last branch must hold everywhere."""
        if not self.varies(expr):
            return super()._print_Piecewise(expr)
        if expr.args[-1].cond != sp.true:
            raise NotColumnwise(f"a Piecewise without an otherwise branch: {expr}")
        branches = [b for value, condition in expr.args[:-1] for b in (condition, value)]
        return self._branches([*branches, expr.args[-1].expr])

    def _print_Guarded(self, expr: sp.Expr) -> str:
        if not self.varies(expr):
            return super()._print_Guarded(expr)
        value, condition = expr.args
        return self._branches([condition, value, sp.Float(0.0)])

    def _branches(self, branches: list[sp.Basic]) -> str:
        """``rows_where(rows, f, ...)``: ``rows`` the row count, or the enclosing branch's rows;
        each ``f`` a lambda of the rows it runs on, whose columns print indexed by them."""
        rows = self.within[-1] if self.within else self.count
        name = f"_r{len(self.within)}"
        self.within.append(name)
        try:
            parts = [f"lambda {name}: {self._print(b)}" for b in branches]
        finally:
            self.within.pop()
        return f"{self._columns('rows_where')}({rows}, {', '.join(parts)})"

    def _logical(self, name: str, expr: sp.Basic) -> str:
        function = self._numpy(name)
        args = [self._print(a) for a in expr.args]
        text = args[0]
        for a in args[1:]:
            text = f"{function}({text}, {a})"
        return text

    def _print_And(self, expr: sp.Basic) -> str:
        return self._logical("logical_and", expr) if self.varies(expr) else super()._print_And(expr)

    def _print_Or(self, expr: sp.Basic) -> str:
        return self._logical("logical_or", expr) if self.varies(expr) else super()._print_Or(expr)

    def _print_Not(self, expr: sp.Basic) -> str:
        if not self.varies(expr):
            return super()._print_Not(expr)
        return f"{self._numpy('logical_not')}({self._print(expr.args[0])})"


class RowsCode(HostCode):
    """:class:`HostCode` of :class:`RowsPrinter`: ``varying`` grows as the caller assigns lets
    computed from sums."""

    def __init__(self, varying: set[sp.Symbol], count: str) -> None:
        self.printer = RowsPrinter({"standard": "python3", "fully_qualified_modules": True})
        self.printer.runtime = set()
        self.printer.columns = set()
        self.printer.uses_numpy = False
        self.printer.varying = varying
        self.printer.count = count  # the row count's code (``len(<a sum>)``)
        self.printer.within: list[str] = []  # the lambdas' row parameters, innermost last

    @property
    def columns(self) -> list[str]:
        """The ``optgen_runtime.columns`` helpers printed so far."""
        return sorted(self.printer.columns)
