"""A rule's reductions (``RULE.sum``, ``max``, ``min``, ``mean``, ``norm``) and sizes (``numel``,
``ndim``, ``rows``, ``cols``): :class:`Reductions`, a part of :class:`codegen.spec.Rule`."""

from __future__ import annotations

import sympy as sp

from codegen.errors import SpecError
from codegen.spec_parts import COL, DOMAIN_NAMES, ELEMENT, ROW


class Reductions:
    """The reduction declarations of :class:`codegen.spec.Rule` (which holds the state they
    read and write: ``reductions``, ``sizes``, the symbols' domains)."""

    def sum(
        self, name: str, summand: sp.Expr, *, axis: int | None = None, group: bool = False
    ) -> sp.Symbol:
        """The sum over all elements of a per-element expression (a per-tensor reduction).

        Computed in a phase before the update. The summand may use step-i values, intermediates,
        new values and other reductions: a reduction that uses another one (a chained
        reduction) is computed in a later phase, one more pass over the tensor.

        ``axis=-1``: the sum along the value's last axis instead (one per row of a matrix: a
        row vector, broadcast back over the row where it is used); ``axis=-2``: along the
        second-to-last (one per column). The axes are the value's own: the weight viewed as
        (batch, rows, columns), a row vector as (batch, rows), a column vector as (batch, cols).

        ``group=True``: the sum over every element of every tensor updated together (a torch
        class's parameter group; a module's ``step_multi`` call): a global gradient norm.
        """
        return self._reduction(name, summand, "sum", axis, group)

    def max(
        self, name: str, expr: sp.Expr, *, axis: int | None = None, group: bool = False
    ) -> sp.Symbol:
        """The largest element of a per-element expression (NaN if any element is NaN; -inf for
        an empty tensor). ``RULE.max("g_inf", sp.Abs(g))`` is the infinity norm."""
        return self._reduction(name, expr, "max", axis, group)

    def min(
        self, name: str, expr: sp.Expr, *, axis: int | None = None, group: bool = False
    ) -> sp.Symbol:
        """The smallest element of a per-element expression (NaN if any element is NaN; +inf for
        an empty tensor)."""
        return self._reduction(name, expr, "min", axis, group)

    def mean(self, name: str, expr: sp.Expr, *, axis: int | None = None) -> sp.Expr:
        """The mean: the sum reduction ``name`` divided by the number of elements it adds (0 where
        there are none: an empty tensor, which has no mean and is not updated either)."""
        total = self.sum(name, expr, axis=axis)
        return total / sp.Max(self._count(self.domain(self.reductions[total]), axis), 1)

    def _size(self, name: str) -> sp.Symbol:
        for s in self.sizes:
            if s.name == name:
                return s
        self.sizes.append(sp.Symbol(name, nonnegative=True, integer=True))
        return self.sizes[-1]

    @property
    def numel(self) -> sp.Symbol:
        """The tensor's element count (a per-tensor host input, known before the step)."""
        return self._size("numel")

    @property
    def ndim(self) -> sp.Symbol:
        """The weight's number of dimensions (a per-tensor host input)."""
        return self._size("ndim")

    @property
    def rows(self) -> sp.Symbol:
        """The length of the weight's second-to-last axis (1 for a 0-D or 1-D weight)."""
        return self._size("rows")

    @property
    def cols(self) -> sp.Symbol:
        """The length of the weight's last axis (1 for a 0-D weight)."""
        return self._size("cols")

    def _count(self, domain: frozenset[str], axis: int | None) -> sp.Expr:
        """How many values a reduction of a ``domain`` value along ``axis`` adds."""

        def length(a: str) -> sp.Expr:
            if a == "b":
                return self.numel / (self.rows * self.cols)
            return self.rows if a == "r" else self.cols

        if axis is None:
            return self.numel / sp.Mul(*(length(a) for a in "rc" if a not in domain))
        return length([a for a in "brc" if a in domain][axis])

    def _reduction(
        self, name: str, summand: sp.Expr, kind: str, axis: int | None, group: bool = False
    ) -> sp.Symbol:
        self._claim(name, "reduction")
        if axis not in (None, -1, -2):
            raise SpecError(f"{self._where()}: reduction {name!r}: axis must be None, -1 or -2")
        if group and axis is not None:
            raise SpecError(f"{self._where()}: reduction {name!r}: a group reduction has no axis")
        if group:
            self.group_reductions.append(sp.Symbol(name, real=True))
        symbol = sp.Symbol(name, real=True)
        summand = self._sympify(summand, f"the {kind} {name!r}")
        self.reductions[symbol] = summand
        self.reduction_kinds[symbol] = kind
        self.reduction_axes[symbol] = axis
        self._equation(symbol, summand)
        self.domain(symbol)  # raises on a reduction along an axis its value does not have
        return symbol

    def domain(self, expr: sp.Expr) -> frozenset[str]:
        """The axes a value varies along: of the weight viewed as (batch, rows, cols), ``b``,
        ``r`` and ``c`` (all three per element, ``br`` per row, none per tensor or step)."""
        axes: set[str] = set()
        for s in expr.free_symbols:
            axes |= self._domain_of(s)
        return frozenset(axes)

    def _domain_of(self, symbol: sp.Symbol) -> frozenset[str]:
        known = self._domains.get(symbol)
        if known is not None:
            return known
        if symbol in (self.weight, self.grad, self.weight_new) or symbol in self.draws:
            return ELEMENT
        if any(symbol == i.symbol for i in self.inputs.values()):
            return ELEMENT
        if symbol in self.matrix_values:
            return ELEMENT
        for st in self.states.values():
            if symbol in (st.symbol, st.new):
                return ELEMENT if st.axis is None else (ROW if st.axis == -1 else COL)
        defined = {eq.target: eq for eq in self.equations}
        if symbol in self.reductions:
            inner = self.domain(self.reductions[symbol])
            axis = self.reduction_axes[symbol]
            if axis is None:
                result: frozenset[str] = frozenset()
            else:
                present = [a for a in "brc" if a in inner]
                if len(present) < -axis or present[axis] == "b":
                    raise SpecError(
                        f"{self._at(defined[symbol])}: reduction {symbol} along axis {axis}: its "
                        f"value ({DOMAIN_NAMES.get(inner, ''.join(present))}) has no such axis"
                    )
                result = inner - {present[axis]}
            self._domains[symbol] = result
            return result
        if symbol in defined and symbol not in self._computing:
            self._computing.add(symbol)
            result = self.domain(defined[symbol].expr)
            self._computing.discard(symbol)
            self._domains[symbol] = result
            return result
        return frozenset()  # hyperparameters, t, sizes, host states

    def norm(self, name: str, expr: sp.Expr, *, group: bool = False) -> sp.Expr:
        """The L2 norm of a per-element expression: sqrt of the reduction ``name`` (its square);
        ``group=True``: over every tensor of the group (a global norm)."""
        squared = self._sympify(expr, f"the norm {name!r}") ** 2
        return sp.sqrt(self.sum(name, squared, group=group))
