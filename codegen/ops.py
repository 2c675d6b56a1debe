"""The one table of operations: every operation a spec may use, and what each layer makes of it.

An :class:`OpDef` says where the operation comes from in SymPy (``sympy``: the function class a
spec writes, or None for arithmetic the linearizer builds from ``Add``/``Mul``/``Pow``), how to
rebuild it symbolically (``build``: the equivalence proof in the tests), whether its result is a
mask (``boolean``), whether it exists only on the host (``host_only``: schedules on the step
count), and its cost in the lowering's op counts. Derived from this table, and nothing else:

- the functions a spec may use (:data:`SPEC_FUNCTIONS`, :data:`RELATIONALS`, :data:`HOST_ONLY`);
- the linearizer's SymPy-to-op mapping (:data:`FROM_SYMPY`);
- the symbolic reconstruction (:func:`build`);
- the mask kinds (:data:`BOOLEAN`);
- each target's printer: a target declares one entry per element operation and calls
  :func:`require` at import, which fails naming any operation the target lacks.

Adding an operation is one row here plus one entry per target printer; a target that forgets
its entry fails when it is imported, not when a spec first uses the operation.

Powers per element (the linearizer builds them from ``Pow``): whole exponents 2..4 multiply,
negative ones divide, 1/2 is ``sqrt``, k/3 is ``cbrt`` (times itself), and any other rational
exponent is ``pow`` with that constant. A fractional power of a negative base is NaN, whatever
the denominator (as ``sqrt``, IEEE ``pow`` and ``torch.pow``; SymPy's ``x**(1/3)`` has no real
value there): write ``sign(x) * Abs(x)**(1/3)`` for the odd real root. -0.0 is not negative.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import sympy as sp
from sympy.functions.elementary.piecewise import ExprCondPair

from codegen.errors import SpecError


@dataclass(frozen=True)
class OpDef:
    """One operation: ``dest = name(*args)`` on one element (or on the host, ``host_only``)."""

    name: str
    arity: int
    build: Callable[..., sp.Expr]
    sympy: type[sp.Basic] | None = None  # the spec-level function this op comes from
    boolean: bool = False  # the result is a mask (comparisons)
    host_only: bool = False  # refused per element: the host computes it
    cost: int = 1  # weight in op counts; a matrix op: per multiply-add (see matrix_cost)
    doc: str = ""
    matrix: bool = False  # on whole matrices (codegen/matrix.py), not per element


class softplus(sp.Function):  # a spec function: lower case, as SymPy's
    """``softplus(x) = log(1 + exp(x))``, exactly (the 40-digit reference evaluates that).

    Generated code computes it stably, ``max(x, 0) + log1p(exp(-|x|))``: no overflow for large
    x (softplus(x) = x there), no loss for very negative x (where it is exp(x)).
    """

    nargs = 1

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        if x.is_zero:
            return sp.log(2)
        return None

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return 1 / (1 + sp.exp(-self.args[0]))

    def _eval_rewrite_as_log(self, x: sp.Expr, **kwargs: object) -> sp.Expr:
        return sp.log(1 + sp.exp(x))

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real

    def _eval_is_positive(self) -> bool | None:
        return True if self.args[0].is_real else None


class f32(sp.Function):  # a spec function: lower case, as SymPy's
    """``f32(x)``: x rounded to the nearest float32 (ties to even; inf past float32's range), a
    reference kernel's float32 arithmetic on its scalars: MXNet's C++ kernels take their
    hyperparameters as float32 and compute ``1.f - beta2`` in float32, which is
    ``f32(1 - f32(beta2))`` (a double holds the difference of two float32 exactly). Host-only:
    of hyperparameters, t and host states, computed once per step. A finite x that float32
    cannot hold (past its range; nonzero and rounding to 0) is x itself: a float32 kernel
    refuses what is computed from it, a float64 one computes with it."""

    nargs = 1

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        if x.is_Integer and abs(x) <= 2**24:  # float32 holds it: f32(1) is 1
            return x
        return None

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real


def exact(expr: sp.Expr) -> sp.Expr:
    """``expr`` with every spec function that SymPy does not know written out in SymPy's own
    functions (``softplus(x)`` as ``log(1 + exp(x))``): what the oracle and the proofs read."""
    return expr.replace(lambda e: isinstance(e, softplus), lambda e: sp.log(1 + sp.exp(e.args[0])))


def _ne(a: sp.Expr, b: sp.Expr) -> sp.Expr:
    """A host condition (1.0/0.0 at run time) compared with 0 is the condition itself."""
    return a if isinstance(a, sp.logic.boolalg.Boolean) and b == 0 else sp.Ne(a, b)


OPS: tuple[OpDef, ...] = (
    OpDef("add", 2, lambda a, b: a + b, doc="a + b"),
    OpDef("sub", 2, lambda a, b: a - b, doc="a - b"),
    OpDef("mul", 2, lambda a, b: a * b, doc="a * b"),
    OpDef("div", 2, lambda a, b: a / b, doc="a / b, IEEE round to nearest"),
    OpDef("neg", 1, lambda a: -a, doc="-a"),
    OpDef("copy", 1, lambda a: a, cost=0, doc="a (a constant or a host scalar broadcast)"),
    OpDef("sqrt", 1, sp.sqrt, doc="sqrt(a), IEEE round to nearest"),
    OpDef("abs", 1, sp.Abs, sympy=sp.Abs),
    OpDef("sign", 1, sp.sign, sympy=sp.sign, doc="-1, 0, 1; NaN stays NaN"),
    OpDef("exp", 1, sp.exp, sympy=sp.exp),
    OpDef("log", 1, sp.log, sympy=sp.log),
    OpDef("tanh", 1, sp.tanh, sympy=sp.tanh),
    OpDef("softplus", 1, softplus, sympy=softplus, doc="log(1 + exp(a)), computed stably"),
    OpDef("cbrt", 1, lambda a: a ** sp.Rational(1, 3), doc="a**(1/3); NaN for a < 0"),
    OpDef(
        "pow",
        2,
        lambda a, b: a**b,
        doc="a**b, b a constant exponent; NaN for a < 0 unless b is whole",
    ),
    OpDef("max", 2, sp.Max, sympy=sp.Max, doc="NaN-propagating"),
    OpDef("min", 2, sp.Min, sympy=sp.Min, doc="NaN-propagating"),
    OpDef("gt", 2, sp.StrictGreaterThan, sympy=sp.StrictGreaterThan, boolean=True),
    OpDef("ge", 2, sp.GreaterThan, sympy=sp.GreaterThan, boolean=True),
    OpDef("lt", 2, sp.StrictLessThan, sympy=sp.StrictLessThan, boolean=True),
    OpDef("le", 2, sp.LessThan, sympy=sp.LessThan, boolean=True),
    OpDef("ne", 2, _ne, boolean=True, doc="a host condition arrives as 1.0/0.0"),
    OpDef(
        "where",
        3,
        lambda c, a, b: sp.Piecewise((a, c), (b, True)),
        sympy=sp.Piecewise,
        doc="c ? a : b",
    ),
    OpDef("mod", 2, sp.Mod, sympy=sp.Mod, host_only=True),
    OpDef("cos", 1, sp.cos, sympy=sp.cos, host_only=True, doc="schedules (cosine decay)"),
    OpDef("sin", 1, sp.sin, sympy=sp.sin, host_only=True, doc="schedules"),
    OpDef("floor", 1, sp.floor, sympy=sp.floor, host_only=True),
    OpDef(
        "f32", 1, f32, sympy=f32, host_only=True, doc="rounded to float32, as a kernel's scalars"
    ),
    OpDef("ceiling", 1, sp.ceiling, sympy=sp.ceiling, host_only=True),
    # Matrix operations (codegen/matrix.py): operands are whole (rows, cols) matrices.
    OpDef("matmul", 2, sp.MatMul, matrix=True, cost=2, doc="a @ b: 2 flops per multiply-add"),
    OpDef("transpose", 1, sp.Transpose, matrix=True, cost=0, doc="a.T: a view, no arithmetic"),
    OpDef("madd", 2, lambda a, b: a + b, matrix=True, cost=1, doc="a + b, elementwise on matrices"),
    OpDef("mscale", 2, lambda s, a: s * a, matrix=True, cost=1, doc="s * a, s a host scalar"),
)

BY_NAME: dict[str, OpDef] = {op.name: op for op in OPS}
ELEMENT_OPS: tuple[str, ...] = tuple(op.name for op in OPS if not op.host_only and not op.matrix)
MATRIX_OPS: tuple[str, ...] = tuple(op.name for op in OPS if op.matrix)
BOOLEAN: frozenset[str] = frozenset(op.name for op in OPS if op.boolean)
# SymPy function class -> op, for every op a spec writes as a function (unary, Max/Min,
# comparisons, Piecewise); arithmetic (Add, Mul, Pow) is built structurally by the linearizer.
FROM_SYMPY: dict[type[sp.Basic], OpDef] = {op.sympy: op for op in OPS if op.sympy is not None}
RELATIONALS: tuple[type[sp.Basic], ...] = tuple(
    op.sympy for op in OPS if op.boolean and op.sympy is not None
)
HOST_ONLY: tuple[type[sp.Basic], ...] = tuple(
    op.sympy for op in OPS if op.host_only and op.sympy is not None
)
SPEC_FUNCTIONS: tuple[type[sp.Basic], ...] = tuple(
    op.sympy for op in OPS if op.sympy is not None and not op.boolean and not op.host_only
)


def supported_text() -> str:
    """What a spec may write per element and what only on the host, by the names it writes:
    the one list every refusal of an unsupported function gives."""
    functions = [f.__name__ for f in SPEC_FUNCTIONS if f is not sp.Piecewise]
    host = sorted(f.__name__ for f in HOST_ONLY)
    return (
        f"per element: +, -, *, /, sqrt, cbrt and other constant powers, {', '.join(functions)}, "
        "comparisons joined by &, |, ~, Eq, Ne, and Piecewise; on the host only (of "
        f"hyperparameters, t and finished sums) also {', '.join(host)}"
    )


# Boolean structure: fine in host expressions (flags, choices, schedules); per element, the
# lowering accepts only plain comparisons and says so.
# ITE: SymPy's form of a comparison with a Piecewise operand (a select between two masks)
BOOLEAN_STRUCTURE: tuple[type[sp.Basic], ...] = (
    sp.Eq,
    sp.Ne,
    sp.And,
    sp.Or,
    sp.Not,
    ExprCondPair,
    sp.logic.boolalg.ITE,
)


class Guarded(sp.Function):
    """``Guarded(value, condition)``: a host scalar that is only used where ``condition`` holds
    (a Piecewise branch's), computed only there (0 elsewhere), so that ``x / s`` under ``s > 0``
    never divides by a zero ``s`` on the host. The lowering adds it; specs never write it."""

    nargs = 2

    @classmethod
    def eval(cls, value: sp.Expr, condition: sp.Expr) -> sp.Expr | None:
        if condition is sp.true:
            return value
        if condition is sp.false:
            return sp.Integer(0)
        return None


def unguarded(expr: sp.Expr) -> sp.Expr:
    """``expr`` with every :class:`Guarded` replaced by its value (equal where it is used)."""
    return expr.replace(lambda e: isinstance(e, Guarded), lambda e: e.args[0])


def build(name: str, *args: sp.Expr) -> sp.Expr:
    """The SymPy value of ``name(*args)``: how the tests rebuild the equations from the ops."""
    return BY_NAME[name].build(*args)


def matrix_cost(name: str, *shapes: tuple[int, int]) -> int:
    """Flops of matrix op ``name`` on operands of the given (rows, cols) shapes: what the matrix
    lowering minimises (a matmul of (m, k) by (k, n) is m*k*n multiply-adds)."""
    op = BY_NAME[name]
    if not op.matrix:
        raise ValueError(f"{name} is not a matrix operation")
    if name == "matmul":
        (m, k), (_, n) = shapes
        return op.cost * m * k * n
    rows, cols = shapes[-1]
    return op.cost * rows * cols


def require(target: str, entries: Mapping[str, object]) -> None:
    """Fail at import when ``target``'s printer lacks an element operation (or has a stray one)."""
    missing = [name for name in ELEMENT_OPS if name not in entries]
    if missing:
        raise ImportError(
            f"the {target} printer has no entry for operation(s) {', '.join(missing)} "
            "(codegen/ops.py lists every operation; add the entry to the printer)"
        )
    unknown = sorted(set(entries) - set(ELEMENT_OPS))
    if unknown:
        raise ImportError(f"the {target} printer prints unknown operation(s) {', '.join(unknown)}")


def element_constant(value: sp.Expr, where: str = "") -> float:
    """A per-element constant as a double; it must be 0 or a normal float32 number (the kernels
    compute in float32). ``where``: the spec file or ``file:line`` the error names."""
    x = float(value)
    prefix = f"{where}: " if where else ""
    if math.isinf(x) or math.isnan(x):
        raise SpecError(f"{prefix}per-element constant {x!r} is not finite")
    tiny, largest = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)
    if x != 0 and not (tiny <= abs(x) <= largest):
        raise SpecError(
            f"{prefix}per-element constant {x!r} is outside float32's normal range "
            f"({tiny:.4g} to {largest:.4g} in magnitude)"
        )
    return x
