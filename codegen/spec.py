"""The spec model: one optimizer rule as declared symbols and update equations.

A spec file (``specs/<rule>.py``) builds one :class:`Rule` at import time and binds it to the
module-level name ``RULE``. The rule declares its weight, gradient and step count (always present),
its hyperparameters (name, default, legal values), its per-element states (with initial values)
and its equations, written in the seed's notation: the value at step i+1 from values at step i.
``rule.update(m, expr)`` returns the symbol for ``m`` at step i+1, which later equations may use.

Everything a rule declares is checked as it is declared; :meth:`Rule.finish` checks the whole
(every state and the weight updated exactly once, only declared symbols, only supported functions,
no cycles). Every error is a :class:`SpecError` that names the spec file and the culprit.
Parts of :class:`Rule` live beside it: hyperparameters (``codegen/spec_hypers.py``), reductions
(``codegen/spec_reductions.py``), special cases, absent states, the torch mapping, sparse mode
and test cases (``codegen/spec_cases.py``), and the whole-rule queries and checks
(``codegen/spec_checks.py``).
"""

from __future__ import annotations

import inspect
import keyword
import math

import sympy as sp

from codegen import names
from codegen.absence import check_special_cases
from codegen.dropin import DropIn
from codegen.errors import SpecError
from codegen.ir import Origin
from codegen.ops import f32, softplus
from codegen.spec_cases import Cases
from codegen.spec_checks import Checks
from codegen.spec_hypers import Hypers
from codegen.spec_parts import (
    Equation,
    HostState,
    Hyper,
    Input,
    ScalarInput,
    State,
    TestCase,
    as_is,
    caller_file,
    display_path,
    exact_exponents,
    integer,
    nonnegative,
    positive,
    python_max,
    spec_frame,
    torch_lerp,
    unit,
)
from codegen.spec_reductions import Reductions
from optgen_runtime.hyperparams import Legal, TorchEquivalent

__all__ = [
    "Legal",
    "Rule",
    "as_is",
    "f32",
    "integer",
    "nonnegative",
    "positive",
    "python_max",
    "softplus",
    "torch_lerp",
    "unit",
]


class Rule(Hypers, Reductions, Cases, Checks):
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
        self.source = display_path(source or caller_file())
        self._lines: dict[str, int] = {}  # declared name -> its spec line
        self.line = self._line()  # the spec line of Rule(...)
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise SpecError(f"{self._where()}: rule name {name!r} is not a Python identifier")
        if name != name.lower():  # module names (its special cases' are lower-case too)
            raise SpecError(
                f"{self._where()}: rule name {name!r} must be lower-case ({name.lower()!r}; "
                "class_name=... names its class)"
            )
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
        self.drop_ins: list[DropIn] = []  # torch.optim drop-in classes (generated/torch/optim.py)
        # sparse gradients (``sparse``): None (refused), "lazy" or "dense"; the class keyword
        # lazy_update; settings refused as (hyperparameter, "==" or "!=", value), and why
        self.sparse_mode: str | None = None
        self.lazy_update = False
        self.sparse_refused: list[tuple[str, str, float | str | bool]] = []
        self.sparse_why = ""
        self.doc = inspect.cleandoc(doc)
        self.weight = sp.Symbol("weight", real=True)
        self.grad = sp.Symbol("grad", real=True)
        self.t = sp.Symbol("t", positive=True, integer=True)
        self.weight_new = sp.Symbol("weight_new", real=True)
        self.hypers: dict[str, Hyper] = {}
        self.states: dict[str, State] = {}
        self.host_states: dict[str, HostState] = {}
        self.inputs: dict[str, Input] = {}  # per-element inputs besides the gradient
        self.scalars: dict[str, ScalarInput] = {}  # per-step scalar inputs
        self.reductions: dict[sp.Symbol, sp.Expr] = {}  # symbol -> summand (per element)
        self.reduction_kinds: dict[sp.Symbol, str] = {}  # symbol -> "sum", "max" or "min"
        self.reduction_axes: dict[sp.Symbol, int | None] = {}  # None: over the whole tensor
        self.group_reductions: list[sp.Symbol] = []  # over every tensor of the group
        self._domains: dict[sp.Symbol, frozenset[str]] = {}
        self._computing: set[sp.Symbol] = set()
        self.sizes: list[sp.Symbol] = []  # per-tensor sizes the spec uses (``numel``)
        self.draws: list[sp.Symbol] = []  # standard normal draws, one per element and step
        # per-element values computed by matrix equations (codegen/matrix.py): symbol -> record
        self.matrix_values: dict[sp.Symbol, object] = {}
        self.lets: dict[sp.Symbol, str] = {}
        # states absent while hyperparameters have these values (``state(absent_when=...)``)
        self.absent: dict[str, dict[sp.Symbol, float]] = {}
        # hyperparameter values at which the update runs with them substituted exactly
        # (``special_case``): name -> values, in the order the host tries them
        self.special: dict[str, dict[sp.Symbol, float]] = {}
        self.special_docs: dict[str, str] = {}
        self.variant_of: str | None = None  # a variant (codegen/variants.py): the rule it is of
        self.equations: list[Equation] = []
        self.test_cases: list[TestCase] = []
        self._names: set[str] = {
            "weight",
            "grad",
            "t",
            "weight_new",
            "numel",
            "ndim",
            "rows",
            "cols",
        }
        self._updated: dict[sp.Symbol, sp.Symbol] = {}  # current symbol -> new symbol
        self._finished = False

    # ----------------------------------------------------------------------------- declarations
    def _line(self) -> int:
        """The line of the spec file being run (0 when the call does not come from it)."""
        frame = spec_frame()
        return frame[1] if frame and display_path(frame[0]) == self.source else 0

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
        return exact_exponents(expr)

    def _equation(self, target: sp.Symbol, expr: sp.Expr) -> None:
        """Record ``target = expr`` with the spec line that wrote it."""
        frame = spec_frame()
        if frame is None:
            origin = Origin(self.source, 0, f"{target} = {expr}")
        else:
            origin = Origin(display_path(frame[0]), frame[1], f"{target} = {expr}")
        self.equations.append(Equation(target, expr, origin))

    def state(
        self,
        name: str,
        init: sp.Expr | float = 0,
        doc: str = "",
        *,
        axis: int | None = None,
        absent_when: dict[sp.Symbol, float | bool] | None = None,
    ) -> sp.Symbol:
        """Declare a per-element state; ``init`` is the weight itself, or a constant or an
        expression of hyperparameters declared before (``init_state`` then takes them).

        ``axis=-1``: one value per row instead (the weight's shape without its last axis:
        Adafactor's row factor); ``axis=-2``: one value per column (without the second-to-last
        axis). A 1-D weight is one row, a 0-D weight one element.

        ``absent_when={hyper: value, ...}``: while those hyperparameters have those values the
        state does not exist (torch's SGD keeps no momentum buffer at momentum=0): the
        generator emits a variant of the update with the values substituted, which must then
        neither read nor write the state (:mod:`codegen.variants`), and the host runs it
        whenever a call's hyperparameters match (no recompilation: they stay runtime values).
        """
        self._claim(name, "state")
        absent = self._absent_when(name, absent_when, axis)
        if axis not in (None, -1, -2):
            raise SpecError(f"{self._where()}: state {name!r}: axis must be None, -1 or -2")
        if axis is not None and not sp.sympify(init).is_Number:
            raise SpecError(f"{self._where()}: state {name!r} has an axis: its init is a constant")
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
        new = sp.Symbol(f"{name}_new", real=True)
        self.states[name] = State(name, symbol, new, init_expr, doc, axis)
        if absent is not None:
            self.absent[name] = absent
            check_special_cases(self, f"{self._where()}: state {name!r}")  # (declared after)
        return symbol

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

    def input(self, name: str, doc: str = "") -> sp.Symbol:
        """Declare a per-element input besides the gradient: weight-shaped, read-only, passed to
        every step as the keyword argument ``name`` (a list per input for ``step_multi``)."""
        self._claim(name, "input")
        doc = self._doc(doc, f"input {name!r}")
        symbol = sp.Symbol(name, real=True)
        self.inputs[name] = Input(name, symbol, doc)
        return symbol

    def scalar(self, name: str, doc: str = "") -> sp.Symbol:
        """Declare a per-step scalar input (the loss, say): a finite number the caller passes
        to every step as the keyword argument ``name``; what depends only on it, the
        hyperparameters and t is computed on the host, like any host scalar."""
        self._claim(name, "scalar input")
        doc = self._doc(doc, f"scalar input {name!r}")
        symbol = sp.Symbol(name, real=True)
        self.scalars[name] = ScalarInput(name, symbol, doc)
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
        raise SpecError(
            f"{self._where()}: {current} is not the weight or a declared state (declare it "
            f"with RULE.state({str(current)!r}, init); a value of the step is RULE.let's)"
        )

    def update(self, current: sp.Symbol, expr: sp.Expr | float) -> sp.Symbol:
        """Write the equation ``current_{i+1} = expr``; returns the new symbol."""
        new = self.new(current)
        if current in self._updated:
            raise SpecError(f"{self._where()}: {current} is updated twice")
        expr = self._sympify(expr, f"the new value of {current}")
        self._updated[current] = new
        self._equation(new, expr)
        return new


# The parts' methods are the rule's to a spec author: a wrong call's TypeError names what was
# called (``RULE.test_case``: "Rule.test_case() takes ..."), not the part that holds it.
for _part in (Hypers, Reductions, Cases, Checks):
    for _name, _method in vars(_part).items():
        if inspect.isfunction(_method):
            _method.__qualname__ = f"Rule.{_name}"
