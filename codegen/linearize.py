"""Lowering pass 4 (:mod:`codegen.lower`): expressions into three-address operations from
:mod:`codegen.ops`, the form every printer consumes; what a kernel cannot do is refused here, by
name and spec line."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import sympy as sp

from codegen import ops as opdefs
from codegen.ir import Assign, Block, Operand, Origin
from codegen.spec import Rule, SpecError


class Linearizer:
    """Turns expressions into three-address ops, refusing what a kernel cannot do."""

    RELATIONAL: ClassVar[dict[type, str]] = {
        op.sympy: op.name for op in opdefs.OPS if op.boolean and op.sympy
    }
    UNARY: ClassVar[dict[type, str]] = {
        op.sympy: op.name
        for op in opdefs.OPS
        if op.arity == 1 and op.sympy is not None and not op.host_only
    }

    def __init__(
        self,
        rule: Rule,
        role: str,
        host: set[sp.Symbol] | dict[sp.Symbol, sp.Expr],
        temp: Callable,
    ) -> None:
        self.rule = rule
        self.role = role
        self.host = host  # the host scalars (with their values: refusals show those)
        self.temp = temp
        self.assigns: list[Assign] = []
        self.origins: tuple[Origin, ...] = ()  # the spec lines of the equation being lowered

    def emit(self, kind: str, *args: Operand, dest: sp.Symbol | None = None) -> sp.Symbol:
        dest = dest if dest is not None else self.temp()
        expr = opdefs.build(kind, *args) if kind != "copy" else args[0]
        self.assigns.append(Assign(dest, expr, self.role, op=kind, args=tuple(args)))
        return dest

    def fail(self, expr: sp.Expr, why: str) -> SpecError:
        """A refusal at the spec line of the equation being lowered, where it is known."""
        where = self.rule.source
        if self.origins:
            where = f"{self.origins[0].file}:{self.origins[0].line}"
        if isinstance(self.host, dict):  # the spec's terms, not the host scalars' names
            for _ in range(len(self.host)):
                shown = opdefs.unguarded(expr.xreplace(self.host))
                if shown == expr:
                    break
                expr = shown
        return SpecError(f"{where}: cannot generate per-element code for {expr}: {why}")

    def unsupported(self, expr: sp.Expr) -> SpecError:
        """``expr`` has no per-element op: say what there is, and where it may go instead."""
        name = type(expr).__name__
        where = (
            f"{name} is computed on the host only"
            if type(expr) in opdefs.HOST_ONLY
            else f"{name} is not supported"
        )
        return self.fail(expr, f"{where} ({opdefs.supported_text()})")

    def operand(self, expr: sp.Expr) -> Operand:
        """A leaf as it is, anything else computed into a fresh temporary. A constant expression
        (``2**(2/5)``, ``sqrt(2)``: SymPy splits ``(2*g)**(2/5)`` into ``2**(2/5) * g**(2/5)``) is
        a leaf: the printers write its value, never an operation per element."""
        if isinstance(expr, sp.UnevaluatedExpr):  # as_is: its value, computed first
            return self.operand(expr.args[0])
        if isinstance(expr, sp.Symbol):
            return expr
        if expr.is_Number or isinstance(expr, sp.core.numbers.NumberSymbol):
            return expr
        if isinstance(expr, sp.Expr) and not expr.free_symbols:
            return expr
        return self.node(expr, None)

    def node(self, expr: sp.Expr, dest: sp.Symbol | None) -> sp.Symbol:
        """Compute ``expr`` (not a leaf) with its last op writing ``dest``."""
        if isinstance(expr, sp.UnevaluatedExpr):  # as_is: computed first, one operand
            inner = expr.args[0]
            if isinstance(inner, sp.Symbol) or not inner.free_symbols:
                return self.emit("mul", self.operand(inner), sp.Integer(1), dest=dest)
            return self.node(inner, dest)
        if isinstance(expr, sp.Add):
            return self.add(expr, dest)
        if isinstance(expr, sp.Mul):
            return self.mul(expr, dest)
        if isinstance(expr, sp.Pow):
            return self.pow(expr, dest)
        if isinstance(expr, (sp.Max, sp.Min)):
            kind = opdefs.FROM_SYMPY[type(expr)].name
            args = [self.operand(a) for a in expr.args]
            acc = args[0]
            for i, a in enumerate(args[1:], start=1):
                acc = self.emit(kind, acc, a, dest=dest if i == len(args) - 1 else None)
            return acc  # type: ignore[return-value]
        if type(expr) in self.UNARY:
            return self.emit(self.UNARY[type(expr)], self.operand(expr.args[0]), dest=dest)
        if isinstance(expr, sp.Piecewise):
            return self.piecewise(expr, dest)
        if isinstance(expr, sp.logic.boolalg.ITE):
            # SymPy's form of a comparison with a Piecewise operand (g > Piecewise(...) becomes
            # ITE(c, g > a, g > b)): a select between two masks
            condition, yes, no = expr.args
            mask = self.mask(condition)
            yes_, no_ = self.branch(yes, mask), self.branch(no, mask)
            return self.emit("where", mask, yes_, no_, dest=dest)
        if type(expr) in self.RELATIONAL:
            lhs, rhs = (self.operand(a) for a in expr.args)
            return self.emit(self.RELATIONAL[type(expr)], lhs, rhs, dest=dest)
        if isinstance(expr, (sp.And, sp.Or)):
            # masks joined by selects: a & b is ``a ? b : a``, a | b is ``a ? a : b``
            masks = [self.mask(a) for a in expr.args]
            acc = masks[0]
            for i, m in enumerate(masks[1:], start=1):
                last = dest if i == len(masks) - 1 else None
                yes, no = (m, acc) if isinstance(expr, sp.And) else (acc, m)
                acc = self.emit("where", acc, yes, no, dest=last)
            return acc  # type: ignore[return-value]
        if isinstance(expr, sp.Not):
            # Python's ``not`` of a mask (true where the condition is false, NaN's included):
            # a select between the constant masks made from it
            mask = self.mask(expr.args[0])
            no, yes = self.branch(sp.false, mask), self.branch(sp.true, mask)
            return self.emit("where", mask, no, yes, dest=dest)
        if isinstance(expr, (sp.Eq, sp.Ne)):
            lhs, rhs = (self.operand(a) for a in expr.args)
            if isinstance(expr, sp.Ne):  # IEEE: true where either is NaN
                return self.emit("ne", lhs, rhs, dest=dest)
            ge = self.emit("ge", lhs, rhs)  # a == b as a >= b and a <= b: false at NaN
            return self.emit("where", ge, self.emit("le", lhs, rhs), ge, dest=dest)
        raise self.unsupported(expr)

    def mask(self, condition: sp.Expr) -> Operand:
        """A condition as a per-element mask (a host condition arrives as 1.0/0.0)."""
        mask = self.operand(condition)
        if mask in self.host:
            mask = self.emit("ne", mask, sp.Integer(0))
        return mask

    def wrap(self, operand: Operand, dest: sp.Symbol | None) -> sp.Symbol:
        """Make sure the value lands in ``dest`` (a copy when it is a leaf)."""
        if dest is None and isinstance(operand, sp.Symbol):
            return operand
        return self.emit("copy", operand, dest=dest)

    def add(self, expr: sp.Add, dest: sp.Symbol | None) -> sp.Symbol:
        """A sum, left to right: per-element terms first, the host-only term (at most one, after
        ``extract_host``) last, so that ``n - g**2 + epsilon`` adds epsilon to the difference,
        as the spec and MXNet do, never to ``n`` first (where float32 would lose it). Within each
        part the order is SymPy's canonical one; the generator reorders a sum in no other way.
        """

        def host_only(term: sp.Expr) -> bool:
            term = -term if term.could_extract_minus_sign() else term
            return term in self.host or bool(term.is_Number)

        ordered = sorted(expr.args, key=host_only)  # stable: canonical order within each part
        plus = [a for a in ordered if not a.could_extract_minus_sign()]
        minus = [-a for a in ordered if a.could_extract_minus_sign()]
        if not plus:  # -(a + b + ...)
            total = self.operand(sp.Add(*minus, evaluate=False)) if len(minus) > 1 else None
            arg = total if total is not None else self.operand(minus[0])
            return self.emit("neg", arg, dest=dest)
        # start from the first added term, then every other term in order
        first = plus[0]
        terms = [
            (
                "sub" if a.could_extract_minus_sign() else "add",
                -a if a.could_extract_minus_sign() else a,
            )
            for a in ordered
            if a is not first
        ]
        acc = self.operand(first)
        for i, (kind, term) in enumerate(terms, start=1):
            last = i == len(terms)
            acc = self.emit(kind, acc, self.operand(term), dest=dest if last else None)
        return self.wrap(acc, dest) if not terms else acc  # type: ignore[return-value]

    def mul(self, expr: sp.Mul, dest: sp.Symbol | None) -> sp.Symbol:
        coeff, factors = expr.as_coeff_mul()
        num: list[sp.Expr] = []
        den: list[sp.Expr] = []
        for f in factors:
            if isinstance(f, sp.Pow) and f.exp.is_Number and f.exp < 0:
                den.append(f.base if f.exp == -1 else sp.Pow(f.base, -f.exp, evaluate=False))
            else:
                num.append(f)
        negate = coeff < 0
        operands: list[Operand] = [self.operand(f) for f in num]
        if abs(coeff) != 1:
            operands.insert(0, abs(coeff))
        plan: list[tuple[str, Operand | None]] = [("mul", o) for o in operands[1:]]
        if den:
            plan.append(("div", self.operand(sp.Mul(*den, evaluate=False))))
        if negate:
            plan.append(("neg", None))
        acc: Operand = operands[0] if operands else sp.Integer(1)
        if not plan:
            return self.wrap(acc, dest)
        for i, (kind, other) in enumerate(plan):
            last = dest if i == len(plan) - 1 else None
            acc = (
                self.emit(kind, acc, dest=last)
                if other is None
                else self.emit(kind, acc, other, dest=last)
            )
        return acc  # type: ignore[return-value]

    def pow(self, expr: sp.Pow, dest: sp.Symbol | None) -> sp.Symbol:
        """A constant power (codegen/ops.py says which op does what, and the rule for negative
        bases): whole exponents 2..4 multiply, negative ones divide, q = 2 and q = 3 in p/q take
        ``sqrt``/``cbrt`` of the base times a whole power of it, anything else is ``pow``."""
        base, exp = expr.base, expr.exp
        if not exp.is_Number:
            raise self.fail(
                expr,
                "a per-element power needs a constant exponent, a number (2, Rational(1, 3), "
                "0.25), not "
                + (
                    "a symbolic constant (write its value as a float)"
                    if not exp.free_symbols
                    else "a symbol (for a base > 0, exp(k*log(x)) is x**k: AdaHessian's "
                    "hessian_power; a special_case at the exponent's usual value makes that one "
                    "exact)"
                ),
            )
        if exp < 0:
            return self.emit("div", sp.Integer(1), self.operand(sp.Pow(base, -exp)), dest=dest)
        if exp.is_Integer and 2 <= exp <= 4:
            b = self.operand(base)
            acc = b
            for i in range(int(exp) - 1):
                acc = self.emit("mul", acc, b, dest=dest if i == int(exp) - 2 else None)
            return acc  # type: ignore[return-value]
        if exp.is_Rational and exp.q in (2, 3):
            kind, b = ("sqrt" if exp.q == 2 else "cbrt"), self.operand(base)
            if exp.p == 1:
                return self.emit(kind, b, dest=dest)
            root = self.emit(kind, b)
            factors: list[Operand] = [root] * (exp.p % exp.q)
            if exp.p >= exp.q:  # the whole part first: x * cbrt(x), as x**(4/3) reads
                factors.insert(0, self.operand(sp.Pow(base, exp.p // exp.q)))
            acc = factors[0]
            for i, f in enumerate(factors[1:], start=1):
                acc = self.emit("mul", acc, f, dest=dest if i == len(factors) - 1 else None)
            return acc  # type: ignore[return-value]
        return self.emit("pow", self.operand(base), exp, dest=dest)

    def piecewise(self, expr: sp.Piecewise, dest: sp.Symbol | None) -> sp.Symbol:
        (value, cond), *rest = expr.args
        if cond is sp.true:
            return self.wrap(self.operand(value), dest)
        if not rest:
            raise self.fail(expr, "a Piecewise needs a final (value, True) branch")
        mask = self.mask(cond)
        otherwise = self.branch(sp.Piecewise(*rest), mask)
        return self.emit("where", mask, self.branch(value, mask), otherwise, dest=dest)

    def branch(self, value: sp.Basic, mask: Operand) -> Operand:
        """A select's branch; a Boolean constant (SymPy folds ``Abs(Piecewise((0, c), (g,
        True))) > 0`` into ``Piecewise((False, c), (|g| > 0, True))``) as a mask of that value
        made from ``mask`` (no NaN in a mask: ``m >= m`` is true, ``m != m`` false)."""
        if value is sp.true or value is sp.false:
            return self.emit("ge" if value is sp.true else "ne", mask, mask)
        return self.operand(value)

    def phase(self, assigns: list[Assign], outputs: set[sp.Symbol]) -> list[Assign]:
        """Linearize a phase's CSE temporaries and outputs (in order)."""
        # A CSE temporary that is exactly an output is computed straight into that output.
        alias: dict[sp.Symbol, sp.Symbol] = {}
        temps = {a.target for a in assigns if a.target not in outputs}
        for a in assigns:
            if a.target in outputs and a.expr in temps and a.expr not in alias:
                alias[a.expr] = a.target
        origins = {a.target: a.origin for a in assigns}
        for a in assigns:
            target = alias.get(a.target, a.target)
            expr = a.expr.xreplace(alias) if alias else a.expr
            if a.target in outputs and expr == target:
                continue  # computed above, in place of its CSE temporary
            start = len(self.assigns)
            self.origins = origins.get(a.target) or ()
            if isinstance(expr, sp.Symbol) or not expr.free_symbols:
                self.emit("copy", self.operand(expr), dest=target)
            else:
                self.node(expr, target)
            if origins.get(a.target) and len(self.assigns) > start:
                last = self.assigns[-1]
                self.assigns[-1] = last.with_(origin=origins[a.target])
        return self.assigns


def linearize(block: Block) -> Block:
    """Three-address operations per phase; temporaries ``_v<k>`` unique across the rule."""
    rule: Rule = block.rule
    host = {a.target: a.expr for a in block.role("host")}
    new_value = lambda: block.temps.new("value")  # noqa: E731
    element = Linearizer(rule, "element", host, new_value).phase(
        block.role("element"), set(rule.outputs.values())
    )
    reduction = []
    for role in block.reduction_roles():
        reduction += Linearizer(rule, role, host, new_value).phase(
            block.role(role), set(rule.staged())
        )
    used = {x for a in reduction for x in a.args}
    if set(rule.draws) & used:
        raise SpecError(f"{rule.source}: a reduction may not use a random draw")
    return block.then("ops", [*block.role("host"), *reduction, *element])
