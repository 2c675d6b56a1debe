"""The one intermediate representation, from spec to kernel: an ordered, named SSA block.

A :class:`Block` is a list of :class:`Assign` — ``target = expr`` — each with a role and its
origin in the spec:

- role ``host``: computed once per step on the host in double precision (host scalars handed to
  the kernels, ``let`` intermediates that depend only on hyperparameters, the step count, host
  states and reductions, new host states);
- role ``reduction``: per element, in the reduction phase before the update (the target of a
  summand's last assignment is the reduction's name: its sum over the tensor is that reduction);
- role ``element``: per element, in the update.

Every target is assigned once. The lowering passes (``codegen.lower.PASSES``) map a block to a
block: first expressions (``op`` is None), after linearization three-address operations from the
one table of operations (``op`` names an :class:`codegen.ops.OpDef`, ``args`` its operands,
``expr`` its SymPy value over them). Each pass reports the block's op counts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

import sympy as sp

from codegen.names import Temps

ROLES = ("host", "reduction", "element")  # and the later sweeps' roles: sweep_role()
# A sweep over the weight's elements is a reduction phase; one over a row, column or batch
# vector (Adafactor's factors) computes vectors.
SWEEP_KINDS = {"brc": "reduction", "br": "rows", "bc": "cols", "b": "batch"}


def sweep_role(stage: int, domain: frozenset[str] | str = "brc") -> str:
    """The role of the sweep over ``domain`` at ``stage``: ``reduction`` for the first sweep over
    the elements, then ``reduction2``, ...; ``rows2``, ``cols3``, ... for vector sweeps."""
    kind = SWEEP_KINDS["".join(a for a in "brc" if a in domain)]
    return "reduction" if (kind, stage) == ("reduction", 1) else f"{kind}{stage}"


def parse_sweep(role: str) -> tuple[int, str] | None:
    """(stage, kind) of a sweep's role; None for ``host`` and ``element``."""
    for kind in SWEEP_KINDS.values():
        if role == kind == "reduction":
            return 1, kind
        if role.startswith(kind) and role[len(kind) :].isdigit():
            return int(role[len(kind) :]), kind
    return None


def is_reduction(role: str) -> bool:
    return parse_sweep(role) is not None


def free_symbols(expr: sp.Expr, cache: dict[sp.Expr, frozenset[sp.Symbol]]) -> frozenset[sp.Symbol]:
    """``expr.free_symbols``, memoized per subexpression in ``cache``: inlined equations share
    subtrees (a chain of lets, each using the one before twice), and SymPy recomputes the set
    for every occurrence, which grows with the expanded size, not the number of distinct nodes."""
    found = cache.get(expr)
    if found is None:
        if isinstance(expr, sp.Symbol):
            found = frozenset((expr,))
        elif not expr.args:
            found = frozenset()
        else:
            found = frozenset().union(*(free_symbols(a, cache) for a in expr.args))
        cache[expr] = found
    return found


def count_ops(expr: sp.Expr, seen: set[sp.Expr]) -> int:
    """The operations of ``expr`` not already in ``seen`` (each distinct subexpression once)."""
    if expr in seen or not getattr(expr, "args", ()) or isinstance(expr, sp.Symbol):
        return 0
    seen.add(expr)
    own = max(len(expr.args) - 1, 1) if isinstance(expr, (sp.Add, sp.Mul)) else 1
    return own + sum(count_ops(a, seen) for a in expr.args)


Operand = sp.Expr  # a Symbol (buffer value, temporary or host scalar) or an exact constant


@dataclass(frozen=True)
class Origin:
    """Where an assignment comes from: a spec file, its line, and the equation as written."""

    file: str
    line: int
    text: str

    def comment(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


@dataclass(frozen=True)
class Assign:
    """``target = expr`` in one role; in op form ``target = op(*args)``."""

    target: sp.Symbol
    expr: sp.Expr
    role: str
    origin: tuple[Origin, ...] = ()
    op: str | None = None
    args: tuple[Operand, ...] = ()

    def __post_init__(self) -> None:
        if self.role not in ROLES and not is_reduction(self.role):
            raise ValueError(f"unknown role {self.role!r} for {self.target}")

    def with_(self, **changes: object) -> Assign:
        return replace(self, **changes)


@dataclass(frozen=True)
class Block:
    """An ordered SSA block of one rule, at one stage of the lowering.

    ``lets``: each ``let`` intermediate's value as an expression of step-i inputs (the names the
    passes give back to what they compute); ``notes``: facts a pass hands on to later passes and
    the targets (the inlined outputs for the equivalence proof, the host scalars' order).
    """

    rule: object  # codegen.spec.Rule (not imported: the spec imports this module's Origin)
    stage: str
    assigns: tuple[Assign, ...]
    temps: Temps = field(default_factory=Temps)
    lets: dict[sp.Symbol, tuple[sp.Expr, tuple[Origin, ...]]] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)

    def role(self, role: str) -> list[Assign]:
        return [a for a in self.assigns if a.role == role]

    def reduction_roles(self) -> list[str]:
        """The sweeps' roles present (reduction phases and vector sweeps), in execution order:
        by stage, and within a stage, the element sweep first."""
        present = {a.role for a in self.assigns if is_reduction(a.role)}
        kinds = list(SWEEP_KINDS.values())
        return sorted(present, key=lambda r: (parse_sweep(r)[0], kinds.index(parse_sweep(r)[1])))

    def then(self, stage: str, assigns: list[Assign], **notes: object) -> Block:
        # SSA per role: the reduction and update phases are separate kernels, where one value
        # (a let both need) has the same name.
        targets = [(a.role, a.target) for a in assigns]
        repeated = sorted({str(t[1]) for t in targets if targets.count(t) > 1})
        if repeated:
            raise AssertionError(f"{stage}: assigned twice: {', '.join(repeated)} (not SSA)")
        return replace(self, stage=stage, assigns=tuple(assigns), notes={**self.notes, **notes})

    def op_counts(self) -> dict[str, dict[str, int]]:
        """Per role: operations by kind (op form) or, in expression form, the distinct
        operations (a subexpression shared by several outputs of a role counts once)."""
        counts: dict[str, Counter[str]] = {}
        seen: dict[str, set[sp.Expr]] = {}
        for a in self.assigns:
            bucket = counts.setdefault(a.role, Counter())
            if a.op is not None:
                bucket[a.op] += 1
            else:
                bucket["expr_ops"] += count_ops(a.expr, seen.setdefault(a.role, set()))
        return {role: dict(sorted(c.items())) for role, c in sorted(counts.items())}
