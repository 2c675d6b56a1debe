"""The lowering's last two passes: give computed values the spec's names, and trace each
operation back to its spec line. Both run after linearization, so neither changes an operation
(SymPy orders the operands of sums and products by name: naming earlier would change the order
of floating-point additions).
"""

from __future__ import annotations

import random

import sympy as sp

from codegen import ops as opdefs
from codegen.ir import Assign, Block, Origin, free_symbols
from codegen.names import Temps
from codegen.spec import Rule


def phases(block: Block) -> list[str]:
    """The per-element roles, in execution order: the reduction phases, then the update."""
    return [*block.reduction_roles(), "element"]


# ---------------------------------------------------------------------------------- host lets
def host_lets(block: Block) -> dict[sp.Symbol, sp.Expr]:
    """The ``let``s whose inlined value is host-only (and not a plain constant), in spec order."""
    rule: Rule = block.rule
    scalar_inputs = set(rule.scalar_inputs)
    cache: dict[sp.Expr, frozenset[sp.Symbol]] = {}
    return {
        s: v
        for s, (v, _) in block.lets.items()
        if free_symbols(v, cache) and free_symbols(v, cache) <= scalar_inputs
    }


def definition(value: sp.Expr, by_value: dict[sp.Expr, sp.Symbol]) -> sp.Expr:
    """A let's own value with the other lets named inside it (not the whole replaced by itself)."""
    return value.func(*[a.xreplace(by_value) for a in value.args]) if value.args else value


def expand(expr: sp.Expr, let_assigns: list[Assign]) -> sp.Expr:
    """``expr`` with host lets replaced by their values (definitions in dependency order)."""
    for a in reversed(let_assigns):
        expr = expr.xreplace({a.target: a.expr})
    return expr


# ---------------------------------------------------------------------------------- evaluation
class _Points:
    """Two random points at which values are compared to name them (exact rationals, evaluated
    to 30 digits); ``host`` values are evaluated there once, in order, each definition with the
    values before it known (a chain of lets costs its length, not its expanded size)."""

    def __init__(self, rule: Rule, host: dict[sp.Symbol, sp.Expr]) -> None:
        rng = random.Random(f"optgen:{rule.name}")
        inputs = [*rule.element_inputs, *rule.draws, *rule.scalar_inputs, *rule.vector_values]
        self.points: list[dict[sp.Symbol, sp.Expr]] = []
        for _ in range(2):
            # 30-digit floats: exact rationals made SymPy evaluate exp(log(...)) symbolically
            point = {s: sp.Float(rng.randint(600, 1400) / 1000, 30) for s in inputs}
            point[rule.t] = sp.Integer(rng.randint(2, 9))
            for s, e in host.items():
                v = self.value(e, point)
                if v is not None:
                    point[s] = v
            self.points.append(point)

    @staticmethod
    def value(expr: sp.Expr, point: dict[sp.Symbol, sp.Expr]) -> sp.Expr | None:
        """A finite number, a mask (True/False), or None where ``expr`` has no value there."""
        try:
            value = expr.xreplace(point)
            if isinstance(value, sp.logic.boolalg.BooleanAtom):
                return value
            value = sp.N(value, 30)
        except (TypeError, ValueError, ZeroDivisionError):
            return None
        return value if value.is_Number and value.is_finite else None

    def values(self, expr: sp.Expr, known: list[dict] | None = None) -> list[sp.Expr | None]:
        known = known or [{} for _ in self.points]
        return [self.value(expr, {**p, **k}) for p, k in zip(self.points, known, strict=True)]


def _same(a: list[sp.Expr | None], b: list[sp.Expr | None]) -> bool:
    if not all(x is not None and x.is_Number for x in [*a, *b]):
        return False
    tolerance = sp.Float("1e-20", 30)
    return all(abs(x - y) <= tolerance * max(1, abs(x)) for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------------------------- pass: name
def name_values(block: Block) -> Block:
    """Give what the passes computed the spec's names, without changing any operation.

    A host scalar equal to a bare hyperparameter, host state or reduction is that symbol; one
    equal to a host ``let`` is the let (computed by name on the host); the other host scalars
    are numbered again in order. A per-element value equal to a ``let`` takes its name.
    """
    rule: Rule = block.rule
    lets = host_lets(block)
    by_value = {v: s for s, v in lets.items()}
    host = [a for a in block.role("host") if a.target not in rule.host_news]
    updates = [
        a.with_(expr=a.expr.xreplace(by_value))
        for a in block.role("host")
        if a.target in rule.host_news
    ]
    bare = {*rule.hypers_symbols, *rule.scalar_reductions}
    bare |= {h.symbol for h in rule.host_states.values()}
    bare |= {x.symbol for x in rule.scalars.values()}
    rename: dict[sp.Symbol, sp.Symbol] = {}
    scalars: dict[sp.Symbol, sp.Expr] = {}
    origins: dict[sp.Symbol, tuple] = {}
    positional = Temps()
    for a in host:
        named = a.expr.xreplace(by_value)
        if named in bare or named in lets:
            rename[a.target] = named
        else:
            rename[a.target] = positional.new("host")
            scalars[rename[a.target]] = named
            origins[rename[a.target]] = a.origin
    # the host lets the host code computes by name: those the scalars and updates use
    needed: set[sp.Symbol] = set()
    pending = [*scalars.values(), *rename.values(), *(a.expr for a in updates)]
    while pending:
        for s in pending.pop().free_symbols & lets.keys() - needed:
            needed.add(s)
            pending.append(definition(lets[s], by_value))
    let_assigns = [
        Assign(s, definition(v, by_value), "host", block.lets[s][1])
        for s, v in lets.items()
        if s in needed
    ]
    host_values = {s: definition(v, by_value) for s, v in lets.items()}  # spec order
    host_values |= {s: opdefs.unguarded(e) for s, e in scalars.items()}
    points = _Points(rule, host_values)
    wanted = {s: points.values(v) for s, (v, _) in block.lets.items() if s not in lets}
    # a let that takes one value at both points (a Piecewise on one branch there: 0) says
    # nothing by its values: it names only a value that is its expression, written out
    constant = {s for s, w in wanted.items() if _same(w, w[:1] * len(w))}
    host_symbols = {s: opdefs.unguarded(e) for s, e in scalars.items()}
    out: list[Assign] = []
    for role in phases(block):
        local = dict(rename)
        known: list[dict] = [{} for _ in points.points]
        written: dict[sp.Symbol, sp.Expr] = dict(host_symbols)
        for a in block.role(role):
            args = tuple(local.get(x, x) if isinstance(x, sp.Symbol) else x for x in a.args)
            value = opdefs.build(a.op, *args) if a.op != "copy" else args[0]
            found = points.values(value, known)
            target = a.target
            temporary = target not in rule.outputs.values() and target not in rule.reductions
            if temporary and a.op != "copy":
                name = next(
                    (
                        s
                        for s, w in wanted.items()
                        if s not in local.values()
                        and _same(found, w)
                        and (s not in constant or value.xreplace(written) == block.lets[s][0])
                    ),
                    None,
                )
                if name is not None:
                    local[target] = target = name
            for k, v in zip(known, found, strict=True):
                if v is not None:
                    k[target] = v
            if constant:  # (only a constant let compares expressions)
                written[target] = value.xreplace(written)
            out.append(a.with_(target=target, args=args))
    return block.then(
        "named",
        [
            *let_assigns,
            *(Assign(h, e, "host", origins[h]) for h, e in scalars.items()),
            *updates,
            *out,
        ],
        scalars=list(scalars),
        host_lets=[a.target for a in let_assigns],
    )


# ---------------------------------------------------------------------------------- pass: trace
def trace(block: Block) -> Block:
    """Put each equation's spec line on its first operation, per phase.

    An equation's operations are those its value needs that no earlier equation already
    computed; an equation with no operation of its own (a ``let`` merged into its user) is named
    on the first operation of the first equation that uses it.
    """
    rule: Rule = block.rule
    equations = [a for a in block.notes["equations"] if a.role != "host"]  # type: ignore[union-attr]
    deps: dict[sp.Symbol, set[sp.Symbol]] = {}
    for eq in equations:
        direct = eq.expr.free_symbols
        deps[eq.target] = set(direct).union(*(deps.get(s, set()) for s in direct))
    out = [*block.role("host")]
    for role in phases(block):
        assigns = block.role(role)
        index = {a.target: i for i, a in enumerate(assigns)}
        owned: set[int] = set()
        first: dict[int, list[Origin]] = {}
        pending: list[Assign] = []
        for eq in equations:
            if eq.target not in index:
                if eq.target in rule.lets:
                    pending.append(eq)
                continue
            cone, stack = [], [index[eq.target]]
            while stack:
                i = stack.pop()
                if i not in owned:
                    owned.add(i)
                    cone.append(i)
                    stack += [index[x] for x in assigns[i].args if x in index]
            if cone:
                merged = [p for p in pending if p.target in deps[eq.target]]
                pending = [p for p in pending if p not in merged]
                first[min(cone)] = [o for p in [*merged, eq] for o in p.origin]
        traced = [a.with_(origin=tuple(first.get(i, ()))) for i, a in enumerate(assigns)]
        _check_constants(rule, traced)
        out += traced
    return block.then("traced", out)


def _check_constants(rule: Rule, assigns: list[Assign]) -> None:
    """Every per-element constant is a float32 number, or a SpecError naming its spec line."""
    where = rule.source
    for a in assigns:
        if a.origin:
            where = f"{a.origin[-1].file}:{a.origin[-1].line}"
        for x in a.args:
            if not isinstance(x, sp.Symbol):
                opdefs.element_constant(x, where=where)
