"""Legal extremes of every numeric hyperparameter (1e300, 1e-300) on float32 weights: the step is
either finite or refused before anything is written, naming the kernel scalar that float32 cannot
hold (optgen_runtime.scalars). Before, 51 such settings wrote infinities where float64 weights
stayed finite (issue 9)."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
import torch
from conftest import RULE_NAMES, step_inputs

EXTREMES = (1e300, 1e-300)


def cases() -> list[tuple[str, str, float]]:
    out = []
    for rule in RULE_NAMES:
        legal = importlib.import_module(f"generated.rules.{rule}").LEGAL
        for name, bounds in legal.items():
            if bounds.flag or bounds.choices or bounds.integer:
                continue
            out += [(rule, name, v) for v in EXTREMES if bounds.contains(v)]
    return out


CASES = cases()


def run(module, weight, make, state, hp) -> Exception | None:
    rng = np.random.default_rng(0)
    try:
        for t in (1, 2):
            grad = make(rng.standard_normal(64).astype(np.float32))
            module.step(weight, grad, state, t, **hp, **step_inputs(module, weight, t))
    except ValueError as error:
        return error
    return None


@pytest.mark.parametrize("target", ["numpy", "triton"])
@pytest.mark.parametrize(
    ("rule", "name", "value"), CASES, ids=[f"{r}-{n}-{v:g}" for r, n, v in CASES]
)
def test_an_extreme_setting_is_finite_or_refused(
    rule: str, name: str, value: float, target: str
) -> None:
    module = importlib.import_module(f"generated.{target}.{rule}")
    w0 = np.random.default_rng(1).standard_normal(64).astype(np.float32)
    make = (lambda a: a) if target == "numpy" else torch.from_numpy
    weight = make(w0.copy())
    state = module.init_state(weight)
    before = {
        k: (v.copy() if target == "numpy" else v.clone()) if hasattr(v, "shape") else v
        for k, v in state.items()
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        error = run(module, weight, make, state, {name: value})
    out = np.asarray(weight)
    if error is None:
        assert np.isfinite(out).all(), f"{rule} {name}={value:g}: infinite float32 weights"
        return
    message = str(error)
    assert message.startswith(f"{rule}:") and "kernel scalar" in message, message
    # refused at the first step: nothing was written
    np.testing.assert_array_equal(out, w0)
    for key, old in before.items():
        np.testing.assert_array_equal(np.asarray(state[key]), np.asarray(old))


def test_float64_weights_take_what_float32_refuses() -> None:
    from generated.numpy import sgd

    w = np.ones(4)
    sgd.step(w, np.ones(4), sgd.init_state(w), 1, lr=1e300)
    assert np.isfinite(w).all() and w[0] == -1e300 + 1
