"""Fuzz the generated Triton modules (``TRITON_INTERPRET=1``, CPU tensors): ``step`` is refused
before any write (rule and culprit named) or equals the NumPy module in float32 within the
tolerances of ``tests/conftest.py`` (and repeats to the bit); ``step_multi`` is refused before
any write or is bit-identical to one ``step`` per tensor."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from conftest import assert_matches_float32
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
    triton_module,
    verdict,
)
from optgen_runtime.hyperparams import resolve_hyperparams
from optgen_runtime.philox import tensor_seed

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

WEIGHT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]

PERTURBATIONS = [
    "grad_dtype", "grad_shape", "grad_is_weight", "grad_view_of_weight", "weight_strided",
    "grad_strided", "state_strided", "state_is_weight", "states_shared", "state_missing",
    "state_extra", "other_rules_state", "state_dtype", "state_shape", "state_list",
    "state_not_dict", "weight_float64", "weight_int", "weight_numpy", "grad_meta",
    "grad_sparse", "host_state_bad", "weight_expanded",
]  # fmt: skip


def tensor(x: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x, dtype=np.float64)).to(dtype)


@st.composite
def one_tensor(draw: st.DrawFn, rule: str, case: Case, often: bool = True) -> tuple[Any, Any, Any]:
    """A weight, its gradient and state, perhaps perturbed (less ``often`` in a multi step)."""
    meta = META[rule]
    shape = draw(st.sampled_from(SHAPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(VALUES))
    weight = tensor(fill(rng, shape, kind, "weight"), draw(st.sampled_from(WEIGHT_DTYPES)))
    grad = tensor(fill(rng, shape, kind, "grad"), draw(st.sampled_from(WEIGHT_DTYPES)))
    state: Any = triton_module(rule).init_state(weight)
    for name in meta.STATES:
        state[name].copy_(tensor(fill(rng, tuple(state[name].shape), kind, "state"), torch.float32))
    if meta.HOST_STATES and meta.REDUCTIONS and kind in ("nan", "inf", "huge", "negative_state"):
        # a host state fed by the step's sums (Prodigy's d) turned NaN/inf: refused, unwritten
        # (as in test_fuzz_numpy.py; found by the long profile)
        case.perturb(f"{kind} data into host states fed by sums", ["would make host state"], None)
    if meta.REDUCTIONS and kind in ("nan", "inf", "huge", "negative_state"):
        # the host's arithmetic on such sums may fail (CAME's square root of a mean that a
        # negative second-moment state made negative): refused naming the line, unwritten
        case.perturb(f"{kind} data into the host's arithmetic", ["host cannot compute"], None)
    count = draw(st.sampled_from([0, 0, 0, 1, 1, 2] if often else [0] * 7 + [1]))
    drawn = draw(st.lists(st.sampled_from(PERTURBATIONS), min_size=count, max_size=count))
    used: set[str] = set()
    for p in drawn:
        if targets(p) & used:
            continue  # it could undo the first perturbation
        used |= targets(p)
        weight, grad, state = perturb(draw, rule, case, p, weight, grad, state)
    return weight, grad, state


def perturb(draw, rule, case, p, weight, grad, state):
    meta = META[rule]
    # not an ABSENT state: the hyperparameters, drawn later, may leave it unread and unchecked
    states = [s for s in meta.STATES if s not in meta.ABSENT]
    s = draw(st.sampled_from(states)) if states else None
    is_dict = isinstance(state, dict)
    if not is_dict or s not in state:
        s = None  # removed by an earlier perturbation
    w_ok = isinstance(weight, torch.Tensor) and weight.dtype in WEIGHT_DTYPES
    g_ok = isinstance(grad, torch.Tensor) and grad.layout == torch.strided and not grad.is_meta
    s_ok = s is not None and is_dict and isinstance(state.get(s), torch.Tensor)
    nonempty = w_ok and weight.numel() > 0
    if p == "grad_dtype" and g_ok:
        grad = grad.to(draw(st.sampled_from([torch.float64, torch.int32, torch.complex64])))
        case.perturb(p, ["grad"], True)
    elif p == "grad_shape" and g_ok:
        grad = torch.zeros(grad.numel() + 1, dtype=grad.dtype)
        case.perturb(p, ["grad"], True)
    elif p in ("grad_is_weight", "grad_view_of_weight") and w_ok:
        grad = weight if p == "grad_is_weight" else weight.view(weight.shape)
        case.perturb(p, ["grad", "weight"], nonempty or None)
    elif p in ("weight_strided", "grad_strided", "state_strided"):

        def strided(a):
            big = torch.zeros((*a.shape, 2), dtype=a.dtype)
            big[..., 0] = a
            return big[..., 0]

        if p == "weight_strided" and w_ok:
            weight = strided(weight)
            case.perturb(p, ["weight"], not weight.is_contiguous())
        elif p == "grad_strided" and g_ok:
            grad = strided(grad)
            case.perturb(p, ["grad"], not grad.is_contiguous())
        elif p == "state_strided" and s_ok:
            state[s] = strided(state[s])
            case.perturb(p, [s], not state[s].is_contiguous())
    elif p == "weight_expanded" and w_ok and weight.numel() == 1 and weight.dim():
        weight = weight.expand(*weight.shape[:-1], 3)
        case.perturb(p, ["weight", "grad"], True)  # zero strides; shapes no longer agree either
    elif p == "state_is_weight" and s_ok and w_ok and weight.dtype == torch.float32:
        state[s] = weight
        case.perturb(p, [s, "weight"], nonempty or None)
    elif p == "states_shared" and len(states) >= 2 and is_dict and set(states[:2]) <= set(state):
        state[states[1]] = state[states[0]]
        case.perturb(p, states[:2], nonempty or None)
    elif p == "state_missing" and s and is_dict:
        del state[s]
        case.perturb(p, [s], True)
    elif p == "state_extra" and is_dict:
        state["momentum_extra"] = torch.zeros(1)
        case.perturb(p, ["momentum_extra"], True)
    elif p == "other_rules_state" and is_dict and w_ok:
        other = draw(st.sampled_from([r for r in RULE_NAMES if META[r].STATES != meta.STATES]))
        state = {k: torch.zeros(weight.shape) for k in META[other].STATES}
        state.update({k: 1.0 for k in META[other].HOST_STATES})
        names = sorted(set(meta.STATES + meta.HOST_STATES) ^ set(state))
        case.perturb(f"{p}:{other}", names, True)
    elif p == "state_dtype" and s_ok:
        state[s] = state[s].to(draw(st.sampled_from([torch.float16, torch.float64])))
        case.perturb(p, [s], True)
    elif p == "state_shape" and s_ok:
        state[s] = torch.zeros(state[s].numel() + 2)
        case.perturb(p, [s], True)
    elif p == "state_list" and s_ok:
        state[s] = state[s].tolist()
        case.perturb(p, [s], True)
    elif p == "state_not_dict" and is_dict:
        state = list(state.values())
        case.perturb(p, ["state"], True)
    elif p in ("weight_float64", "weight_int") and w_ok:
        weight = weight.to(torch.float64 if p == "weight_float64" else torch.int32)
        case.perturb(p, ["weight"], True)
    elif p == "weight_numpy" and w_ok:
        weight = weight.float().numpy()
        case.perturb(p, ["weight"], True)
    elif p == "grad_meta" and g_ok:
        grad = torch.empty(grad.shape, dtype=grad.dtype, device="meta")
        case.perturb(p, ["grad"], True)
    elif p == "grad_sparse" and g_ok and grad.dim() >= 1 and grad.dtype == torch.float32:
        grad = grad.to_sparse()
        case.perturb(p, ["grad"], True)
    elif p == "host_state_bad" and meta.HOST_STATES and is_dict:
        h = meta.HOST_STATES[0]
        value = draw(st.sampled_from([float("nan"), float("inf"), "1.0", True, None, 2, 0.5]))
        state[h] = value
        case.perturb(f"{h}={value!r}", [h], None if value in (2, 0.5) else True)
    return weight, grad, state


def clone(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, dict):
        return {k: clone(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(clone(v) for v in x)
    return x


def numpy_reference(rule, weight, grad, state, t, hp) -> tuple[np.ndarray, dict[str, Any]]:
    """The NumPy module in float32 on upcast copies of the (accepted) inputs."""
    w = weight.float().numpy().copy()
    g = grad.float().numpy().copy()
    s = {
        k: v.float().numpy().copy() if isinstance(v, torch.Tensor) else v for k, v in state.items()
    }
    inputs = {k: v.float().numpy().copy() for k, v in hp.items() if k in META[rule].INPUTS}
    hyper = {k: v for k, v in hp.items() if k not in inputs}
    numpy_module(rule).step(w, g, s, int(t), **canonical_hyperparams(rule, hyper), **inputs)
    return w, s


def compare_to_numpy(rule, before, weight, state) -> str | None:
    """``weight`` and ``state`` (after the kernel) against NumPy on ``before`` (the inputs)."""
    w0, g0, s0, t, hp = before
    want_w, want_s = numpy_reference(rule, w0, g0, s0, t, hp)
    # a float32 result past the weight dtype's range is stored as inf: compare with that
    stored = torch.from_numpy(want_w).to(weight.dtype).float().numpy()
    want_w = np.where(np.isinf(stored) & ~np.isinf(want_w), stored, want_w)
    try:
        scale = np.abs(w0.float().numpy())
        assert_matches_float32(weight.float().numpy(), want_w, weight.dtype, scale, "weight")
        for name in META[rule].STATES:
            scale = np.abs(s0[name].numpy())
            assert_matches_float32(state[name].numpy(), want_s[name], torch.float32, scale, name)
    except AssertionError as error:
        shown = (w0, g0, s0, t, hp) if w0.numel() <= 4 else ""
        return f"Triton differs from NumPy: {error} {shown}"
    for name in META[rule].HOST_STATES:
        got, want = float(state[name]), float(want_s[name])
        # a host state fed by sums (Prodigy's d) takes the kernels' float32 block partials
        # where NumPy sums in float64 (the long profile: 1.7e-8 apart); others are exact
        close = META[rule].REDUCTIONS and math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-30)
        if got != want and not close:
            return f"host state {name}: {state[name]!r}, NumPy {want_s[name]!r}"
    return None


@st.composite
def triton_case(draw: st.DrawFn):
    rule = draw(st.sampled_from(RULE_NAMES + WITH_INPUTS))
    case = Case(rule)
    weight, grad, state = draw(one_tensor(rule, case))
    hp = draw(hyperparams(rule, case))
    t = draw(step_count(case))
    return case, rule, weight, grad, state, t, {**hp, **draw(inputs(rule, case, weight, grad))}


INPUT_PERTURBATIONS = [
    "input_missing", "input_dtype", "input_shape", "input_is_weight", "input_is_grad",
    "input_meta", "input_numpy",
]  # fmt: skip


@st.composite
def inputs(draw: st.DrawFn, rule: str, case: Case, weight: Any, grad: Any) -> dict[str, Any]:
    """A rule's per-element inputs besides the gradient (AdaHessian's hessian): fp32, fp16 or
    bf16 like a gradient, perhaps perturbed (a read-only input may be the gradient itself)."""
    names = META[rule].INPUTS
    if not names:
        return {}
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = tuple(np.shape(weight))
    out = {k: tensor(fill(rng, shape, "normal", "grad"), draw(st.sampled_from(WEIGHT_DTYPES)))
           for k in names}  # fmt: skip
    if draw(st.sampled_from([False, False, True])):
        p, key = draw(st.sampled_from(INPUT_PERTURBATIONS)), draw(st.sampled_from(names))
        w_ok = isinstance(weight, torch.Tensor) and weight.numel() > 0
        if p == "input_missing":
            del out[key]
            case.perturb(p, [key], True)
        elif p == "input_dtype":
            out[key] = out[key].to(draw(st.sampled_from([torch.float64, torch.int32])))
            case.perturb(p, [key], True)
        elif p == "input_shape":
            out[key] = torch.zeros(out[key].numel() + 1)
            case.perturb(p, [key], True)
        elif p == "input_is_weight" and isinstance(weight, torch.Tensor):
            out[key] = weight
            case.perturb(p, [key, "weight"], True if w_ok else None)
        elif p == "input_is_grad" and isinstance(grad, torch.Tensor):
            out[key] = grad  # both only read: legal wherever the gradient is
            case.perturb(p, [key, "grad"], None)
        elif p == "input_meta":
            out[key] = out[key].to("meta")
            case.perturb(p, [key], True)
        elif p == "input_numpy":
            out[key] = out[key].float().numpy()
            case.perturb(p, [key], True)
    return out


@settings(max_examples=examples(200))
@given(triton_case())
def test_triton_step(drawn):
    case, rule, weight, grad, state, t, hp = drawn
    module = triton_module(rule)
    before = clone((weight, grad, state, t, hp))
    again = clone((weight, grad, state, t, hp))

    def reference(_):
        why = compare_to_numpy(rule, before, weight, state)
        if why is None:
            w, g, s, tt, h = again
            module.step(w, g, s, tt, **h)
            if snap((w, s)) != snap((weight, state)):
                why = "a second call on the same inputs gave other bits"
        return why

    verdict(
        "triton step",
        case,
        lambda: (weight, grad, state, t, hp),
        lambda: module.step(weight, grad, state, t, **hp),
        reference,
    )


MULTI_PERTURBATIONS = [
    "same_weight_twice", "grad_is_other_weight", "shared_state_dict", "shared_state_buffer",
    "weight_overlaps_other", "lengths", "t_list_length", "t_list_bad", "stream_ids_bad",
    "amp_bad", "same_grad_twice", "copy_is_grad", "copies_length",
]  # fmt: skip
# Perturbations that put other tensors in the second tensor's place: one per case.
SECOND_REPLACED = {
    "same_weight_twice", "shared_state_dict", "shared_state_buffer", "weight_overlaps_other",
}  # fmt: skip
# What a tensor's copy (``step_multi``'s ``copies``: the new weight written rounded) may be.
COPY_DTYPES = [None, torch.bfloat16, torch.float16, torch.float32]


def rounded_bits(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The bits the kernel stores for the stored ``weight`` in a ``dtype`` copy: through
    float32, rounded to nearest even (as a GPU, and the interpreter through
    optgen_runtime.triton_compat's bfloat16 casts)."""
    return weight.float().to(dtype).view(torch.int32 if dtype == torch.float32 else torch.int16)


def copy_differs(case: Case, weights: list[Any], copies: list[Any] | None) -> str | None:
    """Why a copy is not its tensor's new weight rounded (``rounded_bits``; any NaN equal to any
    NaN: a NaN's payload is the kernel's business), or None."""
    for j, (w, c) in enumerate(zip(weights, copies or [None] * len(weights), strict=True)):
        if c is None:
            continue
        want = rounded_bits(w, c.dtype)
        both_nan = torch.isnan(c) & torch.isnan(want.view(c.dtype))
        wrong = ~((c.view(want.dtype) == want) | both_nan)
        if bool(torch.any(wrong)):
            return f"copies[{j}] ({c.dtype}) is not tensor {j}'s new {w.dtype} weight rounded"
    return None


@st.composite
def multi_case(draw: st.DrawFn):
    rule = draw(st.sampled_from(RULE_NAMES))
    case = Case(rule)
    n = draw(st.integers(1, 3))
    tensors = [draw(one_tensor(rule, case, often=False)) for _ in range(n)]
    per_tensor = bool(case.notes)  # then no perturbation across tensors (it could undo one)
    weights, grads, states = (list(x) for x in zip(*tensors, strict=True))
    hp = draw(hyperparams(rule, case))
    if draw(st.booleans()):
        t: Any = [draw(st.sampled_from([1, 2, 3, 2**40])) for _ in range(n)]
    else:
        t = draw(step_count(case, multi=True))
    kwargs: dict[str, Any] = {}
    if draw(st.integers(0, 2)) == 0:  # copies of some of the new weights
        kinds = [draw(st.sampled_from(COPY_DTYPES)) for _ in weights]
        kwargs["copies"] = [
            torch.full(tuple(np.shape(w)), 7.0, dtype=d) if d is not None else None
            for w, d in zip(weights, kinds, strict=True)
        ]
    count = 0 if per_tensor else draw(st.sampled_from([0, 0, 1, 1, 2]))
    drawn = draw(st.lists(st.sampled_from(MULTI_PERTURBATIONS), min_size=count, max_size=count))
    for p in sorted(drawn, key=lambda p: p == "lengths"):  # shortening a list comes last
        if p in SECOND_REPLACED and SECOND_REPLACED & set(case.notes):
            continue  # it would undo the first (a state dict shared, then cloned: long profile)
        ok = all(isinstance(w, torch.Tensor) and w.dtype in WEIGHT_DTYPES for w in weights)
        big = ok and min(w.numel() for w in weights) > 0
        if p == "same_weight_twice" and n >= 2 and ok:
            weights[1], grads[1], states[1] = weights[0], clone(grads[0]), clone(states[0])
            case.perturb(p, ["weight"], big or None)
        elif p == "grad_is_other_weight" and n >= 2 and ok:
            if weights[0].shape == weights[1].shape or True:
                grads[1] = weights[0]
                case.perturb(p, ["grad", "weight"], big or None)
        elif p == "shared_state_dict" and n >= 2:
            weights[1], grads[1], states[1] = clone(weights[0]), clone(grads[0]), states[0]
            # one state dict for two tensors: refused whatever their sizes (the long profile
            # found empty tensors sharing ASGD's host states accepted, updated twice)
            must = isinstance(states[0], dict) or None
            case.perturb(p, ["state", *META[rule].STATES], must)
        elif p == "shared_state_buffer" and n >= 2 and live_states(rule, case):
            s = live_states(rule, case)[0]
            if isinstance(states[0], dict) and isinstance(states[1], dict) and s in states[0]:
                weights[1], grads[1] = clone(weights[0]), clone(grads[0])
                states[1] = clone(states[0])
                states[1][s] = states[0][s]
                case.perturb(p, [s], big or None)
        elif p == "weight_overlaps_other" and n >= 2 and ok and weights[0].numel() >= 2:
            weights[1] = weights[0].view(-1)[1:]
            grads[1] = torch.zeros_like(weights[1])
            states[1] = triton_module(rule).init_state(weights[1])
            case.perturb(p, ["weight"], True)
        elif p == "lengths":
            grads = grads[:-1]
            case.perturb(p, ["grads", "weights"], True)
        elif p == "t_list_length":
            t = [1] * (n + 1)
            case.perturb(p, ["step counts", "step count"], True)
        elif p == "t_list_bad":
            t = [1] * (n - 1) + [draw(st.sampled_from([0, 1.5, True, "2"]))]
            case.perturb(p, ["step count"], True)
        elif p == "stream_ids_bad":
            kwargs["stream_ids"] = draw(st.sampled_from([[-1] * n, [0] * (n + 1), 3, ["a"] * n]))
            case.perturb(p, ["stream"], True)
        elif p == "amp_bad":
            one = torch.ones(1)
            kwargs["amp"] = draw(
                st.sampled_from(
                    [
                        torch.tensor([0.0, 1.0]),  # the old [found_inf, inv_scale] form
                        (torch.zeros(1), torch.ones(1, dtype=torch.float64)),
                        (torch.zeros(2), one),
                        (torch.zeros(1),),
                        (0.0, one),
                        1.0,
                    ]
                )
            )
            # With every tensor empty nothing is launched and amp is never read.
            case.perturb(p, ["amp"], True if big else None)
        elif (
            p == "same_grad_twice"
            and n >= 2
            and ok
            and weights[0].shape == weights[1].shape
            and "grad_is_other_weight" not in case.notes  # would undo it (the long profile)
        ):
            grads[1] = grads[0]
            case.perturb(p, [], False)  # gradients are only read: sharing one is fine
        elif p == "copy_is_grad" and ok and isinstance(grads[0], torch.Tensor):
            copies = kwargs.get("copies") or [None] * n
            kwargs["copies"] = [grads[0], *copies[1:]]  # written over a buffer only read
            legal = grads[0].shape == weights[0].shape and grads[0].is_contiguous()
            case.perturb(p, ["copy", "copies[0]"], (big or None) if legal else True)
        elif p == "copies_length" and "copies" in kwargs:
            kwargs["copies"] = kwargs["copies"][:-1]
            case.perturb(p, ["copies"], True)
    # A perturbation that put another tensor in a weight's place keeps that weight's copy of its
    # shape: the copy is not the culprit (the long profile found a copy of the replaced weight's
    # shape refused, naming copies[1], where the case named only the shared state).
    copies = kwargs.get("copies") or []
    for j, (w, c) in enumerate(zip(weights, copies, strict=False)):
        if j == 0 and "copy_is_grad" in case.notes:
            continue
        if c is not None and isinstance(w, torch.Tensor) and c.shape != w.shape:
            copies[j] = torch.full(tuple(w.shape), 7.0, dtype=c.dtype)
    return case, rule, weights, grads, states, t, hp, kwargs


@settings(max_examples=examples(120))
@given(multi_case())
def test_triton_step_multi(drawn):
    case, rule, weights, grads, states, t, hp, kwargs = drawn
    module = triton_module(rule)
    before = clone((weights, grads, states, t, hp))

    def reference(_):
        ws, gs, ss, tt, h = before
        if META[rule].GROUP_REDUCTIONS:
            # the group's sums span every tensor (Adam_clip's global norm): one step per
            # tensor is another computation (found by the long profile), so the reference is
            # step_multi on clean copies (tests/test_group_reductions.py checks it against the
            # spec); determinism and refusals are checked as for every rule
            module.step_multi(ws, gs, ss, tt, **clone(kwargs), **h)
            if snap((ws, ss)) != snap((weights, states)):
                return f"step_multi differs from step_multi on clean copies, t={tt!r}, {h!r}"
            return copy_differs(case, ws, kwargs.get("copies"))
        ts = tt if isinstance(tt, list) else [tt] * len(ws)
        for j, (w, g, s, tj) in enumerate(zip(ws, gs, ss, ts, strict=True)):
            hj = dict(h)
            if META[rule].DRAWS:
                seed = resolve_hyperparams(
                    rule, META[rule].HYPERPARAMS, META[rule].LEGAL, META[rule].NONE_MEANS, h
                )["seed"]
                hj["seed"] = tensor_seed(seed, j)
            module.step(w, g, s, tj, **hj)
        if snap((ws, ss)) != snap((weights, states)):
            shown = [(tuple(w.shape), w.dtype, g.dtype) for w, g in zip(ws, gs, strict=True)]
            return f"step_multi differs from one step per tensor: {shown}, t={tt!r}, {h!r}"
        return copy_differs(case, ws, kwargs.get("copies"))

    verdict(
        "triton step_multi",
        case,
        lambda: (weights, grads, states, t, hp, kwargs),
        lambda: module.step_multi(weights, grads, states, t, **kwargs, **hp),
        reference,
    )
