"""A rule's hyperparameters (``RULE.hyper``, ``flag``, ``choice``) and the condition of a choice
(``is_choice``): :class:`Hypers`, a part of :class:`codegen.spec.Rule`."""

from __future__ import annotations

import math

import sympy as sp

from codegen.errors import SpecError
from codegen.spec_parts import Hyper
from optgen_runtime.hyperparams import Legal


class Hypers:
    """The hyperparameter declarations of :class:`codegen.spec.Rule` (which holds what they
    write: ``hypers``, the declared names)."""

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

    def flag(self, name: str, default: bool, doc: str = "") -> sp.Symbol:
        """A True/False hyperparameter; in equations it is 1 or 0 (e.g. ``1 - flag * beta**t``)."""
        if not isinstance(default, bool):
            raise SpecError(f"{self._where()}: flag {name!r} needs a bool default")
        return self._discrete(name, default, Legal(0.0, 1.0, flag=True), doc)

    def choice(
        self,
        name: str,
        default: str,
        choices: tuple[str, ...],
        doc: str = "",
        *,
        none: str | None = None,
    ) -> sp.Symbol:
        """A hyperparameter taking one of ``choices`` (strings); see :meth:`is_choice`.
        ``none``: the choice that ``None`` stands for, where the reference takes None (torch's
        ``Muon(adjust_lr_fn=None)`` is "original")."""
        if default not in choices:
            raise SpecError(f"{self._where()}: default {name}={default!r} is not one of {choices}")
        if none is not None and none not in choices:
            raise SpecError(f"{self._where()}: none={none!r} of {name!r} is not one of {choices}")
        legal = Legal(0.0, float(len(choices) - 1), allow_none=none is not None, choices=choices)
        none_value = None if none is None else float(choices.index(none))
        return self._discrete(name, default, legal, doc, none_value)

    def _discrete(
        self,
        name: str,
        default: str | bool,
        legal: Legal,
        doc: str,
        none_value: float | None = None,
    ) -> sp.Symbol:
        self._claim(name, "hyperparameter")
        doc = self._doc(doc, f"hyperparameter {name!r}")
        symbol = sp.Symbol(name, real=True)
        self.hypers[name] = Hyper(name, symbol, default, legal, none_value, doc)
        return symbol

    def is_choice(self, symbol: sp.Symbol, value: str) -> sp.Expr:
        """The condition ``symbol == value`` for a choice hyperparameter (for a Piecewise)."""
        hyper = self.hypers.get(str(symbol))
        if hyper is None or not hyper.legal.choices or value not in hyper.legal.choices:
            raise SpecError(f"{self._where()}: {symbol} has no choice {value!r}")
        return sp.Eq(symbol, hyper.legal.choices.index(value))
