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
4. ``linearize`` (:mod:`codegen.linearize`): three-address operations from :mod:`codegen.ops`,
   the form every printer consumes; unsupported constructs are refused here by name.
5. ``name`` (:mod:`codegen.naming`): names what was computed after the spec: a host scalar that
   is a bare hyperparameter, host state or reduction is passed under its own name, one equal to a
   host ``let`` takes the let's name (and host code computes each such let once, by name), a
   per-element value equal to a ``let`` takes its name. Renaming after linearization never
   changes an operation.
6. ``trace`` (:mod:`codegen.naming`): each equation's first operation carries its spec line(s).

:func:`lower` returns the final block as the targets read it (:mod:`codegen.lowered`).

Passes 1-4 name their temporaries by position (``_h``, ``_t``, ``_s``, ``_v``) because SymPy orders
the operands of sums and products by name: naming before the operations are fixed would change
the order of floating-point additions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import sympy as sp
from sympy.functions.elementary.piecewise import ExprCondPair

from codegen import ops as opdefs
from codegen.ir import Assign, Block, Operand, Origin, free_symbols, sweep_role
from codegen.linearize import linearize
from codegen.lowered import Lowered, ops_of
from codegen.names import Temps
from codegen.naming import name_values, trace
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


PASSES: list[tuple[str, Callable[[Block], Block]]] = [
    ("inline", inline),
    ("extract_host", extract_host),
    ("cse", cse),
    ("linearize", linearize),
    ("name", name_values),
    ("trace", trace),
]


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
