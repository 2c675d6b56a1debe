"""The lowered rule as the targets read it (:class:`Lowered`, made by :func:`codegen.lower.lower`):
the final block's operations per phase (:class:`Op`), host scalars, reads and writes, op counts."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property

import sympy as sp

from codegen.ir import Assign, Block, Operand, Origin, sweep_role
from codegen.naming import expand
from codegen.spec import Rule


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
