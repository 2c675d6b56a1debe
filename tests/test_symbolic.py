"""The generated NumPy float64 code against the spec's own equations at 40 digits."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import RULE_NAMES, RULES, numpy_module, step_inputs, tolerance
from derived import steps_for, variant_data, variants
from reference import sample_hyperparams, spec_trajectory


def run_numpy(module, w0, grads, hp):
    w = w0.copy()
    state = module.init_state(w, **hp)
    history = []
    for t, g in enumerate(grads, start=1):
        module.step(w, g.copy(), state, t, **hp, **step_inputs(module, w, t))
        history.append({"weight": w.copy(), **{k: np.copy(v) for k, v in state.items()}})
    return history


def max_rel_error(history, reference) -> float:
    worst = 0.0
    for got, want in zip(history, reference, strict=True):
        for key, value in want.items():
            scale = np.maximum(np.abs(value), 1.0)
            worst = max(worst, float(np.max(np.abs(got[key] - value) / scale)))
    return worst


def case(rule_name: str, seed: int, hp: dict | None = None):
    """A random legal setting (or ``hp``), a weight of 7 elements and one gradient per step: as
    many steps as ``derived.steps_for`` says the setting needs (at least ``STEPS``)."""
    rule = RULES[rule_name]
    rng = np.random.default_rng(seed)
    sampled = sample_hyperparams(rule, rng)
    hp = sampled if hp is None else hp
    w0 = rng.standard_normal(7)
    grads = [rng.standard_normal(7) * 1.5 for _ in range(steps_for(rule, hp))]
    return rule, hp, w0, grads


@pytest.mark.parametrize("seed", [0, 1])
def test_numpy_float64_matches_equations(rule_name: str, seed: int) -> None:
    rule, hp, w0, grads = case(rule_name, seed)
    reference = spec_trajectory(rule, w0, grads, hp)
    history = run_numpy(numpy_module(rule_name), w0, grads, hp)
    assert max_rel_error(history, reference) < tolerance(np.float64, len(grads))["rtol"], hp


# Beyond the random settings: every other value of every flag and choice, and the settings the
# specs ask for with RULE.test_case (tests/derived.py).
VARIANTS = [(name, *v) for name in RULE_NAMES for v in variants(RULES[name])]
VARIANT_IDS = [f"{name}-{label}" for name, label, _, _ in VARIANTS]


@pytest.mark.parametrize(("rule_name", "label", "hp", "steps"), VARIANTS, ids=VARIANT_IDS)
def test_variant_settings_match_equations(rule_name: str, label: str, hp: dict, steps: int) -> None:
    rule = RULES[rule_name]
    w0, grads = variant_data(steps)
    reference = spec_trajectory(rule, w0, grads, hp)
    history = run_numpy(numpy_module(rule_name), w0, grads, hp)
    assert max_rel_error(history, reference) < tolerance(np.float64, steps)["rtol"], label


def test_defaults_match_equations(rule_name: str) -> None:
    rule, _, w0, grads = case(rule_name, 2, {})
    reference = spec_trajectory(rule, w0, grads, {})
    history = run_numpy(numpy_module(rule_name), w0, grads, {})
    assert max_rel_error(history, reference) < tolerance(np.float64, len(grads))["rtol"]
