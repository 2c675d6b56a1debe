"""Lowering: a checked :class:`Rule` through passes over the one IR (:mod:`codegen.ir`).

:func:`from_spec` makes the first block: the spec's equations in dependency order, each with its
role and spec line. Then every pass in :data:`PASSES` maps a block to a block, in order, and
:func:`lower` records each pass's op counts:

1. ``inline``: substitute intermediates and new values, so every output (new states and weight,
   new host states, reductions' summands) is an expression of the step-i inputs and the host
   inputs; each ``let``'s inlined value is kept, to name what later passes compute.
2. ``extract_host``: every maximal subexpression that depends only on host inputs becomes a host
   scalar, computed once per step on the host in double precision and handed to the kernel (bias
   corrections, 1 - beta, -lr, ...). Mixed sums and products are split so that their host-only
   terms form one scalar.
3. ``cse``: one deterministic common-subexpression elimination per phase, over all its outputs.
4. ``linearize``: three-address operations from :mod:`codegen.ops`, the form every printer
   consumes; unsupported constructs are refused here by name.
5. ``name`` (:mod:`codegen.naming`): names what was computed after the spec: a host scalar that
   is a bare hyperparameter, host state or reduction is passed under its own name, one equal to a
   host ``let`` takes the let's name (and host code computes each such let once, by name), a
   per-element value equal to a ``let`` takes its name. Renaming after linearization never
   changes an operation.
6. ``trace`` (:mod:`codegen.naming`): each equation's first operation carries its spec line(s).

Passes 1-4 name their temporaries by position (``_h``, ``_t``, ``_s``, ``_v``) because SymPy orders
the operands of sums and products by name: naming before the operations are fixed would change
the order of floating-point additions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import ClassVar

import sympy as sp
from sympy.functions.elementary.piecewise import ExprCondPair

from codegen import ops as opdefs
from codegen.ir import Assign, Block, Operand, Origin, free_symbols, sweep_role
from codegen.names import Temps
from codegen.naming import expand, name_values, trace
from codegen.spec import Rule, SpecError
from codegen.variants import variants


# ---------------------------------------------------------------------------------- start
def from_spec(rule: Rule) -> Block:
    """The spec's equations in dependency order, each with its role and origin."""
    staged = rule.staged()
    assigns = []
    for eq in rule.ordered_equations():
        if eq.target in staged:
            role = sweep_role(*staged[eq.target])
        elif rule.domain(eq.target) or eq.target in rule.outputs.values():
            role = "element"
        else:
            role = "host"
        assigns.append(Assign(eq.target, eq.expr, role, (eq.origin,)))
    return Block(rule, "spec", tuple(assigns), notes={"equations": tuple(assigns)})


# ---------------------------------------------------------------------------------- pass 1
def inline(block: Block) -> Block:
    """Every new value as an expression of step-i inputs, host inputs and reductions.

    Output order: reductions' summands, new host states, then the per-element outputs in buffer
    order (states, then the weight). Reductions stay symbols: one number per tensor.
    """
    rule: Rule = block.rule
    values: dict[sp.Symbol, sp.Expr] = {}
    summands: list[Assign] = []
    lets: dict[sp.Symbol, tuple[sp.Expr, tuple[Origin, ...]]] = {}
    origins: dict[sp.Symbol, tuple[Origin, ...]] = {}
    staged = rule.staged()
    for a in block.assigns:
        expr = _substitute(a.expr, values)
        origins[a.target] = a.origin
        if a.target in staged:  # computed in a sweep: later phases read it by name
            summands.append(a.with_(expr=expr))
            continue
        values[a.target] = expr
        if a.target in rule.lets:
            lets[a.target] = (expr, a.origin)
    host_updates = []
    for hs in rule.host_states.values():
        expr = values[hs.new]
        # host inputs and the step's reductions (a running norm): never per-element values
        element = expr.free_symbols - set(rule.scalar_inputs)
        if element:
            raise SpecError(
                f"{rule.source}: host state {hs.name} would depend on per-element values "
                f"{', '.join(sorted(map(str, element)))}"
            )
        host_updates.append(Assign(hs.new, expr, "host", origins[hs.new]))
    outputs = [Assign(new, values[new], "element", origins[new]) for new in rule.outputs.values()]
    inlined = {a.target: a.expr for a in outputs}
    raw_summands = {a.target: a.expr for a in summands}
    block = block.then(
        "inlined", [*summands, *host_updates, *outputs], inlined=inlined, raw_summands=raw_summands
    )
    return replace(block, lets=lets)


def _substitute(expr: sp.Expr, values: dict[sp.Symbol, sp.Expr]) -> sp.Expr:
    """``expr.xreplace(values)``, but a Piecewise condition that a substituted value puts a
    Piecewise into is kept as written: SymPy would fold it (``ExprCondPair``), and Signum's
    ``sign(mom_new)`` under ``|mom_new| > 0``, mom_new holding the host's choice between
    clipping and none, became ``ITE(off, |a| > 0, |b| > 0)``: both forms of the momentum
    computed per element where the one named value serves."""
    if expr in values:
        return values[expr]
    if not expr.args or not expr.free_symbols & values.keys():
        return expr
    if not isinstance(expr, sp.Piecewise):
        return expr.func(*(_substitute(a, values) for a in expr.args))
    pairs = [(_substitute(e, values), _substitute(c, values)) for e, c in expr.args]
    if not any(
        c.has(sp.Piecewise) and not old.has(sp.Piecewise)
        for (_, c), (_, old) in zip(pairs, expr.args, strict=True)
    ):
        return sp.Piecewise(*pairs)
    return sp.Basic.__new__(sp.Piecewise, *(sp.Tuple.__new__(ExprCondPair, *p) for p in pairs))


# ---------------------------------------------------------------------------------- pass 2
def _may_fail(expr: sp.Expr) -> bool:
    """True when host code for ``expr`` can raise: a division, a fractional power or a log."""
    for node in sp.preorder_traversal(expr):
        if isinstance(node, sp.log):
            return True
        if isinstance(node, sp.Pow) and not (node.exp.is_Integer and node.exp >= 0):
            return True
    return False


class HostExtractor:
    """Replaces host-only subtrees by ``_h<k>`` scalars; ``host_inputs`` may grow between uses."""

    def __init__(self, host_inputs: set[sp.Symbol], new: Callable[[], sp.Symbol]) -> None:
        self.host_inputs = host_inputs
        self.new = new
        self.host: dict[sp.Symbol, sp.Expr] = {}
        self._by_expr: dict[sp.Expr, sp.Symbol] = {}
        self.guard: sp.Expr = sp.true  # the host condition of the Piecewise branch being read
        self._free: dict[sp.Expr, frozenset[sp.Symbol]] = {}

    def is_host(self, expr: sp.Expr) -> bool:
        free = free_symbols(expr, self._free)
        return bool(free) and free <= self.host_inputs

    def scalar(self, expr: sp.Expr) -> sp.Symbol:
        guarded = self.guard is not sp.true and _may_fail(expr)
        if guarded and expr.free_symbols & self.guard.free_symbols:
            known = self._covering(expr)
            if known is not None:
                return known
            expr = opdefs.Guarded(expr, self.guard)
        if expr not in self._by_expr:
            symbol = self.new()
            self._by_expr[expr] = symbol
            self.host[symbol] = expr
        return self._by_expr[expr]

    def _operation(self, expr: sp.Expr, divide: bool = False) -> sp.Expr:
        """A sum or product with its host-only operands joined into one scalar (constants join
        the host part: -1 * lr is one scalar -lr, when there is one). ``divide``: a product
        whose host factors only divide (``as_is(x / h)``, ``as_is(-x / h)``) divides by their
        scalar, one rounding as the reference's ``x / h`` (MXNet's ``_div_scalar``), not by a
        rounded reciprocal and a product."""
        joins = [self.is_host(a) or (a.is_Number and not a.args) for a in expr.args]
        if not any(self.is_host(a) for a in expr.args):
            joins = [False] * len(expr.args)
        host_args = [a for a, j in zip(expr.args, joins, strict=True) if j]
        rest = [self(a) for a, j in zip(expr.args, joins, strict=True) if not j]
        bases = [a.base for a in host_args if isinstance(a, sp.Pow) and a.exp == -1]
        signs = [a for a in host_args if a in (sp.S.One, sp.S.NegativeOne)]
        if divide and bases and len(bases) + len(signs) == len(host_args):
            rest.append(sp.Pow(self.scalar(sp.Mul(*signs, *bases)), -1, evaluate=False))
        elif host_args:
            rest.insert(0, self.scalar(expr.func(*host_args)))
        return expr.func(*rest, evaluate=False) if len(rest) > 1 else rest[0]

    def _covering(self, expr: sp.Expr) -> sp.Symbol | None:
        """A scalar of ``expr`` already computed wherever the current guard holds: unguarded, or
        under a guard whose conditions are among the current one's (LBSGD's step under "the
        macro-batch is complete", reused in the weight's branch "complete and momentum > 0"):
        one scalar, and the per-element expressions that use it stay one for CSE."""
        if expr in self._by_expr:
            return self._by_expr[expr]
        current = set(sp.And.make_args(self.guard))
        for known, symbol in self._by_expr.items():
            covers = isinstance(known, opdefs.Guarded) and known.args[0] == expr
            if covers and set(sp.And.make_args(known.args[1])) <= current:
                return symbol
        return None

    def __call__(self, expr: sp.Expr) -> sp.Expr:
        if self.is_host(expr):
            return self.scalar(expr)
        if not expr.args or isinstance(expr, sp.Symbol):
            return expr
        if isinstance(expr, (sp.Add, sp.Mul)):
            return self._operation(expr)
        if isinstance(expr, sp.UnevaluatedExpr):  # as_is: host parts inside it, kept whole
            inner = expr.args[0]
            if isinstance(inner, sp.Mul) and not self.is_host(inner):
                return expr.func(self._operation(inner, divide=True))
            return expr.func(self(inner))
        if isinstance(expr, sp.Piecewise):
            # a branch's scalar that may fail on the host (a division, root or log of what the
            # conditions test: x / s under s > 0) is computed only where its branch is taken
            host_conditions = all(c is sp.true or self.is_host(c) for _, c in expr.args)
            pieces, outer, before = [], self.guard, sp.true
            for e, c in expr.args:
                if host_conditions:
                    self.guard = sp.And(outer, before, c)
                pieces.append((self(e), c))
                self.guard = outer
                before = sp.And(before, sp.Not(c))
            pieces = [(e, self(c) if c is not sp.true else c) for e, c in pieces]
            return sp.Piecewise(*pieces, evaluate=False)
        return expr.func(*[self(a) for a in expr.args], evaluate=False)


def extract_host(block: Block) -> Block:
    """Split host-only subexpressions out of the per-element expressions.

    Summands first, with the hyperparameters, t and host states as host inputs; then the outputs,
    where the reductions' results count as host inputs too. Host scalars come first in the block.
    """
    rule: Rule = block.rule
    extractor = HostExtractor(set(rule.host_inputs), lambda: block.temps.new("host"))
    summands = []
    for role in block.reduction_roles():  # a phase's host inputs: the earlier phases' results
        summands += [a.with_(expr=extractor(a.expr)) for a in block.role(role)]
        extractor.host_inputs |= {a.target for a in block.role(role) if not rule.domain(a.target)}
    extractor.host_inputs = set(rule.scalar_inputs)
    outputs = [a.with_(expr=extractor(a.expr)) for a in block.role("element")]
    # each scalar's spec line: the first equation it was taken from (its refusals cite it)
    origins: dict[sp.Symbol, tuple] = {}
    for a in [*summands, *outputs]:
        for s in a.expr.free_symbols & extractor.host.keys():
            origins.setdefault(s, a.origin)
    host = [Assign(s, e, "host", origins.get(s, ())) for s, e in extractor.host.items()]
    return block.then("host", [*host, *block.role("host"), *summands, *outputs])


# ---------------------------------------------------------------------------------- pass 3
def _cse_phase(assigns: list[Assign], prefix: str, role: str) -> list[Assign]:
    replacements, reduced = sp.cse(
        [a.expr for a in assigns],
        symbols=sp.numbered_symbols(prefix, real=True),
        order="canonical",
        optimizations=None,
    )
    replacements, reduced = _named_as_is(*_keep_quotients(replacements, reduced))
    temps = [Assign(t, e, role) for t, e in replacements]
    return temps + [a.with_(expr=e) for a, e in zip(assigns, reduced, strict=True)]


def _named_as_is(
    replacements: list[tuple[sp.Symbol, sp.Expr]], reduced: list[sp.Expr]
) -> tuple[list[tuple[sp.Symbol, sp.Expr]], list[sp.Expr]]:
    """``as_is`` of a named value as the name: CSE names what an ``as_is`` holds (torch_lerp's
    ``as_is(end)`` of a computed gradient) and leaves ``_t2 = as_is(_t1)``, one value already,
    which was a copy per element (a pass of the NumPy step). Such a temporary is ``_t1``."""

    def strip(expr: sp.Expr) -> sp.Expr:
        return expr.replace(
            lambda e: isinstance(e, sp.UnevaluatedExpr) and isinstance(e.args[0], sp.Symbol),
            lambda e: e.args[0],
        )

    alias: dict[sp.Symbol, sp.Expr] = {}
    kept: list[tuple[sp.Symbol, sp.Expr]] = []
    for t, e in replacements:
        e = strip(e.xreplace(alias))
        if isinstance(e, sp.Symbol):
            alias[t] = e
        else:
            kept.append((t, e))
    return kept, [strip(r.xreplace(alias)) for r in reduced]


def _keep_quotients(
    replacements: list[tuple[sp.Symbol, sp.Expr]], reduced: list[sp.Expr]
) -> tuple[list[tuple[sp.Symbol, sp.Expr]], list[sp.Expr]]:
    """CSE's bare reciprocals put back into the quotients that shared them.

    For ``y/x`` and ``z/x`` SymPy's CSE makes a temporary ``r = 1/x`` and computes ``y*r``
    and ``z*r``: a rounded reciprocal, then a rounded product (two roundings where the spec,
    like torch's ``addcdiv``, divides once). Here such a temporary becomes ``x`` itself (a
    temporary still, when ``x`` is a compound expression: computed once) and each use of
    ``r`` becomes ``1/x``, which the printers emit as one division of its numerator.
    """
    inverse: dict[sp.Symbol, sp.Expr] = {}
    kept: list[tuple[sp.Symbol, sp.Expr]] = []
    for t, e in replacements:
        e = e.xreplace(inverse)
        if isinstance(e, sp.Pow) and e.exp == -1:
            if isinstance(e.base, sp.Symbol):
                inverse[t] = e  # 1/x of a named value: no temporary needed
                continue
            inverse[t] = sp.Pow(t, -1)
            e = e.base
        kept.append((t, e))
    return kept, [r.xreplace(inverse) for r in reduced]


def cse(block: Block) -> Block:
    """One deterministic CSE per phase over all its outputs (canonical order).

    Temporaries: ``_s<k>`` in the reduction phase, ``_t<k>`` in the update (registered prefixes).
    """
    reduction = []
    for role in block.reduction_roles():
        reduction += _cse_phase(block.role(role), Temps.PREFIXES["reduce_cse"], role)
    element = _cse_phase(block.role("element"), Temps.PREFIXES["cse"], "element")
    return block.then("cse", [*block.role("host"), *reduction, *element])


# ---------------------------------------------------------------------------------- pass 4
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


PASSES: list[tuple[str, Callable[[Block], Block]]] = [
    ("inline", inline),
    ("extract_host", extract_host),
    ("cse", cse),
    ("linearize", linearize),
    ("name", name_values),
    ("trace", trace),
]


# ---------------------------------------------------------------------------------- views
@dataclass(frozen=True)
class Op:
    """``dest = kind(*args)`` on one element, as the printers see it."""

    dest: sp.Symbol
    kind: str
    args: tuple[Operand, ...]
    origin: tuple[Origin, ...] = field(default=(), compare=False)


def ops_of(assigns: list[Assign]) -> list[Op]:
    return [Op(a.target, a.op, a.args, a.origin) for a in assigns]  # type: ignore[arg-type]


@dataclass
class Lowered:
    """The final block, as the targets read it (all derived from ``block``)."""

    rule: Rule
    block: Block
    report: list[tuple[str, dict[str, dict[str, int]]]]
    ops: list[Op]
    reduce_phases: list[list[Op]]  # each sweep's ops, in order
    sweep_roles: list[str] = field(default_factory=list)

    @property
    def reduce_ops(self) -> list[Op]:
        """Every reduction phase's ops, in phase order."""
        return [op for phase in self.reduce_phases for op in phase]

    def phase_reductions(self, phase: int) -> list[sp.Symbol]:
        """The values sweep ``phase`` (1-based, in order) computes, in declaration order."""
        staged = self.rule.staged()
        role = self.sweep_roles[phase - 1]
        return [r for r in self.summands if sweep_role(*staged[r]) == role]

    def sweep_domain(self, phase: int) -> frozenset[str]:
        return self.rule.staged()[self.phase_reductions(phase)[0]][1]

    @property
    def outputs(self) -> dict[sp.Symbol, sp.Symbol]:
        """Current symbol -> new symbol, in buffer order (states, then the weight)."""
        return dict(self.rule.outputs)

    @property
    def inlined(self) -> dict[sp.Symbol, sp.Expr]:
        return self.block.notes["inlined"]  # type: ignore[return-value]

    @property
    def raw_summands(self) -> dict[sp.Symbol, sp.Expr]:
        return self.block.notes["raw_summands"]  # type: ignore[return-value]

    @property
    def summands(self) -> list[sp.Symbol]:
        return list(self.raw_summands)

    @cached_property
    def host_lets(self) -> list[Assign]:
        names = set(self.block.notes["host_lets"])  # type: ignore[arg-type]
        return [a for a in self.block.role("host") if a.target in names]

    @cached_property
    def host(self) -> dict[sp.Symbol, sp.Expr]:
        """Every host scalar a kernel takes -> its host expression (lets by name)."""
        assigns = {a.target: a.expr for a in self.block.role("host")}
        used = {x for op in [*self.reduce_ops, *self.ops] for x in op.args}
        names = list(self.block.notes["scalars"])  # type: ignore[arg-type]
        names += [x for x in self._bare() if x in used]
        return {s: assigns.get(s, s) for s in names}

    def _bare(self) -> list[sp.Symbol]:
        lets = [a.target for a in self.host_lets]
        states = [h.symbol for h in self.rule.host_states.values()]
        scalars = [x.symbol for x in self.rule.scalars.values()]
        return [*self.rule.hypers_symbols, *states, *scalars, *self.rule.scalar_reductions, *lets]

    def scalars(self, ops: list[Op]) -> list[sp.Symbol]:
        """The host scalars ``ops`` read, in the order of :attr:`host`."""
        used = {x for op in ops for x in op.args} - {op.dest for op in ops}
        return [s for s in self.host if s in used]

    @property
    def update_scalars(self) -> list[sp.Symbol]:
        return self.scalars(self.ops)

    def phase_host(self, phase: int) -> list[sp.Symbol]:
        return self.scalars(self.reduce_phases[phase - 1]) if self.reduce_phases else []

    def host_value(self, symbol: sp.Symbol) -> sp.Expr:
        """A host scalar as an expression of hyperparameters, t, host states and reductions."""
        return expand(self.host.get(symbol, symbol), self.host_lets)

    @property
    def host_updates(self) -> dict[sp.Symbol, sp.Expr]:
        return {
            a.target: a.expr for a in self.block.role("host") if a.target in self.rule.host_news
        }

    @property
    def draws(self) -> list[sp.Symbol]:
        used = {a for op in self.ops for a in op.args}
        return [d for d in self.rule.draws if d in used]

    @property
    def reads(self) -> list[sp.Symbol]:
        return _reads(self.rule, self.ops)

    @property
    def reduce_reads(self) -> list[sp.Symbol]:
        return _reads(self.rule, self.reduce_ops)

    def phase_reads(self, phase: int) -> list[sp.Symbol]:
        return _reads(self.rule, self.reduce_phases[phase - 1])

    def op_counts(self, ops: list[Op] | None = None) -> dict[str, int]:
        """Operations by kind in ``ops`` (the update's by default)."""
        return dict(sorted(Counter(op.kind for op in (self.ops if ops is None else ops)).items()))


def _reads(rule: Rule, ops: list[Op]) -> list[sp.Symbol]:
    used = {a for op in ops for a in op.args if isinstance(a, sp.Symbol)}
    return [s for s in rule.element_inputs if s in used]


# ---------------------------------------------------------------------------------- driver
def lower(rule: Rule) -> Lowered:
    """Run every pass in order; a rule that reaches the printers is fully checked (its variants
    too: codegen/variants.py refuses one that still reads an absent state)."""
    rule.finish()
    variants(rule)
    block = from_spec(rule)
    report = [("spec", block.op_counts())]
    for name, run in PASSES:
        block = run(block)
        report.append((name, block.op_counts()))
    roles = block.reduction_roles()
    phases = [ops_of(block.role(role)) for role in roles]
    return Lowered(rule, block, report, ops_of(block.role("element")), phases, roles)


def reconstruct(lowered: Lowered) -> dict[sp.Symbol, sp.Expr]:
    """Rebuild each output from the ops and host scalars (for the equivalence proof in tests)."""
    values: dict[sp.Symbol, sp.Expr] = {}

    def value(a: Operand) -> sp.Expr:
        if isinstance(a, sp.Symbol):
            if a in values:
                return values[a]
            return opdefs.unguarded(lowered.host_value(a))
        return a

    reductions: dict[sp.Symbol, sp.Expr] = {}
    for phase in [*lowered.reduce_phases, lowered.ops]:
        for op in phase:
            args = [value(a) for a in op.args]
            values[op.dest] = opdefs.build(op.kind, *args) if op.kind != "copy" else args[0]
        for r in lowered.rule.reductions:  # after its sweep a reduction is one value: a symbol
            if r in values and r not in reductions:
                reductions[r] = values[r]
                values[r] = r
    rebuilt = {new: values[new] for new in lowered.inlined}
    rebuilt.update(reductions)
    rebuilt.update({s.new: values[s.new] for s in lowered.rule.vector_states})
    return rebuilt
