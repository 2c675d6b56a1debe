"""The generated NumPy float64 code against the spec's own equations at 40 digits."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import RULES, numpy_module, tolerance
from reference import sample_hyperparams, spec_trajectory

STEPS = 5


def run_numpy(module, w0, grads, hp):
    w = w0.copy()
    state = module.init_state(w, **hp)
    history = []
    for t, g in enumerate(grads, start=1):
        module.step(w, g.copy(), state, t, **hp)
        history.append({"weight": w.copy(), **{k: np.copy(v) for k, v in state.items()}})
    return history


def max_rel_error(history, reference) -> float:
    worst = 0.0
    for got, want in zip(history, reference, strict=True):
        for key, value in want.items():
            scale = np.maximum(np.abs(value), 1.0)
            worst = max(worst, float(np.max(np.abs(got[key] - value) / scale)))
    return worst


def case(rule_name: str, seed: int):
    rule = RULES[rule_name]
    rng = np.random.default_rng(seed)
    hp = sample_hyperparams(rule, rng)
    w0 = rng.standard_normal(7)
    grads = [rng.standard_normal(7) * 1.5 for _ in range(STEPS)]
    return rule, hp, w0, grads


@pytest.mark.parametrize("seed", [0, 1])
def test_numpy_float64_matches_equations(rule_name: str, seed: int) -> None:
    rule, hp, w0, grads = case(rule_name, seed)
    reference = spec_trajectory(rule, w0, grads, hp)
    history = run_numpy(numpy_module(rule_name), w0, grads, hp)
    assert max_rel_error(history, reference) < tolerance(np.float64, STEPS)["rtol"], hp


# Settings that reach branches random near-default settings miss, with enough steps.
EXTRA = [
    ("radam", dict(beta2=0.9, lr=0.01), 10),  # rho_t > 5 from step 6 on
    *[
        (
            "lbsgd",
            dict(
                batch_scale=2,
                warmup_epochs=1,
                updates_per_epoch=3,
                momentum=0.9,
                warmup_strategy=s,
                wd=0.01,
                clip_gradient=0.8,
            ),
            8,
        )
        for s in ("linear", "power2", "sqrt", "lars")
    ],
    ("lamb", dict(bias_correction=False, lower_bound=0.5, upper_bound=2.0, wd=0.01), 5),
    ("adan", dict(weight_decouple=True, wd=0.05, lr=0.01), 5),
    # momentum 0: the origin x0 recovered from the weight, moved by the decoupled decay
    ("madgrad", dict(weight_decouple=True, wd=0.05, momentum=0.0, lr=0.01), 5),
]


@pytest.mark.parametrize(("rule_name", "hp", "steps"), EXTRA)
def test_extra_settings_match_equations(rule_name: str, hp: dict, steps: int) -> None:
    rule = RULES[rule_name]
    rng = np.random.default_rng(7)
    w0 = rng.standard_normal(5)
    grads = [rng.standard_normal(5) for _ in range(steps)]
    reference = spec_trajectory(rule, w0, grads, hp)
    history = run_numpy(numpy_module(rule_name), w0, grads, hp)
    assert max_rel_error(history, reference) < tolerance(np.float64, steps)["rtol"]


def test_defaults_match_equations(rule_name: str) -> None:
    rule, _, w0, grads = case(rule_name, 2)
    reference = spec_trajectory(rule, w0, grads, {})
    history = run_numpy(numpy_module(rule_name), w0, grads, {})
    assert max_rel_error(history, reference) < tolerance(np.float64, STEPS)["rtol"]
