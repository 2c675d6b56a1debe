"""Fuzz the generated NumPy modules' ``step``: every case is refused before any write (with
the rule and the culprit named) or equals the module called on clean copies of its inputs."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.conftest import examples
from fuzz.harness import (
    META,
    RULE_NAMES,
    SHAPES,
    VALUES,
    WITH_INPUTS,
    Case,
    canonical_hyperparams,
    fill,
    hyperparams,
    live_states,
    numpy_module,
    snap,
    step_count,
    targets,
    verdict,
)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _asmatrix(x: np.ndarray) -> np.ndarray:
    """np.matrix, a subclass the modules must refuse; NumPy's deprecation notice on making one
    is not what the case tests."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return np.asmatrix(x)


BUFFER_PERTURBATIONS = [
    "grad_dtype", "grad_shape", "grad_is_weight", "grad_view_of_weight", "weight_strided",
    "grad_strided", "state_strided", "state_is_weight", "state_view_of_weight", "states_shared",
    "state_missing", "state_extra", "other_rules_state", "state_dtype", "state_shape",
    "state_list", "state_not_dict", "weight_readonly", "grad_readonly", "weight_int",
    "weight_float16", "weight_list", "weight_matrix", "host_state_bad", "fortran",
]  # fmt: skip
# A per-element input besides the gradient (AdaHessian's hessian): checked like the gradient,
# read-only (it may share memory with the gradient, not with a buffer the step writes).
INPUT_PERTURBATIONS = [
    "input_missing", "input_dtype", "input_shape", "input_is_weight", "input_is_grad",
    "input_is_state", "input_strided", "input_list", "input_readonly",
]  # fmt: skip


@st.composite
def numpy_case(draw: st.DrawFn) -> tuple[Case, str, Any, Any, Any, Any, dict[str, Any]]:
    rule = draw(st.sampled_from(RULE_NAMES + WITH_INPUTS))
    meta = META[rule]
    case = Case(rule)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    shape = draw(st.sampled_from(SHAPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(VALUES))
    weight = fill(rng, shape, kind, "weight").astype(dtype)
    grad = fill(rng, shape, kind, "grad").astype(dtype)
    state: Any = numpy_module(rule).init_state(weight.copy())
    for name in meta.STATES:
        state[name][...] = fill(rng, state[name].shape, kind, "state")
    hp = draw(hyperparams(rule, case))
    if meta.HOST_STATES and meta.REDUCTIONS and kind in ("nan", "inf", "huge", "negative_state"):
        # a host state fed by the step's sums (Prodigy's d) turned NaN/inf: refused, unwritten
        case.perturb(f"{kind} data into host states fed by sums", ["would make host state"], None)
    if meta.REDUCTIONS and kind in ("nan", "inf", "huge", "negative_state"):
        # the host's arithmetic on such sums may fail (CAME's square root of a mean that a
        # negative second-moment state made negative): refused naming the line, unwritten
        case.perturb(f"{kind} data into the host's arithmetic", ["host cannot compute"], None)
    extra = {name: fill(rng, shape, kind, "grad").astype(dtype) for name in meta.INPUTS}
    t = draw(step_count(case))
    count = draw(st.sampled_from([0, 0, 0, 1, 1, 2]))
    kinds = BUFFER_PERTURBATIONS + (INPUT_PERTURBATIONS if meta.INPUTS else [])
    drawn = draw(st.lists(st.sampled_from(kinds), min_size=count, max_size=count))
    used: set[str] = set()
    for p in drawn:
        if targets(p) & used:
            continue  # it could undo the first perturbation
        used |= targets(p)
        if p in INPUT_PERTURBATIONS:
            perturb_input(draw, rule, case, p, weight, grad, state, extra)
            continue
        weight, grad, state = perturb(draw, rule, case, p, weight, grad, state, rng)
    return case, rule, weight, grad, state, t, {**hp, **extra}


def perturb_input(draw, rule, case, p, weight, grad, state, extra) -> None:
    """Perturb one per-element input in ``extra`` (in place)."""
    key = draw(st.sampled_from(META[rule].INPUTS))
    x = extra[key]
    nonempty = x.size > 0 or None
    if p == "input_missing":
        del extra[key]
        case.perturb(p, [key], True)
    elif p == "input_dtype":
        other = np.float64 if x.dtype == np.float32 else np.float32
        extra[key] = x.astype(draw(st.sampled_from([other, np.float16, np.int32])))
        case.perturb(p, [key], True)
    elif p == "input_shape":
        extra[key] = np.zeros((x.size + 1,), dtype=x.dtype)
        case.perturb(p, [key], True)
    elif p == "input_is_weight" and isinstance(weight, np.ndarray) and weight.dtype == x.dtype:
        extra[key] = weight
        case.perturb(p, [key, "weight"], nonempty)
    elif p == "input_is_grad" and isinstance(grad, np.ndarray):
        extra[key] = grad  # only read, like the gradient: legal when the gradient is
        case.perturb(p, [key, "grad"], grad.dtype != x.dtype)
    elif p == "input_is_state" and isinstance(state, dict) and live_states(rule, case):
        s = draw(st.sampled_from(live_states(rule, case)))
        if isinstance(state.get(s), np.ndarray) and state[s].dtype == x.dtype:
            extra[key] = state[s]
            case.perturb(p, [key, s], nonempty)
    elif p == "input_strided" and x.ndim:
        big = np.zeros(x.shape + (2,), dtype=x.dtype)
        big[..., 0] = x
        extra[key] = big[..., 0]
        case.perturb(p, [key], bool(not extra[key].flags.c_contiguous))
    elif p == "input_list":
        extra[key] = x.tolist()
        case.perturb(p, [key], True)
    elif p == "input_readonly":
        x.flags.writeable = False  # only read: legal
        case.perturb(p, [key], False)


def perturb(draw, rule, case, p, weight, grad, state, rng):
    meta = META[rule]
    states = live_states(rule, case)
    s = draw(st.sampled_from(states)) if states else None
    is_dict = isinstance(state, dict)
    if not is_dict or s not in state:
        s = None  # removed by an earlier perturbation
    w_ok = isinstance(weight, np.ndarray) and weight.dtype in (np.float32, np.float64)
    if p == "grad_dtype" and w_ok:
        other = np.float64 if weight.dtype == np.float32 else np.float32
        grad = np.asarray(grad).astype(draw(st.sampled_from([other, np.float16, np.int32])))
        case.perturb(p, ["grad"], True)
    elif p == "grad_shape":
        grad = np.zeros((np.size(grad) + 1,), dtype=getattr(grad, "dtype", np.float32))
        case.perturb(p, ["grad"], True)
    elif p == "grad_is_weight" and w_ok:
        grad = weight
        case.perturb(p, ["grad", "weight"], np.size(weight) > 0 or None)
    elif p == "grad_view_of_weight" and w_ok and weight.ndim:
        grad = weight.reshape(weight.shape)  # a view with the same shape
        case.perturb(p, ["grad", "weight"], np.size(weight) > 0 or None)
    elif p in ("weight_strided", "grad_strided", "state_strided", "fortran"):

        def strided(a):
            if p == "fortran":
                return np.asfortranarray(a) if a.ndim >= 2 else a
            big = np.zeros(a.shape + (2,), dtype=a.dtype)
            big[..., 0] = a
            return big[..., 0]

        target = {"weight_strided": "weight", "grad_strided": "grad"}.get(p, "state")
        if p == "fortran":
            target = draw(st.sampled_from(["weight", "grad"]))
        if target == "weight" and w_ok:
            weight = strided(weight)
            noncontig = not weight.flags.c_contiguous
            case.perturb(p, ["weight"], bool(noncontig))
        elif target == "grad" and isinstance(grad, np.ndarray):
            grad = strided(grad)
            case.perturb(p, ["grad"], bool(not grad.flags.c_contiguous))
        elif target == "state" and s and is_dict and isinstance(state.get(s), np.ndarray):
            state[s] = strided(state[s])
            case.perturb(p, [s], bool(not state[s].flags.c_contiguous))
    elif p in ("state_is_weight", "state_view_of_weight") and s and is_dict and w_ok:
        state[s] = weight if p == "state_is_weight" else weight[...]
        case.perturb(p, [s, "weight"], np.size(weight) > 0 or None)
    elif p == "states_shared" and len(states) >= 2 and is_dict and set(states[:2]) <= set(state):
        state[states[1]] = state[states[0]]
        case.perturb(p, states[:2], np.size(weight) > 0 or None)
    elif p == "state_missing" and s and is_dict:
        del state[s]
        case.perturb(p, [s], True)
    elif p == "state_extra" and is_dict:
        state["momentum_extra"] = np.zeros_like(weight)
        case.perturb(p, ["momentum_extra"], True)
    elif p == "other_rules_state" and is_dict:
        other = draw(st.sampled_from([r for r in RULE_NAMES if META[r].STATES != meta.STATES]))
        state = {
            k: np.zeros(np.shape(weight), dtype=getattr(weight, "dtype", np.float32))
            for k in META[other].STATES
        }
        state.update({k: 1.0 for k in META[other].HOST_STATES})
        names = sorted(set(meta.STATES + meta.HOST_STATES) ^ set(state))
        # another rule's names may be exactly those this rule reads at these settings (sgd's
        # none for torch_sgd without momentum: found by the long profile): then it is legal
        legal = set(state) == set(live_states(rule, case) + list(meta.HOST_STATES))
        case.perturb(f"{p}:{other}", names, None if legal else True)
    elif p == "state_dtype" and s and is_dict and isinstance(state.get(s), np.ndarray):
        other = np.float64 if state[s].dtype == np.float32 else np.float32
        state[s] = state[s].astype(other)
        case.perturb(p, [s], True)
    elif p == "state_shape" and s and is_dict and isinstance(state.get(s), np.ndarray):
        state[s] = np.zeros((state[s].size + 2,), dtype=state[s].dtype)
        case.perturb(p, [s], True)
    elif p == "state_list" and s and is_dict and isinstance(state.get(s), np.ndarray):
        state[s] = state[s].tolist()
        case.perturb(p, [s], True)
    elif p == "state_not_dict" and is_dict:
        state = list(state.values())
        case.perturb(p, ["state"], True)
    elif p in ("weight_readonly", "grad_readonly"):
        a = weight if p == "weight_readonly" else grad
        if isinstance(a, np.ndarray):
            a.flags.writeable = False
            must = p == "weight_readonly" and a.size > 0
            case.perturb(p, ["weight" if p == "weight_readonly" else "grad"], must or None)
    elif p in ("weight_int", "weight_float16") and w_ok:
        weight = weight.astype(np.int32 if p == "weight_int" else np.float16)
        case.perturb(p, ["weight"], True)
    elif p == "weight_list" and w_ok:
        weight = weight.tolist()
        case.perturb(p, ["weight"], True)
    elif p == "weight_matrix" and w_ok and weight.ndim == 2:
        target = draw(st.sampled_from(["weight", "grad", "state"]))
        if target == "weight":
            weight = _asmatrix(weight)
        elif target == "grad" and isinstance(grad, np.ndarray) and grad.ndim == 2:
            grad = _asmatrix(grad)
        elif s and is_dict and isinstance(state.get(s), np.ndarray) and state[s].ndim == 2:
            state[s], target = _asmatrix(state[s]), s
        else:
            return weight, grad, state
        case.perturb(f"{target} as np.matrix", [target], True)
    elif p == "host_state_bad" and meta.HOST_STATES and is_dict:
        h = meta.HOST_STATES[0]
        value = draw(st.sampled_from([float("nan"), float("inf"), "1.0", True, None, 2, 0.5]))
        state[h] = value
        legal = None if value in (2, 0.5) and not isinstance(value, bool) else True
        case.perturb(f"{h}={value!r}", [h], legal)
    return weight, grad, state


def copy_state(state: Any) -> Any:
    return {k: np.array(v, copy=True) if isinstance(v, np.ndarray) else v for k, v in state.items()}


@settings(max_examples=examples(400))
@given(numpy_case())
def test_numpy_step(drawn):
    case, rule, weight, grad, state, t, hp = drawn
    module = numpy_module(rule)
    # The reference inputs are copied before the call: clean, contiguous, plain Python values.
    ref = None
    if not case.must_refuse:
        try:
            extra = {k: v for k, v in hp.items() if k in module.INPUTS}
            ref = (
                np.array(weight, copy=True, order="C"),
                np.array(grad, copy=True, order="C"),
                copy_state(state),
                int(t),
                canonical_hyperparams(rule, {k: v for k, v in hp.items() if k not in extra}),
                {k: np.array(v, copy=True, order="C") for k, v in extra.items()},
            )
        except Exception:
            ref = None

    def reference(_):
        if ref is None:
            return "accepted inputs that have no canonical form"
        w, g, s, tt, h, x = ref
        module.step(w, g, s, tt, **h, **x)
        if snap(w) != snap(np.asarray(weight)):
            return "weight differs from the module on clean copies"
        if snap(s) != snap(copy_state(state)):
            return "state differs from the module on clean copies"
        return None

    verdict(
        "numpy step",
        case,
        lambda: (weight, grad, state, t, hp),
        lambda: module.step(weight, grad, state, t, **hp),
        reference,
    )
