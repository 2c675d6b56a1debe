"""SM3 against pytorch_optimizer.SM3 4.1.0 (an independent implementation) over 20 steps on 0-D,
1-D and 2-D weights in float32 and float64, through the NumPy module, the torch class and the
Triton kernels; >= 3-D weights (where optgen's cover is one accumulator per row and per column of
each matrix, not the reference's one per dimension) against a NumPy formula written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import triton_module
from factored import check_torch_class, row_scaled_case, trajectory
from pytorch_optimizer import SM3 as ReferenceSM3

from generated.numpy import sm3
from generated.torch import SM3

SHAPES = [(), (9,), (6, 10), (1, 8), (130, 70)]
SETTINGS = [
    {},
    {"lr": 0.05, "momentum": 0.9, "beta": 0.5, "epsilon": 1e-8},
    {"momentum": 0.3, "beta": 0.95},
    {"lr": 0.02, "momentum": 0.5},
]
# float64: the two differ by rounding only (the reference: G rsqrt(nu + eps) and a lerp; optgen:
# (1 - momentum) G / sqrt(nu + eps) + momentum mom), ~1e-16 per step, which the Adagrad-like
# sums carry on (measured: 1.3e-15 at most). float32: each step's rounding moves the weights by
# ~ulp(lr) ~ 1e-8, 20 steps by 4.8e-7 at most (measured): an absolute bound well under the steps
# (~lr = 0.1 at first; the weights move by > 0.01 in all).
BOUNDS = {np.float64: (1e-12, 1e-14), np.float32: (0.0, 2e-6)}


def reference(w0: np.ndarray, grads: list[np.ndarray], hp: dict) -> list[np.ndarray]:
    return trajectory(
        lambda params: ReferenceSM3(
            params,
            lr=hp.get("lr", 0.1),
            momentum=hp.get("momentum", 0.0),
            beta=hp.get("beta", 0.0),
            eps=hp.get("epsilon", 1e-30),
            foreach=False,  # the per-parameter path
        ),
        w0,
        grads,
    )


def formula(w0: np.ndarray, grads: list[np.ndarray], hp: dict) -> list[np.ndarray]:
    """SM3-II with the cover of the (batch, rows, cols) view: an accumulator per row (b, r, :)
    and per column (b, :, c), in float64, straight from the equations in specs/sm3.py."""
    lr, momentum = hp.get("lr", 0.1), hp.get("momentum", 0.0)
    beta, eps = hp.get("beta", 0.0), hp.get("epsilon", 1e-30)
    shape = w0.shape
    m3 = (-1, shape[-2], shape[-1])
    w = w0.astype(np.float64).reshape(m3)
    row, col = np.zeros(w.shape[:2] + (1,)), np.zeros((w.shape[0], 1, w.shape[2]))
    mom, out = np.zeros_like(w), []
    for g in grads:
        g = g.astype(np.float64).reshape(m3)
        nu = (beta if beta > 0 else 1.0) * np.minimum(row, col) + (1 - beta) * g * g
        rmax, cmax = nu.max(axis=2, keepdims=True), nu.max(axis=1, keepdims=True)
        row, col = (np.maximum(row, rmax), np.maximum(col, cmax)) if beta > 0 else (rmax, cmax)
        mom = momentum * mom + (1 - momentum) * g / np.sqrt(nu + eps)
        w = w - lr * mom
        out.append(w.reshape(shape).copy())
    return out


case = row_scaled_case  # row-scaled gradients: the row and column factors differ


def assert_close(got: np.ndarray, want: np.ndarray, dtype: type) -> None:
    rtol, atol = BOUNDS[dtype]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def run_numpy(w0: np.ndarray, grads: list[np.ndarray], hp: dict) -> list[np.ndarray]:
    w, out = w0.copy(), []
    state = sm3.init_state(w)
    for t, g in enumerate(grads, start=1):
        sm3.step(w, g.copy(), state, t, **hp)
        out.append(w.copy())
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("setting", range(len(SETTINGS)))
def test_numpy_module_matches_pytorch_optimizer(shape, dtype, setting: int) -> None:
    hp = SETTINGS[setting]
    w0, grads = case(shape, dtype)
    got = run_numpy(w0, grads, hp)
    for mine, want in zip(got, reference(w0, grads, hp), strict=True):
        assert_close(mine, want, dtype)
    assert np.max(np.abs(np.array(got) - w0)) > 0.01  # not vacuous: the weights moved


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 2, 3, 4), (40, 8, 3, 3)], ids=str)
@pytest.mark.parametrize("setting", range(len(SETTINGS)))
def test_numpy_module_matches_the_row_and_column_cover(shape, dtype, setting: int) -> None:
    hp = SETTINGS[setting]
    w0, grads = case(shape, dtype)
    mine = formula(w0, grads, hp)
    for got, want in zip(run_numpy(w0, grads, hp), mine, strict=True):
        assert_close(got, want, dtype)
    # not vacuous: the cover matters, the reference's per-dimension one steps elsewhere
    theirs = reference(w0.astype(np.float64), [g.astype(np.float64) for g in grads], hp)
    assert np.max(np.abs(theirs[-1] - mine[-1])) > 1e-3


def test_states_have_one_value_per_row_and_per_column() -> None:
    state = sm3.init_state(np.zeros((2, 3, 4, 5)))
    assert state["row"].shape == (2, 3, 4) and state["col"].shape == (2, 3, 5)
    assert state["mom"].shape == (2, 3, 4, 5)
    assert sm3.init_state(np.zeros(7))["col"].shape == (7,)  # 1-D: one row


@pytest.mark.parametrize("shape", [(), (9,), (6, 10)], ids=str)
def test_torch_class_matches_pytorch_optimizer(shape) -> None:
    w0, grads = case(shape, np.float32)
    hp = SETTINGS[1]
    want = reference(w0, grads, hp)
    close = lambda got, theirs: assert_close(got, theirs, np.float32)  # noqa: E731
    check_torch_class(SM3, hp, w0, grads, want, close, "col")


@pytest.mark.parametrize("setting", [0, 1])
@pytest.mark.parametrize("shape", [(), (9,), (6, 10), (3, 4, 5), (20, 1100)], ids=str)
def test_triton_matches_numpy(shape, setting: int) -> None:
    hp = SETTINGS[setting]
    module = triton_module("sm3")
    w0, grads = case(shape, np.float32)
    w = w0.copy()
    state = sm3.init_state(w)
    tw = torch.from_numpy(w0.copy())
    tstate = module.init_state(tw)
    for t, g in enumerate(grads[:4], start=1):
        sm3.step(w, g.copy(), state, t, **hp)
        module.step(tw, torch.from_numpy(g.copy()), tstate, t, **hp)
    # float32 both; the two differ by the order of a few roundings (fused vs not)
    np.testing.assert_allclose(tw.numpy(), w, rtol=0, atol=1e-6)
    for key in ("row", "col", "mom"):
        np.testing.assert_allclose(tstate[key].numpy(), state[key], rtol=1e-6, atol=1e-12)
    assert np.max(np.abs(w - w0)) > 0.01
