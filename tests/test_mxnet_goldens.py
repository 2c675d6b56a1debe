"""Generated rules against trajectories recorded from the real ``mxnet==1.9.1`` package.

The data in ``tests/goldens/mxnet/<rule>.json`` is written by ``tools/record_mxnet_goldens.py``
(run in a throwaway venv with mxnet 1.9.1 and numpy<2). Each case holds the initial weight, the
gradients fed at every step and MXNet's weight and state after every step: its buffers, and what
it keeps outside them (NAdam's schedule product, LBSGD's accumulated gradient). Every case is
replayed through the NumPy and the Triton module and compared at every step, weight and states.

Deliberate differences (optgen's policy, documented in the specs' docstrings) are tested as such:
their size is asserted, so they cannot silently grow.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from conftest import RULES, numpy_module, tolerance, triton_module

GOLDENS = Path(__file__).parent / "goldens" / "mxnet"
# Hyperparameters the goldens cannot vary, because 1.9.1 has no working form of them.
NOT_VARIED: dict[str, set[str]] = {
    "adamax": {"epsilon"},  # 1.9.1 has no epsilon: recorded with optgen's epsilon = 0
    "signsgd": {"wd_lh"},  # 1.9.1 raises for wd_lh != 0 with momentum 0
    "dcasgd": {"momentum"},  # 1.9.1 crashes for momentum > 0
    "adagrad": {"initial_accumulator_value"},  # torch's; 1.9.1 has none: its history starts at 0
}


def load_file(rule: str) -> dict[str, Any]:
    data = json.loads((GOLDENS / f"{rule}.json").read_text())
    assert data["mxnet_version"] == "1.9.1" and data["rule"] == rule
    return data


def load(rule: str) -> list[dict]:
    return load_file(rule)["cases"]


def arr(values) -> np.ndarray:
    return np.array([float(v) for v in values], dtype=np.float32)


def deviates(rule: str, case: dict) -> bool:
    """Cases where optgen fixes a 1.9.1 bug on purpose (see the Policy in mxnet_rules.md)."""
    return rule == "nag" and case["hyperparams"]["wd"] > 0


def api(rule: str, target: str) -> tuple[ModuleType, Callable, Callable]:
    """The module, and conversions of a float32 NumPy array to its tensors and back."""
    if target == "numpy":
        return numpy_module(rule), (lambda a: a.copy()), (lambda a: a.copy())
    return triton_module(rule), torch.tensor, (lambda a: a.numpy().copy())


def snapshot(module: ModuleType, state: dict, back: Callable) -> dict[str, np.ndarray]:
    """Buffers as float32 arrays, host states (Python floats) as 1-element float64 arrays."""
    out = {k: back(state[k]) for k in module.STATES}
    out.update({k: np.array([state[k]], dtype=np.float64) for k in module.HOST_STATES})
    return out


def replay(rule: str, case: dict, target: str) -> Iterator[tuple[int, np.ndarray, dict]]:
    module, convert, back = api(rule, target)
    w = convert(arr(case["weight0"]))
    state = module.init_state(w)
    for t, g in enumerate(case["grads"], start=1):
        module.step(w, convert(arr(g)), state, t, **case["hyperparams"])
        yield t, back(w), snapshot(module, state, back)


def check_step(module: ModuleType, golden: dict, t: int, w: np.ndarray, state: dict, what: str):
    """optgen's weight and states after step t against MXNet's (``golden``: weights, states)."""
    tol = tolerance(np.float32, t)
    want = arr(golden["weights"][t - 1])
    np.testing.assert_allclose(w, want, **tol, err_msg=f"{what}: weight, step {t}")
    # MXNet allocates no buffer it does not need (the momentum at momentum 0): ours may hold
    # more, never fewer
    assert set(golden["states"]) <= set(state), "state names differ from MXNet's"
    for name, values in golden["states"].items():
        if name in module.HOST_STATES:  # doubles on both sides
            got, want, tol = state[name], np.array(values[t - 1]), tolerance(np.float64, t)
        else:
            got, want, tol = state[name], arr(values[t - 1]), tolerance(np.float32, t)
        np.testing.assert_allclose(got, want, **tol, err_msg=f"{what}: {name}, step {t}")


RULES_WITH_GOLDENS = sorted(r for r in RULES if (GOLDENS / f"{r}.json").exists())


def test_every_mxnet_rule_has_goldens() -> None:
    """A spec that names its MXNet optimizer (``Rule(..., mxnet=...)``) has goldens from it.

    Rules MXNet 1.9.1 does not have (mxnet=None) are verified against other oracles only, and
    so are rules that draw noise (MXNet's generator cannot be replayed): a new spec of either
    kind needs nothing here.
    """
    missing = sorted(
        r for r in RULES if RULES[r].mxnet and not RULES[r].draws and r not in RULES_WITH_GOLDENS
    )
    assert not missing, f"record goldens with tools/record_mxnet_goldens.py for {missing}"


@pytest.mark.parametrize("rule", RULES_WITH_GOLDENS)
def test_goldens_come_from_the_optimizer_the_spec_names(rule: str) -> None:
    cases = json.loads((GOLDENS / f"{rule}.json").read_text())["cases"]
    assert RULES[rule].mxnet is not None, f"specs/{rule}.py: goldens exist, so name mxnet=..."
    assert {c["mxnet_optimizer"] for c in cases} == {RULES[rule].mxnet}


def clips(case: dict) -> bool:
    """clip_gradient is set and the rescaled gradient exceeds it somewhere."""
    hp = case["hyperparams"]
    c = hp["clip_gradient"]
    grads = np.array([arr(g) for g in case["grads"]])
    return c is not None and bool(np.max(np.abs(hp["rescale_grad"] * grads)) > c)


def all_three(case: dict) -> bool:
    """wd, rescale_grad and clip_gradient all set, clipping active."""
    hp = case["hyperparams"]
    return hp["wd"] > 0 and hp["rescale_grad"] != 1 and clips(case)


@pytest.mark.parametrize("rule", RULES_WITH_GOLDENS)
def test_goldens_cover_the_rule(rule: str) -> None:
    """Enough settings, every step and every state recorded, every hyperparameter varied."""
    cases = load(rule)
    module = numpy_module(rule)
    assert len({c["name"] for c in cases}) == len(cases)
    assert len({json.dumps(c["hyperparams"], sort_keys=True) for c in cases}) >= 2
    # NAG's cases with wd > 0 are the documented difference (their test below), so NAG has one
    assert sum(map(all_three, cases)) >= (1 if rule == "nag" else 2), "wd + rescale + clip"
    compared = [c for c in cases if not deviates(rule, c)]
    assert any(c["hyperparams"]["rescale_grad"] != 1 and clips(c) for c in compared)
    for case in cases:
        steps = case["steps"]
        assert steps >= 10 and len(case["grads"]) == len(case["weights"]) == steps
        assert all(len(v) == steps for v in case["states"].values())
        # every optgen state is compared, but a momentum MXNet does not keep at momentum 0
        unrecorded = set(module.STATES + module.HOST_STATES) - set(case["states"])
        assert unrecorded <= {"mom"}, unrecorded
        assert not unrecorded or case["hyperparams"].get("momentum", 0.0) == 0.0
    for name, default in module.HYPERPARAMS.items():
        values = {json.dumps(c["hyperparams"].get(name, default)) for c in cases}
        assert len(values) >= 2 or name in NOT_VARIED.get(rule, ()), f"{name} never varied"


@pytest.mark.parametrize("target", ["numpy", "triton"])
@pytest.mark.parametrize("rule", RULES_WITH_GOLDENS)
def test_matches_mxnet(rule: str, target: str) -> None:
    module = api(rule, target)[0]
    cases = [c for c in load(rule) if not deviates(rule, c)]
    assert len(cases) >= 1
    for case in cases:
        assert case["steps"] >= 10
        steps = 0
        for t, w, state in replay(rule, case, target):
            check_step(module, case, t, w, state, case["name"])
            steps = t
        assert steps == case["steps"]


@pytest.mark.parametrize("target", ["numpy", "triton"])
def test_nag_weight_decay_fix_is_exactly_the_documented_difference(target: str) -> None:
    """1.9.1's in-place nag_mom_update lets the momentum's wd term read the new weight.

    optgen reads the old weight. Started from MXNet's weight and momentum before each step, one
    optgen step gives MXNet's weight, and a momentum that differs from MXNet's by exactly
    lr * wd * (w_{t+1} - w_t): at every recorded step, not only the first.
    """
    module, convert, back = api("nag", target)
    cases = [c for c in load("nag") if deviates("nag", c)]
    assert cases, "record a NAG case with wd > 0"
    assert any(map(all_three, cases))
    for case in cases:
        hp = case["hyperparams"]
        w_prev, mom_prev = arr(case["weight0"]), np.zeros(len(case["weight0"]), np.float32)
        for t in range(1, case["steps"] + 1):
            w = convert(w_prev)
            state = module.init_state(w)
            state["mom"] = convert(mom_prev)
            module.step(w, convert(arr(case["grads"][t - 1])), state, t, **hp)
            w_mx, mom_mx = arr(case["weights"][t - 1]), arr(case["states"]["mom"][t - 1])
            what = f"{case['name']}, step {t}"
            np.testing.assert_allclose(back(w), w_mx, **tolerance(np.float32), err_msg=what)
            expected = hp["lr"] * hp["wd"] * (w_mx - w_prev)
            # both momenta are rounded in float32: a few ulps of the largest one
            atol = tolerance(np.float32)["atol"] * float(np.max(np.abs(mom_mx)))
            np.testing.assert_allclose(
                back(state["mom"]) - mom_mx, expected, rtol=1e-3, atol=atol, err_msg=what
            )
            assert np.max(np.abs(expected)) > 10 * atol  # the step really exercises the difference
            w_prev, mom_prev = w_mx, mom_mx


@pytest.mark.parametrize("target", ["numpy", "triton"])
def test_nadam_shared_schedule_is_exactly_the_documented_difference(target: str) -> None:
    """1.9.1 shares one schedule product M between all parameters of an optimizer.

    Recorded: two parameters, each step update(0) then update(1), once through ONE optimizer
    (``shared``) and once through one optimizer per parameter (``separate``). optgen keeps M per
    parameter: it matches ``separate`` (for a single tensor the two agree) and differs from
    ``shared``. Fed the M that 1.9.1's shared product has before each call (the host state
    ``m_schedule``), optgen matches ``shared`` too: M is the whole difference.
    """
    module, convert, back = api("nadam", target)
    data = load_file("nadam")["shared_schedule"]
    hp, steps, params = data["hyperparams"], data["steps"], data["params"]
    assert steps >= 10 and len(params) == 2
    assert all(all_three({**p, "hyperparams": hp}) for p in params)
    shared, separate = data["shared"], data["separate"]

    def schedule(run: list[dict], i: int, t: int) -> float:
        return run[i]["states"]["m_schedule"][t - 1][0]

    # 1.9.1's shared M before each call, in call order (t=1: 0, 1; t=2: 0, 1; ...)
    after = [schedule(shared, i, t) for t in range(1, steps + 1) for i in (0, 1)]
    before = [1.0, *after[:-1]]
    for t in range(1, steps + 1):
        # advanced twice per step: after step t it is a single parameter's product squared
        single = schedule(separate, 0, t)
        assert schedule(separate, 1, t) == single
        np.testing.assert_allclose(after[2 * t - 1], single**2, **tolerance(np.float64, t))
    ws = [convert(arr(p["weight0"])) for p in params]
    own = [module.init_state(w) for w in ws]
    ws_fed = [convert(arr(p["weight0"])) for p in params]
    fed = [module.init_state(w) for w in ws_fed]
    largest = 0.0  # relative difference between optgen's own result and 1.9.1's shared one
    for t in range(1, steps + 1):
        for i, p in enumerate(params):
            module.step(ws[i], convert(arr(p["grads"][t - 1])), own[i], t, **hp)
            check_step(module, separate[i], t, back(ws[i]), snapshot(module, own[i], back), "own")
            fed[i]["m_schedule"] = before[2 * (t - 1) + i]
            module.step(ws_fed[i], convert(arr(p["grads"][t - 1])), fed[i], t, **hp)
            got = snapshot(module, fed[i], back)
            check_step(module, shared[i], t, back(ws_fed[i]), got, "fed 1.9.1's shared M")
            want = arr(shared[i]["weights"][t - 1])
            diff = np.max(np.abs(back(ws[i]) - want) / np.maximum(np.abs(want), 1e-3))
            largest = max(largest, float(diff))
    # parameter 0's first call sees M = 1 in both runs; every later call does not
    np.testing.assert_allclose(
        arr(shared[0]["weights"][0]), arr(separate[0]["weights"][0]), **tolerance(np.float32)
    )
    assert largest > 100 * tolerance(np.float32, steps)["rtol"], largest


# Rules that match every recorded step of MXNet 1.9.1 to the bit, weights and every state, on
# both targets: their specs follow the kernels' float32 scalar arithmetic (``f32``: Adam's and
# RMSProp's ``1.f - beta`` in float32, SGD's lr * wd, NAG's momentum + 1) and order of
# operations (``as_is``; NAdam's and FTRL's divisions by a scalar, ``as_is(x / s)``). The other
# rules are within ``tolerance`` (32 float32 ulps per step): README, "Order of operations".
# NAG's cases with wd > 0 are the documented difference above.
BIT_EXACT = [
    "adadelta", "adagrad", "adam", "adamax", "dcasgd", "ftml", "ftrl", "nadam", "nag",
    "rmsprop", "rmsprop_centered", "sgd", "sgd_mom", "signsgd", "signum",
]  # fmt: skip


@pytest.mark.parametrize("rule", ["sgd", "sgd_mom", "signum"])
def test_sgd_goldens_cover_both_scalings(rule: str) -> None:
    """1.9.1's SGD-family kernels scale by s * clip(rescale_grad * g) with clipping on and by (s
    * rescale_grad) * g with it off (``times_clipped``; s = lr, or signum's 1 - momentum): each
    form is recorded with rescale_grad != 1 and wd > 0, so the bit-exact test sees both."""
    for clipped in (True, False):
        assert any(
            c["hyperparams"]["rescale_grad"] != 1
            and c["hyperparams"]["wd"] > 0
            and (c["hyperparams"]["clip_gradient"] is not None) == clipped
            for c in load(rule)
        ), (rule, clipped)


# Exact but for what MXNet computes in a way the specs do not model: LAMB's moments (MXNet's
# norms are float32 and its bias-corrected m double: the weight is within tolerance), LBSGD but
# for its 'lars' strategy (its norms NumPy's float32 pairwise sums).
EXACT_STATES: dict[str, tuple[str, ...]] = {"lamb": ("mean", "var")}
EXACT_CASES: dict[str, Callable[[dict], bool]] = {
    "lbsgd": lambda case: case["hyperparams"]["warmup_strategy"] != "lars"
}


def exact_parts(rule: str) -> Iterator[tuple[dict, list[str]]]:
    """The cases compared to the bit, each with the names compared ("weight" and states)."""
    for case in load(rule):
        if deviates(rule, case) or not EXACT_CASES.get(rule, lambda c: True)(case):
            continue  # NAG's wd > 0: its own test above
        yield case, list(EXACT_STATES.get(rule, ("weight", *case["states"])))


@pytest.mark.parametrize("target", ["numpy", "triton"])
@pytest.mark.parametrize("rule", BIT_EXACT + sorted({*EXACT_STATES, *EXACT_CASES}))
def test_bit_exact_against_mxnet(rule: str, target: str) -> None:
    cases = list(exact_parts(rule))
    assert len(cases) >= 2, rule
    for case, names in cases:
        for t, w, state in replay(rule, case, target):
            for name in names:
                if name == "weight":
                    got, want = w, arr(case["weights"][t - 1])
                elif state[name].dtype == np.float64:  # a host state: doubles on both sides
                    got, want = state[name], np.array(case["states"][name][t - 1])
                else:
                    got, want = state[name], arr(case["states"][name][t - 1])
                assert np.array_equal(got, want), (rule, case["name"], name, t)
