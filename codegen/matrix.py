"""Matrix equations: a spec's values that act on the weight as a whole (rows, cols) matrix.

A spec writes the per-element part of a rule in the usual language and its matrix part with
:func:`iterate`: a per-element value viewed as the weight's matrix is the start ``X``, and a
function of ``X`` built from products (``@``), transposes (``.T``), sums and host-scalar multiples
is applied ``steps`` times (``steps`` an integer hyperparameter). Muon's Newton-Schulz iteration
is four lines::

    def newton_schulz(X):
        A = X @ X.T
        return a * X + (b * A + c * (A @ A)) @ X

    ortho = matrix.iterate(RULE, "ortho", X0, ns_steps, newton_schulz)

``ortho`` is then a per-element value like any other. ``precision=`` names a choice
hyperparameter (:meth:`codegen.spec.Rule.choice`) of the values in :data:`PRECISIONS`: at
``"bfloat16"`` (or ``"float16"``) the iteration holds its matrices in that format, as
``torch.optim.Muon`` holds them: the *held* values (the start, every operand of a product and
each step's result; :func:`held_values`) are stored in the format, rounded once to nearest, ties
to even, from the weight's dtype, in which every other value is computed (a product's exact
sum accumulated in at least float32). So ``b * A + c * (A @ A)``, whose product feeds only
that sum, is one rounding, as a BLAS ``gemm`` with ``beta`` computes it
(``torch.addmm``: :func:`held_program` fuses such sums); at ``"weight"`` everything is computed
and kept in the weight's dtype. A value used twice (``A``) is computed once:
the matrix equations are a graph of :class:`Mat` nodes, lowered to three-address matrix ops of
the one operation table (``matmul``, ``transpose``, ``madd``, ``mscale`` in :mod:`codegen.ops`),
each with a flop cost (:func:`codegen.ops.matrix_cost`). The lowering proves with SymPy whether
the step is transpose-equivariant (``f(X^T)^T = f(X)``: any odd polynomial ``p(X X^T) X``); if
so the generated code runs it on whichever orientation of the matrix costs fewer flops (the
Gram matrix of the shorter side), chosen at run time from the shape.

A rule with matrix equations needs a 2-D weight: the generated code refuses any other shape
before anything is written (torch.optim.Muon refuses them too). The rest of the generator
(``codegen/matrix_targets.py``) prints these rules whole-matrix, unchunked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import sympy as sp

from codegen import ops
from codegen.errors import SpecError
from codegen.spec import Rule
from codegen.spec_parts import ELEMENT


class Mat:
    """A node of a spec's matrix equations: ``kind`` is ``input`` or a matrix op of
    :mod:`codegen.ops`; ``shape`` is ``("r", "c")`` (the weight's) or ``("c", "r")`` etc."""

    def __init__(
        self,
        rule: Rule,
        kind: str,
        args: tuple[Mat, ...],
        shape: tuple[str, str],
        scalar: sp.Expr | None = None,
    ) -> None:
        self.rule, self.kind, self.args, self.shape, self.scalar = rule, kind, args, shape, scalar

    def _fail(self, why: str) -> SpecError:
        return SpecError(f"{self.rule._where()}: matrix equation: {why}")

    @property
    def T(self) -> Mat:
        return Mat(self.rule, "transpose", (self,), (self.shape[1], self.shape[0]))

    def __matmul__(self, other: object) -> Mat:
        if not isinstance(other, Mat):
            raise self._fail(f"@ needs two matrices, not {other!r} (scale with *)")
        if self.shape[1] != other.shape[0]:
            raise self._fail(
                f"product of shapes {self._dims()} and {other._dims()}: inner sizes differ"
            )
        return Mat(self.rule, "matmul", (self, other), (self.shape[0], other.shape[1]))

    def __add__(self, other: object) -> Mat:
        if not isinstance(other, Mat):
            raise self._fail(f"a matrix plus {other!r}: add matrices, scale with *")
        if self.shape != other.shape:
            raise self._fail(f"sum of shapes {self._dims()} and {other._dims()}")
        return Mat(self.rule, "madd", (self, other), self.shape)

    def __sub__(self, other: object) -> Mat:
        return self + (-1) * other  # type: ignore[operator]

    def __neg__(self) -> Mat:
        return (-1) * self

    def __mul__(self, scalar: object) -> Mat:
        if isinstance(scalar, Mat):
            raise self._fail("* of two matrices: write the product with @")
        expr = self.rule._sympify(scalar, "a matrix's scale")
        host = set(self.rule.host_inputs)
        if not expr.free_symbols <= host:
            extra = sorted(map(str, expr.free_symbols - host))
            raise self._fail(
                f"a matrix's scale must be a host scalar (hyperparameters, t, sizes), not {extra}"
            )
        return Mat(self.rule, "mscale", (self,), self.shape, expr)

    __rmul__ = __mul__

    def _dims(self) -> str:
        return "(" + ", ".join({"r": "rows", "c": "cols"}[d] for d in self.shape) + ")"


@dataclass(frozen=True)
class MatOp:
    """``dest = kind(*args)`` on whole matrices; ``scalar`` is ``mscale``'s host factor."""

    dest: str
    kind: str
    args: tuple[str, ...]
    scalar: sp.Expr | None = None


# The formats an iteration may be held in (``iterate(..., precision=choice)``): "weight" is the
# weight's dtype; the others round every matrix op's result to that format (the generated code
# maps each name to its NumPy emulation and its torch dtype: optgen_runtime.lowp).
PRECISIONS = ("weight", "bfloat16", "float16")


@dataclass
class Iteration:
    """``symbol = body^steps(start)``: a per-element value computed by matrix equations."""

    name: str
    symbol: sp.Symbol
    start: sp.Symbol
    steps: sp.Symbol
    body: Mat
    line: int
    equivariant: bool = False
    program: list[MatOp] = field(default_factory=list)
    precision: sp.Symbol | None = None  # a choice hyperparameter of PRECISIONS, or None
    precisions: tuple[str, ...] = ("weight",)  # its choices, in order

    def sympy(self, x: sp.MatrixExpr) -> sp.MatrixExpr:
        """One step as a SymPy matrix expression of ``x`` (built from the ops' ``build``)."""
        values: dict[int, sp.MatrixExpr] = {}

        def value(node: Mat) -> sp.MatrixExpr:
            if id(node) not in values:
                if node.kind == "input":
                    values[id(node)] = x
                elif node.kind == "mscale":
                    values[id(node)] = ops.build("mscale", node.scalar, value(node.args[0]))
                else:
                    values[id(node)] = ops.build(node.kind, *(value(a) for a in node.args))
            return values[id(node)]

        return value(self.body)

    def cost(self, rows: sp.Expr, cols: sp.Expr) -> sp.Expr:
        """Flops of one step on a (rows, cols) matrix, as a polynomial in the sizes."""
        shapes = {"X": (rows, cols)}
        total = sp.Integer(0)
        for op in self.program:
            arg_shapes = [shapes[a] for a in op.args]
            if op.kind == "matmul":
                shapes[op.dest] = (arg_shapes[0][0], arg_shapes[1][1])
                total += (
                    ops.BY_NAME["matmul"].cost
                    * arg_shapes[0][0]
                    * arg_shapes[0][1]
                    * (arg_shapes[1][1])
                )
            elif op.kind == "transpose":
                shapes[op.dest] = (arg_shapes[0][1], arg_shapes[0][0])
            else:
                shapes[op.dest] = arg_shapes[-1]
                total += ops.BY_NAME[op.kind].cost * arg_shapes[-1][0] * arg_shapes[-1][1]
        return sp.expand(total)


def iterate(
    rule: Rule,
    name: str,
    start: sp.Symbol,
    steps: sp.Symbol,
    body: Callable[[Mat], Mat],
    *,
    precision: sp.Symbol | None = None,
) -> sp.Symbol:
    """Declare ``name = body(body(... body(start)))`` (``steps`` times) on the weight's matrix.

    ``start``: a per-element value (a ``let``), viewed as the (rows, cols) matrix of the weight;
    ``steps``: an integer hyperparameter (``integer()``); ``body``: a function of one :class:`Mat`
    returning a Mat of the same shape; ``precision``: a choice hyperparameter whose choices are
    among :data:`PRECISIONS` (the format the iteration's matrices are held in; default the
    weight's dtype). Returns the result as a per-element symbol.
    """
    if not isinstance(rule, Rule):
        raise SpecError(f"matrix.iterate needs the spec's Rule, not {rule!r}")
    where = rule._where()
    if not isinstance(start, sp.Symbol) or start not in rule.lets or rule.domain(start) != ELEMENT:
        raise SpecError(
            f"{where}: matrix value {name!r} starts from {start!r}, which is not a per-element let"
        )
    hyper = next((h for h in rule.hypers.values() if h.symbol == steps), None)
    if hyper is None or not hyper.legal.integer or hyper.legal.lo < 0:
        raise SpecError(
            f"{where}: matrix value {name!r} repeats its step {steps!r} times: that must be a "
            "hyperparameter declared with integer(0, ...)"
        )
    precisions: tuple[str, ...] = ("weight",)
    if precision is not None:
        chosen = next((h for h in rule.hypers.values() if h.symbol == precision), None)
        if chosen is None or not chosen.legal.choices:
            raise SpecError(
                f"{where}: matrix value {name!r}: precision={precision!r} must be a choice "
                f"hyperparameter (RULE.choice) of {PRECISIONS}"
            )
        unknown = [c for c in chosen.legal.choices if c not in PRECISIONS]
        if unknown:
            raise SpecError(
                f"{where}: matrix value {name!r}: precision {chosen.name!r} offers {unknown}, "
                f"not among {PRECISIONS}"
            )
        precisions = tuple(chosen.legal.choices)
    rule._claim(name, "matrix value")
    x = Mat(rule, "input", (), ("r", "c"))
    result = body(x)
    if not isinstance(result, Mat):
        raise SpecError(f"{where}: the step of matrix value {name!r} returns {result!r}, not a Mat")
    if result.shape != x.shape:
        raise SpecError(
            f"{where}: the step of matrix value {name!r} maps (rows, cols) to {result._dims()}"
        )
    symbol = sp.Symbol(name, real=True)
    iteration = Iteration(
        name, symbol, start, steps, result, rule._line(), precision=precision, precisions=precisions
    )
    iteration.program = linearize(iteration)
    iteration.equivariant = transpose_equivariant(iteration)
    rule.matrix_values[symbol] = iteration
    return symbol


def linearize(iteration: Iteration) -> list[MatOp]:
    """The step as three-address matrix ops; a node used twice is computed once. The input is
    ``X``, the result the last op's ``dest``, temporaries ``_m<k>``."""
    program: list[MatOp] = []
    names: dict[int, str] = {}

    def visit(node: Mat) -> str:
        if id(node) in names:
            return names[id(node)]
        if node.kind == "input":
            names[id(node)] = "X"
            return "X"
        args = tuple(visit(a) for a in node.args)
        dest = f"_m{len(program)}"
        program.append(MatOp(dest, node.kind, args, node.scalar))
        names[id(node)] = dest
        return dest

    visit(iteration.body)
    if not program:  # the identity step: one copy, so that the result is a fresh matrix
        program.append(MatOp("_m0", "mscale", ("X",), sp.Integer(1)))
    return program


def transpose_equivariant(iteration: Iteration) -> bool:
    """True when SymPy proves ``step(X^T)^T == step(X)``: then the step may run on either
    orientation and the generated code takes the cheaper one."""
    rows, cols = sp.symbols("rows cols", positive=True, integer=True)
    x = sp.MatrixSymbol("X", rows, cols)

    def flat(e: sp.MatrixExpr) -> sp.MatrixExpr:
        """Products spelled out (SymPy writes A @ A as a power), sums distributed."""
        e = e.doit()
        for _ in range(8):  # nested powers, innermost last
            if not any(isinstance(n, sp.MatPow) for n in sp.preorder_traversal(e)):
                break
            e = e.replace(
                lambda n: isinstance(n, sp.MatPow) and n.exp.is_Integer and n.exp > 0,
                lambda n: sp.MatMul(*[n.base] * int(n.exp)),
            )
        return sp.expand(e)

    try:
        difference = flat(iteration.sympy(x) - sp.Transpose(iteration.sympy(x.T)))
    except (TypeError, ValueError, AttributeError, NotImplementedError):
        return False
    return difference == 0 or difference == sp.ZeroMatrix(rows, cols)


def held_values(iteration: Iteration) -> set[str]:
    """The values an iteration with a precision stores in its format: the input ``X``, each
    step's result (the last op's), every operand of a product and the transposes between."""
    made = {op.dest: op for op in iteration.program}
    held = {"X", iteration.program[-1].dest}

    def hold(name: str) -> None:
        held.add(name)
        op = made.get(name)
        if op is not None and op.kind == "transpose":  # a transpose moves values: its source
            hold(op.args[0])

    for op in iteration.program:
        if op.kind == "matmul":
            for a in op.args:
                hold(a)
    return held


@dataclass(frozen=True)
class HeldOp:
    """``dest = kind(*args)``, rounded to the iteration's format if ``held``. ``kind`` is a
    matrix op or ``addmm``: ``dest = s * C + t * (A @ B)`` for args ``(C, A, B)`` and
    ``scalars`` ``(s, t)`` (None: 1), computed as ``gemm`` computes it, rounded once."""

    dest: str
    kind: str
    args: tuple[str, ...]
    scalars: tuple[sp.Expr | None, ...] = ()
    held: bool = False


def held_program(iteration: Iteration) -> list[HeldOp]:
    """The step's ops as the generated code runs them: each marked held or not
    (:func:`held_values`); a held sum of a product that nothing else reads and a held value
    (or its multiple) is one ``addmm`` (``torch.addmm``'s one rounding of ``beta C + alpha A B``;
    its operands are held, so a format's product runs in that format)."""
    program = iteration.program
    held = held_values(iteration)
    made = {op.dest: op for op in program}
    uses: dict[str, int] = {program[-1].dest: 1}
    for op in program:
        for a in op.args:
            uses[a] = uses.get(a, 0) + 1

    def inner(name: str) -> bool:  # computed here, read once, not held: may be fused away
        return name in made and uses.get(name) == 1 and name not in held

    def product(name: str) -> tuple[tuple[str, ...], sp.Expr | None, list[str]] | None:
        op = made.get(name)
        if op is None or not inner(name):
            return None
        if op.kind == "matmul":
            return op.args, None, [name]
        scaled = made.get(op.args[0]) if op.kind == "mscale" else None
        if scaled is not None and scaled.kind == "matmul" and inner(scaled.dest):
            return scaled.args, op.scalar, [name, scaled.dest]
        return None

    fused: dict[str, HeldOp] = {}
    gone: set[str] = set()
    for op in program:
        if op.kind != "madd" or op.dest not in held:
            continue
        for p, q in (op.args, op.args[::-1]):
            found = product(q)
            if found is None:
                continue
            (a, b), t, parts = found
            scaled = made.get(p)
            if scaled is not None and scaled.kind == "mscale" and inner(p):
                c, s, parts = scaled.args[0], scaled.scalar, [*parts, p]
            else:
                c, s = p, None
            if c not in held:  # the sum's other term must be held (gemm's C, in the format)
                continue
            fused[op.dest] = HeldOp(op.dest, "addmm", (c, a, b), (s, t), True)
            gone |= set(parts)
            break
    return [
        fused.get(op.dest) or HeldOp(op.dest, op.kind, op.args, (op.scalar,), op.dest in held)
        for op in program
        if op.dest not in gone
    ]


def iterations(rule: Rule) -> list[Iteration]:
    """The rule's matrix values, in declaration order."""
    return list(rule.matrix_values.values())  # type: ignore[arg-type]


def is_matrix_rule(rule: Rule) -> bool:
    return bool(getattr(rule, "matrix_values", None))


def op_counts(iteration: Iteration) -> dict[str, int]:
    """How many of each matrix op one step runs."""
    counts: dict[str, int] = {}
    for op in iteration.program:
        counts[op.kind] = counts.get(op.kind, 0) + 1
    return counts
