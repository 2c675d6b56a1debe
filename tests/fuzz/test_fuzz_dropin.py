"""Fuzz the drop-in classes (``generated.torch.optim``): one or two of a group's settings, under
torch's names (``betas``, ``eps``, ``etas``, ``momentum``, ``nesterov``, ...), replaced before a
step by a drawn value: legal, at an edge, NaN, infinite, of another type, a malformed tuple.

The drop-in's promise is torch.optim's behaviour, so every case must be either

- **refused cleanly**: an error naming the class and the setting, every parameter, gradient,
  state entry and group setting byte-identical afterwards; or
- **accepted and equal** to ``torch.optim``'s class stepping on copies with the same settings:
  weights and state within the drop-in suite's ulps (``tests/test_dropin.py``; see ``close``
  for ill-conditioned cases, judged against torch's own float32 error, its distance from the
  same step in float64). A setting torch itself refuses at its step must be refused, but for
  two crashes of torch's: a ``KeyError`` of a buffer it makes on a first step only (amsgrad,
  centered or momentum switched on mid-run: the drop-in makes it as a first step would) and
  an ``OverflowError`` of its host arithmetic in Python floats (ASGD's ``eta`` at huge ``lr``
  and ``alpha``: the drop-in takes IEEE's limit).

Which values are legal is not predicted here: torch checks most settings only in its
constructor, and then computes with whatever a group holds. Found by it on 2026-12-07 and
fixed (tests in tests/test_dropin_interface.py): refusals that named the rule's
hyperparameter (``beta2``) instead of the key the user set (``betas[1]``), and Adagrad's state
made from a group's ``initial_accumulator_value`` where torch's comes from its constructor.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_dropin import CASES, LR, MATRICES, allowed, params_from, set_grads, switches

import generated.torch.optim as dropin
from fuzz.conftest import examples
from fuzz.harness import Case, verdict
from optgen_runtime.optim.exchange import IMPLEMENTATION_ONLY, torch_defaults

# SparseAdam steps sparse gradients only (its own suite: tests/test_sparse_adam.py)
DROP_INS = sorted(set(dropin.__all__) - {"SparseAdam"})
SHAPES = [(3,), (2, 3), (2, 2, 3), ()]

NUMBERS: list[Any] = [0, 0.0, -0.0, 5e-324, 1e-8, 0.5, 0.9, 1.0, 1.5, 1e30, -1.0]
NUMBERS += [math.inf, -math.inf, math.nan, None, True, "0.1", np.float32(0.25), np.int64(2)]
NUMBERS += [torch.tensor(0.05), torch.tensor([0.5, 0.5])]
FLAGS: list[Any] = [True, False, 0, 1, None, "yes", np.bool_(True), 0.5]


def candidates(name: str, key: str, default: Any) -> list[Any]:
    """Values worth trying for setting ``key`` of torch's class ``name`` (its default
    ``default``): a flag's, a number's, or a tuple's with one item replaced or malformed."""
    if isinstance(default, bool):
        return FLAGS
    if isinstance(default, tuple):
        out: list[Any] = [default, list(default), default[:1], (*default, 0.5), "ab", None]
        for i in range(len(default)):
            for bad in (math.nan, -1.0, 0.0, 1.0, math.inf, "x"):
                out.append(tuple(bad if j == i else v for j, v in enumerate(default)))
        return out
    if key == "adjust_lr_fn":  # Muon's choice
        return [None, "original", "match_rms_adamw", "other", 1.0]
    if key == "ns_steps":
        return [0, 1, 3, 5, 2.5, -1, 100, True, None]
    return NUMBERS


@st.composite
def drawn_class(draw: st.DrawFn):
    """A drop-in's name, its case and its parameters' shapes (Muon's: matrices)."""
    name = draw(st.sampled_from(DROP_INS))
    if name == "Muon":
        return name, Case(name), MATRICES
    return name, Case(name), draw(st.lists(st.sampled_from(SHAPES), min_size=1, max_size=3))


@st.composite
def dropin_group_case(draw: st.DrawFn):
    name, case, shapes = draw(drawn_class())
    seed = draw(st.integers(0, 2**16))
    steps_before = draw(st.integers(0, 1))  # a state to perturb around, or a first step
    defaults = torch_defaults(name)
    keys = sorted(k for k in defaults if k not in IMPLEMENTATION_ONLY)
    chosen = draw(st.lists(st.sampled_from(keys), min_size=1, max_size=2, unique=True))
    settings_ = {}
    for key in chosen:
        settings_[key] = draw(st.sampled_from(candidates(name, key, defaults[key])))
        case.perturb(f"{key}={settings_[key]!r}", [key], None)
    return case, name, shapes, seed, steps_before, settings_


def build(
    name: str, shapes: list, seed: int, steps_before: int, settings_: dict, classes: tuple
) -> list:
    """Each of ``classes`` (each a function of params and options) on the same weights,
    ``steps_before`` steps taken, then ``settings_`` put in the first group and the next step's
    gradients set; float64 weights where a class is torch's in float64 (``F64``)."""
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(s, generator=gen) for s in shapes]
    options = {"lr": LR[name], **switches(name)}
    out = []
    for make in classes:
        wide = make is F64
        params = params_from([w.double() for w in weights] if wide else weights)
        opt = (getattr(torch.optim, name) if wide else make)(params, **options)
        for t in range(1, steps_before + 1):
            set_grads(params, t)
            opt.step()
        for key, value in settings_.items():
            opt.param_groups[0][key] = copy.deepcopy(value)
        set_grads(params, steps_before + 1)
        out.append((opt, params))
    return out


F64 = object()  # build's stand-in for torch's class on float64 weights


def close(
    ours: torch.Tensor,
    theirs: torch.Tensor,
    wide: torch.Tensor | None,
    ulps: int,
    before: torch.Tensor | None = None,
) -> bool:
    """Ours against torch's float32 result element by element: where torch's is finite, ours
    finite and within ``ulps`` float32 ulps of the largest finite magnitude of the tensor and of
    its value ``before`` the step (a weight that ends near 0 is only as accurate as the values
    it was computed from), or, where the case is ill-conditioned, within twice torch's own
    float32 error (its distance from the float64 run ``wide``) or no farther from ``wide``
    than torch's answer is, plus the ulps; where torch's is not finite,
    ours not finite either (after an overflow the kind, inf or NaN, follows the order of the
    operations), or finite where torch's float64 run is (a NaN of torch's float32 rounding:
    centered RMSprop's ``sqrt(g^2 - g*g)`` at ``alpha=0``, its ``g^2 - g*g`` one fused
    multiply-add on the CPU)."""
    a, b = ours.detach().double().cpu(), theirs.detach().double().cpu()
    c = None if wide is None else wide.detach().double().cpu()
    if a.shape != b.shape:
        return False
    if c is not None and noise(b, c):
        return True  # torch's own float32 answer is rounding noise: nothing to compare with
    odd = ~b.isfinite()
    rescued = a.isfinite() & (c.isfinite() if c is not None else torch.zeros_like(odd))
    if (odd & a.isfinite() & ~rescued).any() or (~odd & ~a.isfinite()).any():
        return False
    finite = ~odd
    if not finite.any():
        return True
    scale = b[finite].abs().max().item()
    if before is not None and before.isfinite().any():
        scale = max(scale, before.double()[before.isfinite()].abs().max().item())
    ulp = np.spacing(np.float32(min(scale, 3e38))).item() if scale else 2.0**-149
    error = (a[finite] - b[finite]).abs().max().item()
    if error <= ulps * ulp:
        return True
    if c is None:
        return False
    own = (b[finite] - c[finite]).abs().nan_to_num(nan=0.0).max().item()  # torch's rounding
    # or ours no farther from the float64 run than torch's float32 answer is, plus the ulps (a
    # weight moved across 0 by more than its size: RAdam from -1.2e-3 to 2.6e-4 in the long
    # profile, ours 6.2e-10 from float64 where torch's is 4.3e-10, 1.05e-9 apart)
    mine = (a[finite] - c[finite]).abs().nan_to_num(nan=0.0).max().item()
    return error <= 2 * own or mine <= own + ulps * ulp


def weights_differ(ours: list, theirs: list, wide: list, before: list, ulps: int) -> str | None:
    """Why the drop-in's weights are not torch's after the step (``close``), or None."""
    for j, (p, q, r, w) in enumerate(zip(ours, theirs, wide, before, strict=True)):
        if not close(p, q, r, ulps, w):
            return f"parameter {j} differs from torch's: {p} against {q}"
    return None


def noise(b: torch.Tensor, c: torch.Tensor) -> bool:
    """Whether torch's float32 result ``b`` is rounding noise: not finite where its float64
    run ``c`` is, or the other way round, or more than 1e-3 of ``c``'s largest magnitude away
    from it (an ill-conditioned case: a divergent Newton-Schulz iteration, centered RMSprop's
    ``sqrt(g^2 - g*g)`` at ``alpha=0``)."""
    if not torch.equal(b.isfinite(), c.isfinite()):
        return True
    finite = b.isfinite()
    if not finite.any():
        return False
    scale = c[finite].abs().max().item()
    return (b[finite] - c[finite]).abs().max().item() > 1e-3 * scale


def fma_decided(name: str, opt: Any) -> bool:
    """Whether torch's step is decided by its fused multiply-add, not by the arithmetic both
    sides share: centered RMSprop at ``alpha=0`` holds ``v = g^2`` and ``m = g``, so its
    variance ``v - m*m`` is 0 unfused (the drop-in's, as NumPy's) and, fused on the CPU, the
    rounding error of ``g^2`` in float32 and again in the float64 run: negative (a NaN weight)
    in both for about one tensor in four (the long profile found one; ``close``'s float64
    rescue covers the others)."""
    return name == "RMSprop" and any(
        g.get("centered") and float(g.get("alpha", 1)) == 0.0 for g in opt.param_groups
    )


@settings(max_examples=examples(150))
@given(dropin_group_case())
def test_dropin_step_group_settings(drawn):
    case, name, shapes, seed, steps_before, settings_ = drawn
    case.also = getattr(dropin, name).RULE  # a module's refusal (a kernel scalar) names the rule
    with pytest.MonkeyPatch.context() as patch:
        if name == "Muon":  # torch's Newton-Schulz in the weights' dtype, as the rule's
            patch.setattr(torch.Tensor, "bfloat16", lambda x: x.to(x.dtype, copy=True))
        classes = (getattr(dropin, name), getattr(torch.optim, name), F64)
        pairs = build(name, shapes, seed, steps_before, settings_, classes)
        (ours, ours_p), (theirs, theirs_p), (wide, wide_p) = pairs

        def inputs() -> Any:
            groups = [{k: v for k, v in g.items() if k != "params"} for g in ours.param_groups]
            state = [dict(ours.state.get(p, {})) for p in ours_p]
            return [p.detach() for p in ours_p], [p.grad for p in ours_p], state, groups

        def reference(_: Any) -> str | None:
            start = [p.detach().clone() for p in theirs_p]
            try:
                theirs.step()
            except KeyError as error:  # a buffer torch makes on a first step only (amsgrad,
                # centered or momentum switched on mid-run): the drop-in makes it, as a first
                # step would (tests/test_dropin_interface.py)
                if error.args[0] in {k for s in ours.state.values() for k in s}:
                    return None
                return f"torch.optim.{name} refused it (KeyError: {error})"
            except OverflowError:  # torch's host arithmetic in Python floats overflowed (ASGD's
                return None  # eta at lr=1e30, alpha=1e30): the drop-in's takes IEEE's limit
            except Exception as error:  # torch refuses what the drop-in took
                return f"torch.optim.{name} refused it ({type(error).__name__}: {error})"
            try:
                wide.step()
            except Exception:
                wide_p[:] = [None] * len(wide_p)
            if fma_decided(name, theirs):
                return None
            ulps = allowed(name)
            differs = weights_differ(ours_p, theirs_p, wide_p, start, ulps)
            if differs:
                return differs
            mine, expected = ours.state_dict()["state"], theirs.state_dict()["state"]
            for j, entries in expected.items():
                for key, value in entries.items():
                    got = mine.get(j, {}).get(key)
                    if torch.is_tensor(value) and not (
                        torch.is_tensor(got) and close(got, value, None, ulps)
                    ):
                        if key != "step" and not torch.is_tensor(got):
                            return f"state {j}[{key!r}] is missing: torch has {value}"
                        if key != "step" and not close(got, value, None, 64 * ulps):
                            return f"state {j}[{key!r}] differs from torch's: {got} against {value}"
            return None

        verdict("drop-in step (torch's settings)", case, inputs, ours.step, reference)


LOAD_PERTURBATIONS = ["none", "missing", "step", "shape", "list", "dtype", "setting", "extra"]
BAD_STEPS: list[Any] = [-1.0, 1.5, math.nan, "x", torch.tensor([1.0, 2.0]), 2.0**63, None]


@st.composite
def dropin_load_case(draw: st.DrawFn):
    name, case, shapes = draw(drawn_class())
    options = draw(st.sampled_from([o for n, o in CASES if n == name]))
    what = draw(st.sampled_from(LOAD_PERTURBATIONS))
    pick = draw(st.integers(0, 2**16))  # which state entry, key and value
    return case, name, shapes, draw(st.integers(0, 2**16)), options, what, pick


def perturbed(case: Case, name: str, sd: dict, what: str, pick: int) -> dict:
    """``sd`` (torch's state dict, copied) with one perturbation ``what``, noted in ``case``."""
    sd = copy.deepcopy(sd)
    entries = sorted(sd["state"])
    index = entries[pick % len(entries)] if entries else None
    keys = sorted(sd["state"][index]) if index is not None else []
    tensors = [k for k in keys if torch.is_tensor(sd["state"][index][k]) and k != "step"]
    key = tensors[pick % len(tensors)] if tensors else None
    if what == "missing" and key is not None:
        del sd["state"][index][key]
        case.perturb(f"state {index} without {key!r}", [key], None)
    elif what == "step" and "step" in keys:
        value = BAD_STEPS[pick % len(BAD_STEPS)]
        sd["state"][index]["step"] = value
        case.perturb(f"state {index} step={value!r}", ["step"], None)
    elif what == "shape" and key is not None:
        sd["state"][index][key] = torch.zeros(sd["state"][index][key].numel() + 1)
        case.perturb(f"state {index}[{key!r}] of another shape", [key], None)
    elif what == "list" and key is not None:
        sd["state"][index][key] = sd["state"][index][key].tolist()
        case.perturb(f"state {index}[{key!r}] a list", [key], None)
    elif what == "dtype" and key is not None:
        sd["state"][index][key] = sd["state"][index][key].double()
        case.perturb(f"state {index}[{key!r}] float64", [key], None)  # torch casts it
    elif what == "setting":
        defaults = torch_defaults(name)
        settings_ = sorted(k for k in defaults if k not in IMPLEMENTATION_ONLY)
        setting = settings_[pick % len(settings_)]
        values = candidates(name, setting, defaults[setting])
        value = values[pick // len(settings_) % len(values)]
        sd["param_groups"][0][setting] = copy.deepcopy(value)
        case.perturb(f"group {setting}={value!r}", [setting], None)
    elif what == "extra" and index is not None:
        sd["state"][index]["extra_buffer"] = torch.zeros(1)
        case.perturb(f"state {index} with 'extra_buffer'", ["extra_buffer"], None)
    return sd


@settings(max_examples=examples(100))
@given(dropin_load_case())
def test_dropin_load_state_dict(drawn):
    """A torch state dict, perturbed, loaded into a drop-in: refused cleanly (naming the class
    and the key, the optimizer as it was) or taken, and then the next step equals the step of
    torch's class that loaded the same dict (and loads for torch too)."""
    case, name, shapes, seed, options, what, pick = drawn
    case.also = getattr(dropin, name).RULE
    with pytest.MonkeyPatch.context() as patch:
        if name == "Muon":  # torch's Newton-Schulz in the weights' dtype, as the rule's
            patch.setattr(torch.Tensor, "bfloat16", lambda x: x.to(x.dtype, copy=True))
        gen = torch.Generator().manual_seed(seed)
        weights = [torch.randn(s, generator=gen) for s in shapes]
        kwargs = {"lr": LR[name], **switches(name), **options}
        source_p = params_from(weights)
        source = getattr(torch.optim, name)(source_p, **kwargs)
        for t in (1, 2):
            set_grads(source_p, t)
            source.step()
        sd = perturbed(case, name, source.state_dict(), what, pick)
        runs = []
        for make in (getattr(dropin, name), getattr(torch.optim, name), F64):
            wide = make is F64
            params = params_from([p.detach().double() if wide else p.detach() for p in source_p])
            runs.append(((getattr(torch.optim, name) if wide else make)(params, **kwargs), params))
        (ours, ours_p), (theirs, theirs_p), (wide, wide_p) = runs
        given = copy.deepcopy(sd)

        def inputs() -> Any:
            groups = [{k: v for k, v in g.items() if k != "params"} for g in ours.param_groups]
            state = [dict(ours.state.get(p, {})) for p in ours_p]
            return [p.detach() for p in ours_p], state, groups, given

        def reference(_: Any) -> str | None:
            try:
                theirs.load_state_dict(copy.deepcopy(sd))
                for p in (*theirs_p, *ours_p):
                    p.grad = None
                set_grads(theirs_p, 3)
                start = [p.detach().clone() for p in theirs_p]
                theirs.step()
            except KeyError as error:  # torch's step crashes on a buffer the dict lacks (one
                # removed, or amsgrad switched on): the drop-in makes it as a first step would
                set_grads(ours_p, 3)
                ours.step()
                if error.args[0] in {k for st_ in ours.state.values() for k in st_}:
                    return None
                return f"torch.optim.{name} refused it (KeyError: {error})"
            except OverflowError:  # torch's host arithmetic in Python floats (ASGD's eta)
                return None
            except Exception as error:
                return f"torch.optim.{name} refused it ({type(error).__name__}: {error})"
            set_grads(ours_p, 3)
            try:
                ours.step()
            except (TypeError, ValueError, RuntimeError) as error:  # the step refuses a setting
                # the load took (eps=5e-324, which float32 cannot hold): named, or it is a fault
                # named by the class, or by its rule where the module refuses (Muon's lr_adj,
                # which depends on the weight's shape: the long profile's lr=5e-324)
                said = str(error)
                who = name in said or f"{case.also}:" in said
                named = who and any(c in said for c in case.culprits)
                return None if named else f"the step after the load raised {error!r}"
            if fma_decided(name, theirs):
                return None
            try:
                wide.load_state_dict(copy.deepcopy(sd))
                set_grads(wide_p, 3)
                wide.step()
            except Exception:
                wide_p[:] = [None] * len(wide_p)
            return weights_differ(ours_p, theirs_p, wide_p, start, allowed(name))

        verdict(
            "drop-in load_state_dict", case, inputs, lambda: ours.load_state_dict(sd), reference
        )
