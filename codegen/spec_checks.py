"""What a finished rule is asked (its buffers, outputs and phases) and the checks of
:meth:`Checks.finish`: :class:`Checks`, a part of :class:`codegen.spec.Rule`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import sympy as sp

from codegen import absence, ops
from codegen.errors import SpecError
from codegen.spec_parts import BATCH, COL, DOMAIN_NAMES, ELEMENT, ROW, SCALAR, Equation, State

if TYPE_CHECKING:
    from codegen.spec import Rule

SUPPORTED_FUNCTIONS = ops.SPEC_FUNCTIONS
_RELATIONALS = ops.RELATIONALS
_BOOLEAN = ops.BOOLEAN_STRUCTURE
_HOST_ONLY = ops.HOST_ONLY


class Checks:
    """The queries and whole-rule checks of :class:`codegen.spec.Rule` (which holds what they
    read)."""

    @property
    def element_inputs(self) -> list[sp.Symbol]:
        """Per-element values at step i, in buffer order: weight, grad, inputs, states (not the
        states of one value per row or column: :attr:`vector_states`). The one list every phase
        and target iterates (a reduction's summand may read an input too)."""
        inputs = [i.symbol for i in self.inputs.values()]
        states = [s.symbol for s in self.states.values() if s.axis is None]
        return [self.weight, self.grad, *inputs, *states]

    @property
    def read_only(self) -> list[sp.Symbol]:
        """The buffers a step only reads: the gradient and the inputs."""
        return [self.grad] + [i.symbol for i in self.inputs.values()]

    @property
    def vector_states(self) -> list[State]:
        """The states of one value per row (``axis=-1``) or per column (``axis=-2``)."""
        return [s for s in self.states.values() if s.axis is not None]

    @property
    def host_inputs(self) -> list[sp.Symbol]:
        """Values known on the host before a step: hyperparameters, the step count, host states
        and the per-step scalar inputs."""
        hypers = [h.symbol for h in self.hypers.values()]
        states = [s.symbol for s in self.host_states.values()]
        scalars = [s.symbol for s in self.scalars.values()]
        return hypers + [self.t] + states + scalars + self.sizes

    @property
    def outputs(self) -> dict[sp.Symbol, sp.Symbol]:
        """Per-element buffers written, current -> new, in buffer order (states, then weight)."""
        out = {s.symbol: s.new for s in self.states.values() if s.axis is None}
        out[self.weight] = self.weight_new
        return out

    @property
    def host_news(self) -> set[sp.Symbol]:
        """The new values of the host states."""
        return {s.new for s in self.host_states.values()}

    @property
    def hypers_symbols(self) -> list[sp.Symbol]:
        return [h.symbol for h in self.hypers.values()]

    @property
    def init_hypers(self) -> list[str]:
        """The hyperparameters the initial state depends on (``init_state`` takes them)."""
        used = set().union(*(s.init.free_symbols for s in self.states.values()))
        return [h.name for h in self.hypers.values() if h.symbol in used]

    @property
    def spec_names(self) -> set[str]:
        """Every name the spec declared (generated code may use these, and registered names)."""
        declared = {*self.hypers, *self.states, *self.host_states, *self.lets.values()}
        declared |= {*self.inputs, *self.scalars}
        declared |= {str(s) for s in [*self.reductions, *self.draws, *self.sizes]}
        declared |= {str(s) for s in self.matrix_values}
        for d in self.drop_ins:  # the drop-in classes and their torch arguments (betas, foreach)
            declared |= {d.class_name, *(name for name, _ in d.signature if name != "*")}
        variant = {self.without_name(gone) for gone in absence.absent_sets(self)}
        variant |= {self.special_name(name) for name in self.special}
        return declared | {self.name, self.class_name} | variant

    def without_name(self, gone: tuple[str, ...]) -> str:
        """``<rule>_without_<state>[_<state>...]``: the modules (and kernels) of the variant
        without the absent states ``gone`` (:mod:`codegen.variants`)."""
        return "_".join([self.name, "without", *gone])

    def special_name(self, name: str) -> str:
        """``<rule>_<name>``: the modules (and kernels) of special case ``name``."""
        return f"{self.name}_{name}"

    @property
    def scalar_inputs(self) -> list[sp.Symbol]:
        """Host inputs plus per-tensor reductions: everything that is one number per tensor."""
        return self.host_inputs + self.scalar_reductions

    @property
    def scalar_reductions(self) -> list[sp.Symbol]:
        """The reductions over a whole tensor (one number each; the others are vectors)."""
        return [r for r in self.reductions if self.reduction_axes[r] is None]

    @property
    def vector_values(self) -> list[sp.Symbol]:
        """Values of one number per row, column or matrix: the vector states (old and new),
        axis reductions and vector lets, each a small buffer a sweep reads."""
        out = [s.symbol for s in self.vector_states]
        return out + [v for v in self.staged() if self.domain(v) not in (ELEMENT, SCALAR)]

    def finish(self) -> Rule:
        """Check the whole rule; called by the loader after the spec module ran."""
        if self._finished:
            return self
        stateful = [*self.states.values(), *self.host_states.values()]
        for current in [self.weight] + [s.symbol for s in stateful]:
            if current not in self._updated:
                what = "the weight" if current == self.weight else f"state {current}"
                line = self.line if current == self.weight else self._lines.get(str(current), 0)
                raise SpecError(f"{self._where(line)}: {what} is never updated")
        known = set(self.element_inputs) | set(self.scalar_inputs) | set(self.lets)
        known |= {s.symbol for s in self.vector_states} | set(self.reductions)
        known |= set(self.draws) | set(self.matrix_values)
        known |= set(self._updated.values())
        for eq in self.equations:
            unknown = eq.expr.free_symbols - known
            if unknown:
                raise SpecError(
                    f"{self._at(eq)}: equation for {eq.target} uses undeclared symbol(s) "
                    f"{', '.join(sorted(map(str, unknown)))}"
                )
            self._check_functions(eq)
            self._check_piecewise(eq)
        self.ordered_equations()  # raises on a cycle
        self._check_domains()
        self._finished = True
        return self

    def _check_domains(self) -> None:
        """A state of one value per row (or column, or tensor) gets a value of that domain."""
        defined = {eq.target: eq for eq in self.equations}
        targets = [
            (s.new, ELEMENT if s.axis is None else self._domain_of(s.new), s.name)
            for s in self.states.values()
        ]
        targets += [(h.new, SCALAR, h.name) for h in self.host_states.values()]
        for new, domain, name in targets:
            got = self.domain(defined[new].expr)
            if not got <= domain:
                raise SpecError(
                    f"{self._at(defined[new])}: state {name} holds {DOMAIN_NAMES[domain]} but its "
                    f"new value varies {DOMAIN_NAMES.get(got, 'per ' + ''.join(sorted(got)))} "
                    "(reduce it first: RULE.sum, RULE.mean or RULE.norm over the tensor, or "
                    "over an axis for a row or column state)"
                )
        self.staged()
        if self.group_reductions and self.vector_values:
            raise SpecError(
                f"{self.source}: group reductions ({', '.join(map(str, self.group_reductions))}) "
                "in a rule with row or column vectors are not supported yet"
            )

    def _at(self, eq: Equation) -> str:
        """``file:line`` of the spec line that wrote ``eq``."""
        return f"{eq.origin.file}:{eq.origin.line}" if eq.origin.line else eq.origin.file

    def _check_piecewise(self, eq: Equation) -> None:
        """Every Piecewise ends with a ``(value, True)`` branch: without one, a step where no
        condition holds has no value (host code would return None, a kernel garbage)."""
        for node in sp.preorder_traversal(eq.expr):
            if isinstance(node, sp.Piecewise) and node.args[-1].cond is not sp.true:
                raise SpecError(
                    f"{self._at(eq)}: equation for {eq.target} has a Piecewise with no default "
                    f"branch (last condition {node.args[-1].cond}); end it with (value, True)"
                )

    def _check_functions(self, eq: Equation) -> None:
        for node in sp.preorder_traversal(eq.expr):
            if node is sp.nan or node is sp.zoo:
                raise SpecError(
                    f"{self._at(eq)}: equation for {eq.target} has the constant {node} "
                    "(not a number: SymPy's value of a division by zero, 0/0 or inf - inf)"
                )
            if isinstance(node, (sp.Symbol, sp.Number, sp.Add, sp.Mul, sp.Pow)):
                continue
            if isinstance(node, sp.UnevaluatedExpr):  # as_is: an operand computed first
                continue
            if isinstance(node, SUPPORTED_FUNCTIONS + _RELATIONALS + _BOOLEAN + _HOST_ONLY):
                continue
            if isinstance(node, (sp.logic.boolalg.BooleanTrue, sp.core.numbers.NumberSymbol)):
                continue
            if isinstance(node, sp.logic.boolalg.BooleanFalse):
                continue
            name = getattr(node, "func", type(node)).__name__
            raise SpecError(
                f"{self._at(eq)}: equation for {eq.target} uses {name}, which optgen does not "
                f"support ({ops.supported_text()})"
            )

    def ordered_equations(self) -> list[Equation]:
        """Equations in dependency order (stable: declaration order among independent ones)."""
        defined = {eq.target: eq for eq in self.equations}
        done: set[sp.Symbol] = set()
        order: list[Equation] = []
        visiting: list[sp.Symbol] = []

        def visit(target: sp.Symbol) -> None:
            if target in done:
                return
            if target in visiting:
                cycle = visiting[visiting.index(target) :] + [target]
                raise SpecError(
                    f"{self._at(defined[target])}: the equations form a cycle: "
                    + " -> ".join(str(s) for s in cycle)
                )
            visiting.append(target)
            eq = defined[target]
            for dep in sorted(eq.expr.free_symbols & defined.keys(), key=str):
                visit(dep)
            visiting.pop()
            done.add(target)
            order.append(eq)

        for eq in self.equations:
            visit(eq.target)
        return order

    def staged(self) -> dict[sp.Symbol, tuple[int, frozenset[str]]]:
        """Every value computed in a sweep before the update -> (stage, the sweep's domain).

        Reductions are computed in a sweep over their summand's domain, and values of a vector
        domain (a row factor) in a sweep over that domain; a sweep comes after the sweeps of the
        staged values it uses (stage = 1 + theirs), so chained reductions become phases.
        """
        out: dict[sp.Symbol, tuple[int, frozenset[str]]] = {}
        uses: dict[sp.Symbol, set[sp.Symbol]] = {}
        for eq in self.ordered_equations():
            found: set[sp.Symbol] = set()
            for s in eq.expr.free_symbols:
                found |= {s} if s in out else uses.get(s, set())
            if eq.target in self.reductions:
                domain = self.domain(eq.expr)
                if not domain:
                    raise SpecError(
                        f"{self._at(eq)}: reduction {eq.target} of {eq.expr}, which is one number "
                        "per tensor (reduce a per-element value)"
                    )
            elif self.domain(eq.target) in (ROW, COL, BATCH):
                domain = self.domain(eq.target)
            else:
                uses[eq.target] = found
                continue
            out[eq.target] = (1 + max((out[r][0] for r in found), default=0), domain)
        return out

    def reduction_phases(self) -> dict[sp.Symbol, int]:
        """Each reduction's stage (its sweep's place in the order of sweeps)."""
        return {r: stage for r, (stage, _) in self.staged().items() if r in self.reductions}

    def hyperparameter_defaults(self) -> dict[str, float | None]:
        return {h.name: h.default for h in self.hypers.values()}
