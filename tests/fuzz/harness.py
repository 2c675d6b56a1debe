"""Shared pieces of the fuzz suite: rule metadata, drawn values, snapshots and the verdict.

Every case ends in one verdict, recorded per category (``fuzz.conftest.COUNTS``):

- ``refused cleanly``: an exception whose message names the rule (or class) and one culprit
  (a perturbed argument, hyperparameter, buffer or key), with every input byte-identical;
- ``accepted and equal``: no exception, and the result equals the reference call;
- ``silently wrong``: accepted although an input is illegal, or different from the reference;
- ``partial write``: refused, but an input changed;
- ``unclear refusal``: refused without naming the rule and a culprit, or refusing a legal case;
- ``known (strict xfail)``: an open issue-9 bug or one this suite found, each pinned by a strict
  xfail in ``test_fuzz_found.py``.

The test fails on every verdict but the first two and the last.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import torch
from conftest import RULE_NAMES as ALL_RULES
from hypothesis import strategies as st

from fuzz.conftest import COUNTS

META: dict[str, ModuleType] = {
    r: importlib.import_module(f"generated.rules.{r}") for r in ALL_RULES
}
# Rules whose step takes inputs besides the gradient (AdaHessian's hessian, a loss) are drawn
# by the NumPy and Triton step fuzz only (WITH_INPUTS: per-element inputs, perturbed like the
# gradient); elsewhere their inputs' guards are tested in tests/test_input_guards.py.
RULE_NAMES = [r for r in ALL_RULES if not META[r].INPUTS and not META[r].STEP_SCALARS]
WITH_INPUTS = [r for r in ALL_RULES if META[r].INPUTS and not META[r].STEP_SCALARS]

REFUSED = "refused cleanly"
EQUAL = "accepted and equal"
WRONG = "silently wrong"
PARTIAL = "partial write"
UNCLEAR = "unclear refusal"
KNOWN = "known (strict xfail)"
OUTCOMES = (REFUSED, EQUAL, WRONG, PARTIAL, UNCLEAR, KNOWN)


def numpy_module(rule: str) -> ModuleType:
    return importlib.import_module(f"generated.numpy.{rule}")


def triton_module(rule: str) -> ModuleType:
    return importlib.import_module(f"generated.triton.{rule}")


def torch_class(rule: str) -> type:
    from generated.torch import RULES

    return RULES[rule]


# -- snapshots ------------------------------------------------------------------------------------


def snap(x: Any, seen: set[int] | None = None) -> Any:
    """``x`` as plain, comparable data: bytes of arrays and tensors, floats by their bits,
    containers recursively (the same object twice is snapshotted each time)."""
    if isinstance(x, np.ndarray):
        return ("ndarray", str(x.dtype), x.shape, np.ascontiguousarray(x).tobytes())
    if isinstance(x, torch.Tensor):
        d = x.detach()
        if d.is_meta or d.layout != torch.strided:
            return ("tensor", str(d.dtype), tuple(d.shape), repr(d.layout), d.is_meta)
        flat = torch.empty(d.numel(), dtype=d.dtype)  # a fresh contiguous copy
        flat.copy_(d.cpu().reshape(-1))
        raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        return ("tensor", str(d.dtype), tuple(d.shape), raw)
    if isinstance(x, float):
        return ("float", x.hex())
    if isinstance(x, dict):
        return ("dict", [(repr(k), snap(v)) for k, v in x.items()])
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, [snap(v) for v in x])
    if isinstance(x, np.generic):
        return ("npscalar", str(x.dtype), x.tobytes())
    return ("other", type(x).__name__, repr(x))


# -- the verdict ----------------------------------------------------------------------------------


@dataclass
class Case:
    """What a fuzz case perturbed: ``culprits`` (names a refusal may give), whether a refusal
    is required (``must_refuse``), allowed (``may_refuse``), and a known issue-9 bug it hits."""

    where: str  # the rule or class name a refusal must give
    also: str = ""  # another name it may give instead (a class's rule)
    culprits: list[str] = field(default_factory=list)
    must_refuse: bool = False
    may_refuse: bool = False
    known: str | None = None
    notes: list[str] = field(default_factory=list)
    # states absent under the drawn hyperparameters (ABSENT: torch_sgd's momentum buffer at
    # momentum=0): the step neither reads nor checks them, so perturbing them proves nothing
    absent: frozenset[str] = frozenset()

    def perturb(self, note: str, culprits: list[str], must: bool | None) -> None:
        """``must``: True (illegal: must be refused), False (legal), None (either is fine)."""
        self.notes.append(note)
        self.culprits += culprits
        if must is True:
            self.must_refuse = True
        elif must is None:
            self.may_refuse = True


def verdict(
    category: str,
    case: Case,
    inputs: Callable[[], Any],
    call: Callable[[], Any],
    reference: Callable[[Any], str | None],
) -> str:
    """Run ``call`` on the case; classify; record; return the verdict (raising on a bad one).

    ``inputs()`` snapshots everything the call may not change when it refuses;
    ``reference(result)`` returns None when the accepted result equals the reference, else why.
    """
    before = snap(inputs())
    try:
        result = call()
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
        if snap(inputs()) != before:
            outcome, why = PARTIAL, f"refused with {message!r} after writing an input"
        elif not any(w and w in str(error) for w in (case.where, case.also)) or not any(
            c in str(error) for c in case.culprits
        ):
            named = f"{case.where!r} and one of {case.culprits}"
            outcome, why = UNCLEAR, f"{message!r} does not name {named}"
        elif not (case.must_refuse or case.may_refuse):
            outcome, why = UNCLEAR, f"refused a legal case: {message!r}"
        else:
            outcome, why = REFUSED, ""
    else:
        if case.must_refuse:
            outcome, why = WRONG, "accepted an illegal input"
        else:
            why = reference(result)
            outcome = EQUAL if why is None else WRONG
    if outcome not in (REFUSED, EQUAL) and case.known:
        outcome = KNOWN
    COUNTS[category][outcome] += 1
    COUNTS[category]["drawn"] += 1
    if outcome not in (REFUSED, EQUAL, KNOWN):
        survey = os.environ.get("OPTGEN_FUZZ_SURVEY")  # a file: list every bad case, go on
        if survey:
            with open(survey, "a") as f:
                f.write(f"{category}: {case.where}: {outcome}: {why}; case {case.notes}\n")
            return outcome
        raise AssertionError(f"{category}: {case.where}: {outcome}: {why}; case {case.notes}")
    return outcome


# -- drawn values ---------------------------------------------------------------------------------

OMIT = object()


def hyper_candidates(rule: str, name: str) -> list[Any]:
    """Values worth trying for hyperparameter ``name`` of ``rule``: its legal edges (lo/hi and
    their neighbours), 0, tiny, huge, inf, NaN, None, bools, strings, numpy scalars, ..."""
    legal = META[rule].LEGAL[name]
    default = META[rule].HYPERPARAMS[name]
    if legal.choices:
        return [*legal.choices, "LINEAR", 0, 1.0, None, True, "", 3]
    if legal.flag:
        return [True, False, 0, 1, np.bool_(True), 0.5, None, "True", 2]
    out: list[Any] = [0, 0.0, -0.0, 5e-324, 1e-30, 1e-8, 0.5, 1.0, 2.0, 1e30, 1e308]
    out += [-1.0, math.inf, -math.inf, math.nan, None, True, False, "0.1", b"1"]
    out += [np.float32(0.25), np.float64(0.75), np.int64(1), np.float16(0.5), np.bool_(False)]
    out += [torch.tensor(0.5), torch.tensor([0.5, 0.5]), [0.1], 1 + 0j]
    for edge in (legal.lo, legal.hi):
        if math.isfinite(edge):
            out += [edge, math.nextafter(edge, math.inf), math.nextafter(edge, -math.inf)]
            if legal.integer:
                out += [int(edge), int(edge) + 1, edge + 0.5]
    if legal.integer:
        out += [3, 3.0, 2.5, 2**53, 2**60, np.int32(2)]
    if default is not None:
        out += [default, np.float32(default)]
    return out


def predicted_legal(rule: str, name: str, value: Any) -> bool | None:
    """Whether ``resolve_hyperparams`` must accept (True), refuse (False) the value, or either."""
    legal = META[rule].LEGAL[name]
    if legal.choices:
        return isinstance(value, str) and value in legal.choices
    if legal.flag:
        if isinstance(value, (bool, np.bool_)):
            return True
        return None if value in (0, 1) and not isinstance(value, str) else False
    if value is None:
        return legal.allow_none
    if isinstance(value, (bool, np.bool_, str, bytes, list, complex)):
        return False
    if isinstance(value, torch.Tensor):
        return None if value.numel() == 1 else False
    if isinstance(value, np.floating) and value.dtype != np.float64:
        return None  # a numpy float32/float16 scalar: a number, widened
    if not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    if not legal.contains(float(value)):
        return False
    if rule == "lars" and name in ("rescale_grad", "eps", "wd") and float(value) <= 0:
        return None  # legal, but the rate's denominator may be 0: refused (2e05a8d)
    magnitude = abs(float(value))
    if magnitude and not 1e-6 <= magnitude <= 1e6:
        return None  # legal, but a kernel scalar made from it may not fit float32: refused
    if 0.0 < abs(1.0 - magnitude) < 2.0**-24:
        # legal, but float32 rounds it to 1: a host state held in float32 (torch NAdam's
        # mu_product at beta1 = 1 - 2**-53, the long profile) may make a denominator 1 - 1:
        # refused, naming the spec line
        return None
    return True


@st.composite
def hyperparams(draw: st.DrawFn, rule: str, case: Case, most: int = 2) -> dict[str, Any]:
    """0..``most`` hyperparameters overridden with drawn values (perhaps an unknown one)."""
    names = list(META[rule].HYPERPARAMS)
    count = draw(st.sampled_from([0, 0, 0, 1, 1, most]))
    chosen = draw(st.lists(st.sampled_from(names), min_size=count, max_size=count, unique=True))
    out = {}
    for name in chosen:
        value = draw(st.sampled_from(hyper_candidates(rule, name)))
        legal = predicted_legal(rule, name, value)
        case.perturb(f"{name}={value!r}", [name], None if legal is None else not legal)
        out[name] = value
    if draw(st.integers(0, 19)) == 0:
        out["bogus"] = 1.0
        case.perturb("bogus=1.0", ["bogus"], True)
    case.absent = absent_under(rule, out)
    return out


def absent_under(rule: str, hp: dict[str, Any]) -> frozenset[str]:
    """The rule's ABSENT states at ``hp`` (the rest at their defaults), as the modules decide."""
    meta = META[rule]
    out = set()
    for name, when in meta.ABSENT.items():
        try:
            if all(bool(hp.get(h, meta.HYPERPARAMS[h]) == v) for h, v in when.items()):
                out.add(name)
        except Exception:  # a value that is no number: refused for itself
            continue
    return frozenset(out)


def live_states(rule: str, case: Case) -> list[str]:
    """The rule's states the step reads and checks under the case's hyperparameters."""
    return [s for s in META[rule].STATES if s not in case.absent]


def canonical_hyperparams(rule: str, hp: dict[str, Any]) -> dict[str, Any]:
    """Accepted hyperparameters as plain Python values (floats, None, bools, strings)."""
    out = {}
    for name, value in hp.items():
        legal = META[rule].LEGAL[name]
        if value is None or legal.choices:
            out[name] = value
        elif legal.flag:
            out[name] = bool(value)
        else:
            out[name] = float(value)
    return out


STEP_COUNTS: list[Any] = [
    1, 2, 7, 10**6, 2**53 + 1, 2**63 - 1, np.int64(3), np.uint8(4),
    0, -1, 2**63, 10**400, 1.5, 2.0, True, False, np.bool_(True), math.nan, "1", None, [1],
    torch.tensor(2), torch.tensor(2.0),
]  # fmt: skip


def step_count_legal(t: Any) -> bool | None:
    if isinstance(t, (bool, np.bool_)):
        return False
    if isinstance(t, torch.Tensor):
        return None  # has __index__ for integer tensors
    if isinstance(t, (int, np.integer)):
        return 1 <= int(t) <= 2**63 - 1
    return False


@st.composite
def step_count(draw: st.DrawFn, case: Case, multi: bool = False) -> Any:
    """A step count, perturbed one time in five (``multi``: for ``step_multi``, which also
    takes a list, so no list is drawn)."""
    if draw(st.integers(0, 4)):
        return draw(st.sampled_from([1, 2, 5]))
    t = draw(st.sampled_from([x for x in STEP_COUNTS if not (multi and isinstance(x, list))]))
    legal = step_count_legal(t)
    case.perturb(f"t={t!r}", ["step count", " t"], None if legal is None else not legal)
    return t


SHAPES = [(), (0,), (1,), (5,), (7,), (3, 4), (2, 3, 5), (1, 1030)]

VALUES = ["normal", "nan", "inf", "zeros", "huge", "tiny", "negative_state"]


def targets(perturbation: str) -> set[str]:
    """The inputs a perturbation replaces or aliases: two that share one can undo each other
    (a strided copy of the weight ends grad-is-weight aliasing; a second dtype change can
    restore the first), so a case applies a second perturbation only on other inputs."""
    out = {part for part in ("weight", "grad", "state", "host", "input") if part in perturbation}
    if perturbation in ("fortran", "other_rules_state", "states_shared"):
        out |= {"weight", "grad", "state"}
    return out or {perturbation}


def fill(rng: np.random.Generator, shape: tuple[int, ...], kind: str, role: str) -> np.ndarray:
    """float64 values of ``shape``: normal, with NaN/inf sprinkled, zeros, huge or tiny."""
    x = np.asarray(rng.standard_normal(shape), dtype=np.float64)
    if kind == "zeros":
        x = np.zeros(shape)
    elif kind == "huge":
        x = x * 1e30
    elif kind == "tiny":
        x = x * 1e-40
    elif kind in ("nan", "inf") and x.size:
        x.flat[rng.integers(x.size)] = math.nan if kind == "nan" else -math.inf
    if role == "state" and kind != "negative_state":
        x = np.abs(x) * 0.1  # second moments and the like are >= 0
    return np.asarray(x)
