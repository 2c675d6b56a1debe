"""CAME against pytorch_optimizer.CAME 4.1.0 (an independent implementation), over 20 steps on
0-D, 1-D, 2-D and 3-D weights in float32 and float64, with its weight decay options, through the
NumPy module, the torch class and the Triton kernels; and the factored states' shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import triton_module
from factored import check_torch_class, row_scaled_case, trajectory
from pytorch_optimizer import CAME as ReferenceCAME

from generated.numpy import came
from generated.torch import CAME

SHAPES = [(), (9,), (6, 10), (3, 4, 5), (1, 8), (130, 70), (40, 8, 3, 3)]  # last: conv kernels
SETTINGS = [
    {},
    {"lr": 0.01, "wd": 0.1, "beta1": 0.5, "beta3": 0.99},
    {"lr": 0.01, "wd": 0.1, "weight_decouple": False, "beta2": 0.9},
    {"lr": 0.005, "wd": 0.5, "fixed_decay": True, "clip_threshold": 0.5, "eps1": 1e-20},
]
# float64: the two differ by rounding only (the reference: rsqrt(R / mean(R)) rsqrt(C) G, a lerp
# and float32/64 norms; optgen: G / sqrt(C) / sqrt(R / mean(R)), m + (1 - b1) (U - m) and
# float64 sums), a few ulps per step. float32: the clipped update is O(1) and each step's
# rounding moves the weights by ~ulp(lr U) ~ 1e-9; the chained factors and the clip's norm add a
# few ulps of U per step: 20 steps stay under 2e-6 of the weights (moving by ~lr = 1e-2;
# measured: 9.5e-7 at most in float32, 2.7e-15 in float64).
BOUNDS = {np.float64: (1e-12, 1e-14), np.float32: (1e-5, 2e-6)}


def reference(w0: np.ndarray, grads: list[np.ndarray], hp: dict) -> list[np.ndarray]:
    return trajectory(
        lambda params: ReferenceCAME(
            params,
            lr=hp.get("lr", 2e-4),
            betas=(hp.get("beta1", 0.9), hp.get("beta2", 0.999), hp.get("beta3", 0.9999)),
            weight_decay=hp.get("wd", 0.0),
            weight_decouple=hp.get("weight_decouple", True),
            fixed_decay=hp.get("fixed_decay", False),
            clip_threshold=hp.get("clip_threshold", 1.0),
            eps1=hp.get("eps1", 1e-30),
            eps2=hp.get("eps2", 1e-16),
            foreach=False,  # the per-parameter path
        ),
        w0,
        grads,
    )


case = row_scaled_case  # row-scaled gradients: the row and column factors differ


def assert_close(got: np.ndarray, want: np.ndarray, dtype: type) -> None:
    rtol, atol = BOUNDS[dtype]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("setting", range(len(SETTINGS)))
def test_numpy_module_matches_pytorch_optimizer(shape, dtype, setting: int) -> None:
    hp = SETTINGS[setting]
    w0, grads = case(shape, dtype)
    want = reference(w0, grads, hp)
    w = w0.copy()
    state = came.init_state(w)
    for t, g in enumerate(grads, start=1):
        came.step(w, g.copy(), state, t, **hp)
        assert_close(w, want[t - 1], dtype)
    # not vacuous: the weights moved by far more than the bounds
    assert np.max(np.abs(w - w0)) > 100 * BOUNDS[dtype][1] + 2e-4


def test_states_have_one_value_per_row_and_per_column() -> None:
    state = came.init_state(np.zeros((2, 3, 4, 5)))
    assert state["row"].shape == state["res_row"].shape == (2, 3, 4)
    assert state["col"].shape == state["res_col"].shape == (2, 3, 5)
    assert state["exp_avg"].shape == (2, 3, 4, 5)
    assert came.init_state(np.zeros(7))["col"].shape == (7,)  # 1-D: one row


@pytest.mark.parametrize("shape", [(9,), (6, 10), (3, 4, 5)], ids=str)
def test_torch_class_matches_pytorch_optimizer(shape) -> None:
    w0, grads = case(shape, np.float32)
    hp = SETTINGS[1]
    want = reference(w0, grads, hp)
    close = lambda got, theirs: assert_close(got, theirs, np.float32)  # noqa: E731
    check_torch_class(CAME, hp, w0, grads, want, close, "res_row")


@pytest.mark.parametrize("setting", [0, 2])
@pytest.mark.parametrize("shape", [(), (9,), (6, 10), (3, 4, 5), (20, 1100)], ids=str)
def test_triton_matches_numpy(shape, setting: int) -> None:
    hp = {**SETTINGS[setting], "lr": 0.01}
    module = triton_module("came")
    w0, grads = case(shape, np.float32)
    w = w0.copy()
    state = came.init_state(w)
    tw = torch.from_numpy(w0.copy())
    tstate = module.init_state(tw)
    for t, g in enumerate(grads[:4], start=1):
        came.step(w, g.copy(), state, t, **hp)
        module.step(tw, torch.from_numpy(g.copy()), tstate, t, **hp)
    # float32 both, the same formulas in a different order of roundings (and sums): ~ulp(U) lr
    np.testing.assert_allclose(tw.numpy(), w, rtol=0, atol=1e-6)
    # the states relative to their scale: exp_avg is O(1) (a mean of clipped updates, RMS <= 1)
    # and cancels to ~0 here and there; the factors are means of squares, none near 0
    np.testing.assert_allclose(tstate["exp_avg"].numpy(), state["exp_avg"], rtol=0, atol=1e-6)
    for key in ("row", "col", "res_row", "res_col"):
        np.testing.assert_allclose(tstate[key].numpy(), state[key], rtol=1e-5, atol=1e-30)
    assert np.max(np.abs(w - w0)) > 1e-3
