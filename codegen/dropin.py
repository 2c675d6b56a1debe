"""torch.optim drop-in declarations (``Rule.drop_in``): a rule generated as a class with
torch.optim's name, constructor signature, defaults and state_dict format
(``generated/torch/optim.py``). Kept apart from the spec model: this is torch's API, checked
against the rule's ``torch_equivalent``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import sympy as sp

from codegen.errors import SpecError

if TYPE_CHECKING:
    from codegen.spec import Rule

# torch.optim's implementation switches and their defaults: accepted by a drop-in class (see
# optgen_runtime/optim/dropin.py for what each means there), never hyperparameters.
SWITCHES = {"foreach": None, "fused": None, "capturable": False, "differentiable": False}


@dataclass(frozen=True)
class DropIn:
    """A class with torch.optim's name, constructor and state_dict format (``Rule.drop_in``).

    ``signature``: torch's arguments after ``params``, in order, with ``"*"`` where they become
    keyword-only, each with its default; ``fixed``: torch settings the class always passes
    (AdamW's ``decoupled_weight_decay=True``); ``own``: the rule's hyperparameters that torch
    has no argument for (Muon's ``ns_dtype``), keyword-only after torch's, at the rule's defaults.
    """

    class_name: str
    signature: tuple[tuple[str, object], ...]
    fixed: dict[str, object]
    below_2d: dict[str, str]  # row/column state -> torch's key for a weight of < 2 dims
    line: int
    own: tuple[tuple[str, object], ...] = ()  # the rule's hyperparameters torch lacks, defaults
    state_from_defaults: bool = False  # state made at construction, from the defaults (Adagrad)


def torch_default(rule: Rule, name: str) -> object:
    """A hyperparameter's default as torch writes it: an integer one as an int (Muon's
    ``ns_steps=5``), a choice that ``None`` stands for as None (Muon's ``adjust_lr_fn``)."""
    hyper = rule.hypers[name]
    legal, default = hyper.legal, hyper.default
    if legal.integer and isinstance(default, float):
        return int(default)
    none = hyper.none_value
    if legal.choices and none is not None and legal.choices[int(none)] == default:
        return None
    return default


def declare(
    rule: Rule,
    where: str,
    line: int,
    class_name: str,
    signature: str,
    below_2d: dict[str, str] | None,
    settings: dict[str, object],
    state_from_defaults: bool = False,
) -> DropIn:
    """``rule.drop_in(...)`` checked against the rule (see :meth:`codegen.spec.Rule.drop_in`);
    ``where``/``line``: the spec line, for errors and the record."""
    eq = rule.torch
    if eq is None:
        raise SpecError(f"{where}: drop_in({class_name!r}) needs torch_equivalent first")
    if not (isinstance(class_name, str) and class_name.isidentifier()):
        raise SpecError(f"{where}: drop_in class name {class_name!r} is not an identifier")
    if any(d.class_name == class_name for d in rule.drop_ins):
        raise SpecError(f"{where}: drop_in {class_name!r} is declared twice")
    tuples: dict[str, dict[int, str]] = {}
    ours_of: dict[str, str] = {}  # torch's scalar name -> the hyperparameter's
    for ours, theirs in eq.hyper.items():
        base, _, index = theirs.partition("[")
        if index:
            tuples.setdefault(base, {})[int(index.rstrip("]"))] = ours
            continue
        if base != ours and base in rule.hypers:
            raise SpecError(
                f"{where}: drop_in: hyperparameter {ours!r} maps to torch's {theirs!r}, which "
                "is the name of another hyperparameter of the rule (a param group would hold "
                "both under one key)"
            )
        ours_of[base] = ours
    for state, (key, factor) in eq.states.items():
        if sp.sympify(factor) != 1:
            raise SpecError(f"{where}: drop_in: state {state} ({key!r}) needs factor 1")
    scalars = set(ours_of)
    names_ = [n.strip() for n in signature.split(",")] if isinstance(signature, str) else []
    args: list[tuple[str, object]] = []
    for name in names_:
        if name == "*":
            args.append(("*", None))
            continue
        if name in scalars:
            default: object = torch_default(rule, ours_of[name])
        elif name in tuples:
            items = tuples[name]
            if sorted(items) != list(range(len(items))):
                raise SpecError(f"{where}: drop_in: torch tuple {name!r} has missing items")
            default = tuple(rule.hypers[items[i]].default for i in range(len(items)))
        elif name in SWITCHES:
            default = SWITCHES[name]
        else:
            raise SpecError(
                f"{where}: drop_in signature names {name!r}, which is neither a mapped "
                f"hyperparameter, a torch tuple of them nor one of {sorted(SWITCHES)}"
            )
        if name in settings:
            default = settings[name]
        args.append((name, default))
    given = [n for n, _ in args if n != "*"]
    if len(set(given)) != len(given) or not given or names_.count("*") > 1:
        raise SpecError(f"{where}: drop_in signature {signature!r} is malformed")
    missing = sorted((scalars | set(tuples)) - set(given) - set(settings))
    if missing:
        raise SpecError(f"{where}: drop_in signature lacks {missing}")
    below = dict(below_2d or {})
    for key, value in below.items():
        state = rule.states.get(key)
        if state is None or state.axis is None or not isinstance(value, str):
            raise SpecError(f"{where}: drop_in below_2d maps {key!r}: not a row/column state")
    fixed = {k: v for k, v in settings.items() if k not in given}
    for key, value in fixed.items():
        if key not in scalars or not isinstance(value, (bool, int, float, str, type(None))):
            raise SpecError(f"{where}: drop_in fixes {key}={value!r}: not a mapped literal")
    own = tuple((h.name, h.default) for h in rule.hypers.values() if h.name not in eq.hyper)
    if not isinstance(state_from_defaults, bool):
        raise SpecError(f"{where}: drop_in state_from_defaults={state_from_defaults!r}: not a bool")
    return DropIn(class_name, tuple(args), fixed, below, line, own, state_from_defaults)
