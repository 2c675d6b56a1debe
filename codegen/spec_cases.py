"""A rule's declarations of where its update differs and how it maps onto others: absent
states' conditions (``state(absent_when=...)``), special cases, its torch.optim equivalent and
drop-in classes, its sparse-gradient mode and its test cases: :class:`Cases`, a part of
:class:`codegen.spec.Rule`."""

from __future__ import annotations

import math

import sympy as sp

from codegen.absence import check_special_cases
from codegen.dropin import declare
from codegen.errors import SpecError
from codegen.spec_parts import TestCase
from optgen_runtime.hyperparams import TorchEquivalent


class Cases:
    """The special cases, absent states, torch mapping, sparse mode and test cases of
    :class:`codegen.spec.Rule` (which holds what they read and write)."""

    def _absent_when(
        self, name: str, absent_when: object, axis: int | None
    ) -> dict[sp.Symbol, float] | None:
        """``absent_when`` checked: hyperparameters declared before, each at a legal value.
        Each state has its own condition: a variant per set of absent states some setting
        gives (:mod:`codegen.absence`)."""
        if absent_when is None:
            return None
        where = f"{self._where()}: state {name!r}: absent_when"
        if axis is not None:
            raise SpecError(f"{where} is for per-element states (this one has an axis)")
        return self._hyper_values(where, absent_when)

    def _hyper_values(self, where: str, values: object) -> dict[sp.Symbol, float]:
        """``{hyperparameter: value}`` checked (hyperparameters declared before, each at a legal
        value) and as the host passes them: a choice by its index, a flag as 0.0/1.0."""
        if not isinstance(values, dict) or not values:
            raise SpecError(f"{where} must be a non-empty dict {{hyperparameter: value}}")
        out: dict[sp.Symbol, float] = {}
        by_symbol = {h.symbol: h for h in self.hypers.values()}
        for key, value in values.items():
            hyper = by_symbol.get(key) if isinstance(key, sp.Symbol) else None
            if hyper is None:
                raise SpecError(
                    f"{where} names {key!r}, which is not a hyperparameter declared before it"
                )
            if hyper.legal.choices:
                ok = isinstance(value, str) and value in hyper.legal.choices
                number = float(hyper.legal.choices.index(value)) if ok else math.nan
            elif hyper.legal.flag:
                ok, number = isinstance(value, bool), float(bool(value))
            elif value is None:  # what None stands for, as the host resolves it
                ok = hyper.none_value is not None
                number = float(hyper.none_value) if ok else math.nan  # type: ignore[arg-type]
            else:
                ok = not isinstance(value, bool) and isinstance(value, (int, float))
                number = float(value) if ok else math.nan
                ok = ok and hyper.legal.contains(number)
            if not ok:
                raise SpecError(
                    f"{where} {hyper.name}={value!r} is outside its legal values "
                    f"{hyper.legal.describe()}"
                )
            out[key] = number
        return out

    def special_case(self, name: str, values: dict[sp.Symbol, float | bool], doc: str) -> None:
        """Declare hyperparameter values at which the update is computed with them substituted
        as exact numbers: what they make vanish is not computed (``wd * w`` at ``wd = 0``, a
        factor ``rescale_grad = 1``, a Piecewise branch they decide).

        The generator emits the update at those values as a variant (:mod:`codegen.variants`;
        modules ``generated/<target>/<rule>_<name>.py``), and the rule's step functions run it
        whenever a call's hyperparameters have them (first match in declaration order), so the
        values stay runtime arguments. Fewer operations per element (plain SGD: one multiply
        and one add where the whole update has five), and the value MXNet's and torch's code
        give there: ``0 * w`` vanishes for an infinite weight too (torch skips weight decay at
        0; MXNet computes ``(1 - lr * wd) * w``) where the general update's ``w - lr*wd*w``
        gives NaN. A state whose ``absent_when`` these values include is absent in the special
        case too; one that is absent somewhere the case runs first but kept by it is refused
        (:func:`codegen.absence.check_special_cases`): the values must include or exclude its
        ``absent_when``'s, or earlier special cases must run wherever it is absent (torch_sgd's
        ``no_decay`` after ``plain``).
        """
        where = f"{self._where()}: special_case {name!r}"
        if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
            raise SpecError(f"{where}: the name must be a lower-case identifier")
        if name in self.special:
            raise SpecError(f"{where} is declared twice")
        out = self._hyper_values(where, values)
        self._doc(doc, f"special case {name!r}")
        for other, before in self.special.items():
            if before == out:
                raise SpecError(f"{where} has the values of special case {other!r}")
        self.special[name] = out
        self.special_docs[name] = doc
        check_special_cases(self, self._where())

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

    def drop_in(
        self,
        class_name: str,
        signature: str,
        *,
        below_2d: dict[str, str] | None = None,
        state_from_defaults: bool = False,
        **settings: object,
    ) -> None:
        """Declare ``torch.optim.<class_name>`` as this rule, generated as a drop-in class of that
        name in ``generated/torch/optim.py``: torch's constructor ``signature`` (its arguments
        after ``params`` in order, ``*`` where they become keyword-only), defaults and
        state_dict format. Needs ``torch_equivalent`` first, mapping every hyperparameter to the
        torch key of the same name or to an item of a torch tuple (``betas[0]``), every state
        with factor 1. ``settings``: a default other than the hyperparameter's (AdamW's
        ``weight_decay=0.01``) for an argument in the signature, else a torch setting the class
        always passes (AdamW's ``decoupled_weight_decay=True``). ``below_2d``: for a rule with
        row/column states (``axis``), torch's key of each state kept for a weight of fewer than
        two dims (Adafactor's ``{"col": "variance"}``; the others are not kept there); for
        larger weights torch keeps them with the reduced axis (keepdim).
        ``state_from_defaults``: torch's class makes every parameter's state when it is built,
        and any state it makes later, from the constructor's values (``self.defaults``), never a
        group's (torch.optim.Adagrad's ``initial_accumulator_value``): so does the drop-in."""
        self.drop_ins.append(
            declare(
                self,
                self._where(),
                self._line(),
                class_name,
                signature,
                below_2d,
                settings,
                state_from_defaults,
            )
        )

    def sparse(
        self,
        mode: str,
        *,
        lazy_update: bool = False,
        only_at: dict[sp.Symbol, float | bool | str] | None = None,
        not_at: dict[sp.Symbol, float | bool | str] | None = None,
        why: str = "",
    ) -> None:
        """How the torch class steps a parameter whose gradient is sparse (a COO tensor, as
        ``nn.Embedding(sparse=True)`` makes it; MXNet's ``row_sparse``). Without this
        declaration such a gradient is refused.

        - ``"lazy"``: only the elements (rows) the gradient holds are updated, with their
          states; the others keep weight and state, and their moments do not decay (MXNet
          1.9.1's row_sparse kernels: ``sparse.sgd_update``, ``adam_update``, ...).
          ``lazy_update=True``: the class takes MXNet's keyword ``lazy_update`` (default
          True); ``lazy_update=False`` steps as ``"dense"``.
        - ``"dense"``: the step of ``grad.to_dense()``, every element updated as if absent
          gradients were 0 (MXNet 1.9.1's storage fallback, for an op without a sparse kernel,
          and its standard update under ``lazy_update=False``).

        ``only_at`` / ``not_at``: hyperparameter values outside of which / at which a sparse
        gradient is refused, before anything is written, with ``why`` (MXNet 1.9.1's AdaGrad
        dispatches its sparse kernel at wd = 0 only and fails otherwise).
        """
        where = f"{self._where()}: sparse"
        if self.sparse_mode is not None:
            raise SpecError(f"{where} is declared twice")
        if mode not in ("lazy", "dense"):
            raise SpecError(f"{where}: mode {mode!r} is not 'lazy' or 'dense'")
        if not isinstance(lazy_update, bool) or (lazy_update and mode != "lazy"):
            raise SpecError(f"{where}: lazy_update=True is for mode 'lazy' (a bool)")
        refused: list[tuple[str, str, float | str | bool]] = []
        for op, values in (("!=", only_at), ("==", not_at)):
            if values is None:
                continue
            label = "only_at" if op == "!=" else "not_at"
            self._hyper_values(f"{where}: {label}", values)  # declared, legal values
            refused += [(str(h), op, v) for h, v in values.items()]
        if refused and not (isinstance(why, str) and why.strip()):
            raise SpecError(f"{where}: only_at/not_at need why= (the refusal's reason)")
        if why and not refused:
            raise SpecError(f"{where}: why= explains only_at/not_at; none is given")
        self.sparse_mode = mode
        self.lazy_update = lazy_update
        self.sparse_refused = refused
        self.sparse_why = " ".join(why.split())

    def test_case(self, steps: int | None = None, **hyperparams: float | str | bool | None) -> None:
        """Ask the test suite to also run this setting (the rest at their defaults), for ``steps``
        steps: for a branch or a state that the settings the suite derives from the declarations
        (random legal values, every flag and choice value, steps until every branch decided on
        the host is reached) cannot reach. The suite compares it with the equations at 40 digits
        and Triton with NumPy, and counts it for branch coverage (tests/derived.py)."""
        if steps is not None and (
            isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 100
        ):
            raise SpecError(f"{self._where()}: test_case steps={steps!r} must be an int in 1..100")
        for name, value in hyperparams.items():
            hyper = self.hypers.get(name)
            if hyper is None:
                raise SpecError(
                    f"{self._where()}: test_case sets {name!r}, which is not a hyperparameter "
                    "declared before it"
                )
            legal = hyper.legal
            if legal.flag:
                ok = isinstance(value, bool)
            elif legal.choices:
                ok = isinstance(value, str) and value in legal.choices
            elif value is None:
                ok = legal.allow_none
            else:
                ok = (
                    not isinstance(value, bool)
                    and isinstance(value, (int, float))
                    and legal.contains(float(value))
                )
            if not ok:
                raise SpecError(
                    f"{self._where()}: test_case {name}={value!r} is outside its legal values "
                    f"{legal.describe()}"
                )
        self.test_cases.append(TestCase(dict(hyperparams), steps, self._line()))
