"""The spec model: one optimizer rule as declared symbols and update equations.

A spec file (``specs/<rule>.py``) builds one :class:`Rule` at import time and binds it to the
module-level name ``RULE``. The rule declares its weight, gradient and step count (always present),
its hyperparameters (name, default, legal values), its per-element states (with initial values)
and its equations, written in the seed's notation: the value at step i+1 from values at step i.
``rule.update(m, expr)`` returns the symbol for ``m`` at step i+1, which later equations may use.

Everything a rule declares is checked as it is declared; :meth:`Rule.finish` checks the whole
(every state and the weight updated exactly once, only declared symbols, only supported functions,
no cycles). Every error is a :class:`SpecError` that names the spec file and the culprit.
"""

from __future__ import annotations

import inspect
import keyword
import math
import os
import sys
from dataclasses import dataclass

import sympy as sp

from codegen import names, ops
from codegen.errors import SpecError
from codegen.ir import Origin
from codegen.ops import softplus
from optgen_runtime.common import Legal, TorchEquivalent

__all__ = ["Legal", "Rule", "integer", "nonnegative", "positive", "softplus", "unit"]

# What a spec may write comes from the one table of operations (codegen/ops.py).
SUPPORTED_FUNCTIONS = ops.SPEC_FUNCTIONS
_RELATIONALS = ops.RELATIONALS
_BOOLEAN = ops.BOOLEAN_STRUCTURE
_HOST_ONLY = ops.HOST_ONLY


def positive(allow_none: bool = False) -> Legal:
    """x > 0 (finite)."""
    return Legal(lo=0.0, lo_open=True, allow_none=allow_none)


def nonnegative() -> Legal:
    """x >= 0 (finite)."""
    return Legal(lo=0.0)


def unit(lo_open: bool = False, hi_open: bool = True) -> Legal:
    """x in [0, 1) by default; a decay factor."""
    return Legal(lo=0.0, hi=1.0, lo_open=lo_open, hi_open=hi_open)


def integer(lo: float = 0, hi: float = math.inf) -> Legal:
    """A whole number in [lo, hi]: a count or a period (a macro-batch in calls, epochs). The
    generated code refuses 1.5, which a step counter compared with it would never reach."""
    return Legal(lo=float(lo), hi=float(hi), integer=True)


@dataclass(frozen=True)
class Hyper:
    """A hyperparameter: runtime argument of every generated step function."""

    name: str
    symbol: sp.Symbol
    default: float | str | bool | None
    legal: Legal
    none_value: float | None  # what ``None`` means in the equations (e.g. inf: clipping off)
    doc: str


@dataclass(frozen=True)
class State:
    """A per-element state buffer of the weight's shape."""

    name: str
    symbol: sp.Symbol
    new: sp.Symbol
    init: sp.Expr  # a constant, or an expression of the initial weight
    doc: str


@dataclass(frozen=True)
class HostState:
    """A scalar carried across steps on the host, per weight (e.g. NAdam's momentum schedule).

    Its new value may depend only on hyperparameters, the step count and host states; it lives in
    the state dict as a Python float next to the per-element buffers.
    """

    name: str
    symbol: sp.Symbol
    new: sp.Symbol
    init: float
    doc: str


@dataclass(frozen=True)
class Equation:
    """``target = expr``: target is a new state/weight symbol or a named intermediate."""

    target: sp.Symbol
    expr: sp.Expr
    origin: Origin


def _spec_frame() -> tuple[str, int] | None:
    """(file, line) of the innermost caller outside codegen/: the spec line that declared
    something. Walks the frames directly (``inspect.stack`` reads every frame's source)."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if os.path.basename(os.path.dirname(filename)) != "codegen":
            return filename, frame.f_lineno
        frame = frame.f_back
    return None


def _caller_file() -> str:
    frame = _spec_frame()
    return frame[0] if frame else "<unknown>"


def _display_path(path: str) -> str:
    parent = os.path.basename(os.path.dirname(path))
    return f"{parent}/{os.path.basename(path)}" if parent else os.path.basename(path)


class Rule:
    """One optimizer rule, declared by a spec file."""

    def __init__(
        self,
        name: str,
        doc: str | None,
        source: str | None = None,
        class_name: str | None = None,
        mxnet: str | None = None,
    ) -> None:
        """``mxnet``: the ``mx.optimizer.create`` name of the MXNet 1.9.1 optimizer this rule
        reproduces (``"sgd"`` for sgd_mom), or None where 1.9.1 has no such rule. A rule that
        names one must be verified against goldens recorded from it (tests/test_mxnet_goldens.py),
        unless it draws random numbers (MXNet's own generator cannot be replayed)."""
        self.source = _display_path(source or _caller_file())
        self._lines: dict[str, int] = {}  # declared name -> its spec line
        self.line = self._line()  # the spec line of Rule(...)
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise SpecError(f"{self._where()}: rule name {name!r} is not a Python identifier")
        if not isinstance(doc, str) or not doc.strip():
            raise SpecError(f"{self._where()}: rule {name!r} needs a docstring (pass __doc__)")
        if mxnet is not None and not (isinstance(mxnet, str) and mxnet.isidentifier()):
            raise SpecError(f"{self._where()}: mxnet={mxnet!r} is not an MXNet optimizer name")
        self.name = name
        self.mxnet = mxnet
        # The torch.optim-style class: torch's name where torch has the rule, else CamelCase.
        self.class_name = class_name or "".join(p.title() for p in name.split("_"))
        if not self.class_name.isidentifier():
            raise SpecError(f"{self._where()}: class name {self.class_name!r} is not an identifier")
        self.torch: TorchEquivalent | None = None
        self.doc = inspect.cleandoc(doc)
        self.weight = sp.Symbol("weight", real=True)
        self.grad = sp.Symbol("grad", real=True)
        self.t = sp.Symbol("t", positive=True, integer=True)
        self.weight_new = sp.Symbol("weight_new", real=True)
        self.hypers: dict[str, Hyper] = {}
        self.states: dict[str, State] = {}
        self.host_states: dict[str, HostState] = {}
        self.reductions: dict[sp.Symbol, sp.Expr] = {}  # symbol -> summand (per element)
        self.draws: list[sp.Symbol] = []  # standard normal draws, one per element and step
        self.lets: dict[sp.Symbol, str] = {}
        self.equations: list[Equation] = []
        self._names: set[str] = {"weight", "grad", "t", "weight_new"}
        self._updated: dict[sp.Symbol, sp.Symbol] = {}  # current symbol -> new symbol
        self._finished = False

    # ----------------------------------------------------------------------------- declarations
    def _line(self) -> int:
        """The line of the spec file being run (0 when the call does not come from it)."""
        frame = _spec_frame()
        return frame[1] if frame and _display_path(frame[0]) == self.source else 0

    def _where(self, line: int | None = None) -> str:
        """``specs/<rule>.py:LINE`` for an error message: the given line, else the spec line
        running now."""
        line = self._line() if line is None else line
        return f"{self.source}:{line}" if line else self.source

    def _claim(self, name: str, what: str) -> None:
        if not isinstance(name, str):
            raise SpecError(f"{self._where()}: {what} name {name!r} is not a string")
        why = names.refusal(name)
        if why is not None:
            raise SpecError(f"{self._where()}: {what} name {name!r} {why}")
        if name in self._names:
            raise SpecError(f"{self._where()}: {what} {name!r} is declared twice")
        self._names.add(name)
        self._lines[name] = self._line()

    def _doc(self, doc: object, what: str) -> str:
        """A one-line description: generated code prints it after a ``#``, where a line break
        would end the comment and make the rest code."""
        if not isinstance(doc, str) or len(doc.splitlines()) > 1 or not doc.isprintable():
            raise SpecError(
                f"{self._where()}: the doc of {what} must be one line of printable text, "
                f"not {doc!r}"
            )
        return doc

    def _sympify(self, value: object, what: str) -> sp.Expr:
        """A spec value as a SymPy expression; anything else is refused at its spec line."""
        if isinstance(value, str):  # sympify would parse it: a typo must not become code
            raise SpecError(f"{self._where()}: {what} is the string {value!r}, not an expression")
        try:
            expr = sp.sympify(value, strict=True)
        except (sp.SympifyError, TypeError, ValueError):
            raise SpecError(
                f"{self._where()}: {what} is a {type(value).__name__}, not a SymPy expression"
            ) from None
        if not isinstance(expr, sp.Expr):
            raise SpecError(
                f"{self._where()}: {what} is {expr} (a {type(expr).__name__}), "
                "not a number-valued expression"
            )
        return expr

    def _equation(self, target: sp.Symbol, expr: sp.Expr) -> None:
        """Record ``target = expr`` with the spec line that wrote it."""
        frame = _spec_frame()
        if frame is None:
            origin = Origin(self.source, 0, f"{target} = {expr}")
        else:
            origin = Origin(_display_path(frame[0]), frame[1], f"{target} = {expr}")
        self.equations.append(Equation(target, expr, origin))

    def hyper(
        self,
        name: str,
        default: float | None,
        legal: Legal | None = None,
        *,
        none: float | None = None,
        doc: str = "",
    ) -> sp.Symbol:
        """Declare a hyperparameter with its default; ``none`` is what ``None`` stands for."""
        self._claim(name, "hyperparameter")
        doc = self._doc(doc, f"hyperparameter {name!r}")
        if legal is not None and not isinstance(legal, Legal):
            raise SpecError(f"{self._where()}: legal values of {name!r} must be a Legal(...)")
        legal = legal or Legal()
        if none is not None and (
            isinstance(none, bool) or not isinstance(none, (int, float)) or math.isnan(none)
        ):
            raise SpecError(f"{self._where()}: none={none!r} of {name!r} must be a number")
        if none is not None:
            legal = legal._replace(allow_none=True)
        if default is None and not legal.allow_none:
            raise SpecError(
                f"{self._where()}: hyperparameter {name!r} has no default "
                "(give one, or declare what None means with none=...)"
            )
        if isinstance(default, bool) or not (default is None or isinstance(default, (int, float))):
            raise SpecError(f"{self._where()}: hyperparameter {name!r} default must be a number")
        if default is not None and not legal.contains(float(default)):
            raise SpecError(
                f"{self._where()}: default {name}={default!r} is outside its legal values "
                f"{legal.describe()}"
            )
        symbol = sp.Symbol(name, real=True)
        self.hypers[name] = Hyper(
            name, symbol, None if default is None else float(default), legal, none, doc
        )
        return symbol

    def state(self, name: str, init: sp.Expr | float = 0, doc: str = "") -> sp.Symbol:
        """Declare a per-element state; ``init`` is the weight itself, or a constant or an
        expression of hyperparameters declared before (``init_state`` then takes them)."""
        self._claim(name, "state")
        doc = self._doc(doc, f"state {name!r}")
        init_expr = self._sympify(init, f"the initial value of state {name!r}")
        extra = init_expr.free_symbols - {self.weight} - set(self.hypers_symbols)
        if extra:
            raise SpecError(
                f"{self._where()}: initial value of state {name!r} may use only constants, "
                f"hyperparameters declared before it and the weight, not {sorted(map(str, extra))}"
            )
        if self.weight in init_expr.free_symbols and init_expr != self.weight:
            raise SpecError(
                f"{self._where()}: initial value of state {name!r} is {init_expr}: it may be the "
                "weight itself or an expression of constants and hyperparameters, not a mix"
            )
        origin = Origin(self.source, self._line(), f"{name} = {init_expr}")
        self._check_functions(Equation(sp.Symbol(f"initial {name}"), init_expr, origin))
        symbol = sp.Symbol(name, real=True)
        self.states[name] = State(name, symbol, sp.Symbol(f"{name}_new", real=True), init_expr, doc)
        return symbol

    def torch_equivalent(
        self,
        class_name: str,
        hyper: dict[str, str],
        states: dict[sp.Symbol, tuple[str, sp.Expr | float]],
        fixed: dict[str, bool | int | float | str | None] | None = None,
    ) -> None:
        """Declare the torch.optim optimizer whose state_dict this rule exchanges with.

        ``fixed``: torch settings that select this rule's variant (``{"amsgrad": True}``).
        """
        unknown = set(hyper) - set(self.hypers)
        if unknown:
            raise SpecError(f"{self._where()}: torch_equivalent maps unknown {sorted(unknown)}")
        fixed = dict(fixed or {})
        mapped_keys = {key.split("[")[0] for key in hyper.values()}
        for key, value in fixed.items():
            if not key.isidentifier() or key in mapped_keys:
                raise SpecError(
                    f"{self._where()}: torch_equivalent fixes {key!r}, a mapped/bad key"
                )
            if value is not None and not isinstance(value, (bool, int, float, str)):
                raise SpecError(
                    f"{self._where()}: torch_equivalent fixed {key}={value!r} must be a literal"
                )
        mapped: dict[str, tuple[str, sp.Expr]] = {}
        for symbol, (key, factor) in states.items():
            if str(symbol) not in self.states and str(symbol) not in self.host_states:
                raise SpecError(f"{self._where()}: torch_equivalent maps unknown state {symbol}")
            factor = self._sympify(factor, f"the factor of state {symbol}")
            extra = factor.free_symbols - {h.symbol for h in self.hypers.values()}
            if extra:
                raise SpecError(
                    f"{self._where()}: state factor {factor} may use only hyperparameters, "
                    f"not {sorted(map(str, extra))}"
                )
            mapped[str(symbol)] = (key, factor)
        self.torch = TorchEquivalent(class_name, dict(hyper), mapped, fixed)

    def flag(self, name: str, default: bool, doc: str = "") -> sp.Symbol:
        """A True/False hyperparameter; in equations it is 1 or 0 (e.g. ``1 - flag * beta**t``)."""
        if not isinstance(default, bool):
            raise SpecError(f"{self._where()}: flag {name!r} needs a bool default")
        return self._discrete(name, default, Legal(0.0, 1.0, flag=True), doc)

    def choice(self, name: str, default: str, choices: tuple[str, ...], doc: str = "") -> sp.Symbol:
        """A hyperparameter taking one of ``choices`` (strings); see :meth:`is_choice`."""
        if default not in choices:
            raise SpecError(f"{self._where()}: default {name}={default!r} is not one of {choices}")
        legal = Legal(0.0, float(len(choices) - 1), choices=tuple(choices))
        return self._discrete(name, default, legal, doc)

    def _discrete(self, name: str, default: str | bool, legal: Legal, doc: str) -> sp.Symbol:
        self._claim(name, "hyperparameter")
        doc = self._doc(doc, f"hyperparameter {name!r}")
        symbol = sp.Symbol(name, real=True)
        self.hypers[name] = Hyper(name, symbol, default, legal, None, doc)
        return symbol

    def is_choice(self, symbol: sp.Symbol, value: str) -> sp.Expr:
        """The condition ``symbol == value`` for a choice hyperparameter (for a Piecewise)."""
        hyper = self.hypers.get(str(symbol))
        if hyper is None or not hyper.legal.choices or value not in hyper.legal.choices:
            raise SpecError(f"{self._where()}: {symbol} has no choice {value!r}")
        return sp.Eq(symbol, hyper.legal.choices.index(value))

    def sum(self, name: str, summand: sp.Expr) -> sp.Symbol:
        """The sum over all elements of a per-element expression (a per-tensor reduction).

        Computed in a phase before the update; the summand may use step-i values, intermediates
        and new values, but not another reduction.
        """
        self._claim(name, "reduction")
        symbol = sp.Symbol(name, real=True)
        summand = self._sympify(summand, f"the summand of {name!r}")
        self.reductions[symbol] = summand
        self._equation(symbol, summand)
        return symbol

    def norm(self, name: str, expr: sp.Expr) -> sp.Expr:
        """The L2 norm of a per-element expression: sqrt of the reduction ``name`` (its square)."""
        return sp.sqrt(self.sum(name, self._sympify(expr, f"the norm {name!r}") ** 2))

    def normal(self, name: str) -> sp.Symbol:
        """A standard normal draw, fresh for every element and step.

        Counter-based (Philox-4x32-10 keyed by ``stream_seed(seed, t)``, counter = element index):
        the NumPy module and the Triton kernel draw the same numbers. Declares the ``seed``
        hyperparameter on first use. Scale it in the equations: ``sp.sqrt(lr) * xi`` is N(0, lr).
        """
        if "seed" not in self.hypers:
            self.hyper("seed", 0, integer(0, 2**52), doc="noise is keyed by (seed, t)")
        self._claim(name, "random draw")
        symbol = sp.Symbol(name, real=True)
        self.draws.append(symbol)
        return symbol

    def host_state(self, name: str, init: float, doc: str = "") -> sp.Symbol:
        """Declare a host-side scalar state (one per weight), starting at ``init``."""
        self._claim(name, "host state")
        doc = self._doc(doc, f"host state {name!r}")
        if isinstance(init, bool) or not isinstance(init, (int, float)) or not math.isfinite(init):
            raise SpecError(f"{self._where()}: host state {name!r} needs a finite number as init")
        symbol = sp.Symbol(name, real=True)
        new = sp.Symbol(f"{name}_new", real=True)
        self.host_states[name] = HostState(name, symbol, new, float(init), doc)
        return symbol

    def let(self, name: str, expr: sp.Expr | float) -> sp.Symbol:
        """A named intermediate value (it appears in the docstring equations, not in memory)."""
        self._claim(name, "intermediate")
        symbol = sp.Symbol(name, real=True)
        self.lets[symbol] = name
        self._equation(symbol, self._sympify(expr, f"the value of {name!r}"))
        return symbol

    def new(self, current: sp.Symbol) -> sp.Symbol:
        """The symbol for ``current`` at step i+1 (usable before its equation is written)."""
        if current == self.weight:
            return self.weight_new
        for st in [*self.states.values(), *self.host_states.values()]:
            if st.symbol == current:
                return st.new
        raise SpecError(f"{self._where()}: {current} is not the weight or a declared state")

    def update(self, current: sp.Symbol, expr: sp.Expr | float) -> sp.Symbol:
        """Write the equation ``current_{i+1} = expr``; returns the new symbol."""
        new = self.new(current)
        if current in self._updated:
            raise SpecError(f"{self._where()}: {current} is updated twice")
        expr = self._sympify(expr, f"the new value of {current}")
        self._updated[current] = new
        self._equation(new, expr)
        return new

    # ---------------------------------------------------------------------------------- checks
    @property
    def element_inputs(self) -> list[sp.Symbol]:
        """Per-element values at step i, in buffer order: weight, grad, states."""
        return [self.weight, self.grad] + [s.symbol for s in self.states.values()]

    @property
    def host_inputs(self) -> list[sp.Symbol]:
        """Values known on the host before a step: hyperparameters and the step count."""
        hypers = [h.symbol for h in self.hypers.values()]
        return hypers + [self.t] + [s.symbol for s in self.host_states.values()]

    @property
    def outputs(self) -> dict[sp.Symbol, sp.Symbol]:
        """Per-element buffers written, current -> new, in buffer order (states, then weight)."""
        out = {s.symbol: s.new for s in self.states.values()}
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
        declared |= {str(s) for s in [*self.reductions, *self.draws]}
        return declared | {self.name, self.class_name}

    @property
    def scalar_inputs(self) -> list[sp.Symbol]:
        """Host inputs plus per-tensor reductions: everything that is one number per tensor."""
        return self.host_inputs + list(self.reductions)

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
        known |= set(self.draws)
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
        self._finished = True
        return self

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
                    "(not a number)"
                )
            if isinstance(node, (sp.Symbol, sp.Number, sp.Add, sp.Mul, sp.Pow)):
                continue
            if isinstance(node, SUPPORTED_FUNCTIONS + _RELATIONALS + _BOOLEAN + _HOST_ONLY):
                continue
            if isinstance(node, (sp.logic.boolalg.BooleanTrue, sp.core.numbers.NumberSymbol)):
                continue
            if isinstance(node, sp.logic.boolalg.BooleanFalse):
                continue
            name = getattr(node, "func", type(node)).__name__
            raise SpecError(
                f"{self._at(eq)}: equation for {eq.target} uses {name}, which is outside the "
                f"supported elementwise set ({', '.join(f.__name__ for f in SUPPORTED_FUNCTIONS)}, "
                "+, *, powers)"
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

    def hyperparameter_defaults(self) -> dict[str, float | None]:
        return {h.name: h.default for h in self.hypers.values()}
