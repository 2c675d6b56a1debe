"""Adafactor against torch.optim.Adafactor (an independent implementation), over 20 steps on
0-D, 1-D, 2-D and 3-D weights in float32 and float64, through the NumPy module, the torch class
and the Triton kernels; and the factored states' shapes (one value per row, per column)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import DEVICE, triton_module
from factored import check_torch_class, row_scaled_case, trajectory

from generated.numpy import adafactor
from generated.torch import Adafactor

SHAPES = [(), (9,), (6, 10), (3, 4, 5), (1, 8), (130, 70), (40, 8, 3, 3)]  # last: conv kernels
SETTINGS = [
    {},
    {"lr": 0.05, "weight_decay": 0.1},
    {"beta2_decay": -0.5, "eps2": 1e-2, "d": 2.0},
]
# float64: the two implementations differ by rounding only (torch: (R C) / mean(R) and
# float32/64 norms; optgen: C (R / mean(R)) and float64 sums). float32: each step's rounding
# moves the weights by ~ulp(lr): an absolute bound well under the step size.
BOUNDS = {np.float64: (1e-11, 1e-13), np.float32: (0.0, 2e-5)}


def torch_reference(w0: np.ndarray, grads: list[np.ndarray], hp: dict) -> list[np.ndarray]:
    return trajectory(
        lambda params: torch.optim.Adafactor(
            params,
            lr=hp.get("lr", 0.01),
            beta2_decay=hp.get("beta2_decay", -0.8),
            eps=(2.0**-23, hp.get("eps2", 1e-3)),  # torch's default eps1 is the dtype's epsilon
            d=hp.get("d", 1.0),
            weight_decay=hp.get("weight_decay", 0.0),
        ),
        w0,
        grads,
    )


case = row_scaled_case


def assert_close(got: np.ndarray, want: np.ndarray, dtype: type) -> None:
    rtol, atol = BOUNDS[dtype]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("setting", range(len(SETTINGS)))
def test_numpy_module_matches_torch_optim(shape, dtype, setting: int) -> None:
    hp = SETTINGS[setting]
    w0, grads = case(shape, dtype)
    reference = torch_reference(w0, grads, hp)
    w = w0.copy()
    state = adafactor.init_state(w)
    for t, g in enumerate(grads, start=1):
        adafactor.step(w, g.copy(), state, t, **hp)
        assert_close(w, reference[t - 1], dtype)
    assert np.max(np.abs(w - w0)) > 1e-4  # not vacuous: the weights moved


def test_states_have_one_value_per_row_and_per_column() -> None:
    state = adafactor.init_state(np.zeros((2, 3, 4, 5)))
    assert state["row"].shape == (2, 3, 4) and state["col"].shape == (2, 3, 5)
    assert adafactor.init_state(np.zeros(7))["col"].shape == (7,)  # 1-D: one row


@pytest.mark.parametrize("shape", [(9,), (6, 10), (3, 4, 5)], ids=str)
def test_torch_class_matches_torch_optim(shape) -> None:
    w0, grads = case(shape, np.float32)
    hp = {"lr": 0.05, "weight_decay": 0.1}
    want = torch_reference(w0, grads, hp)
    close = lambda got, theirs: assert_close(got, theirs, np.float32)  # noqa: E731
    check_torch_class(Adafactor, hp, w0, grads, want, close, "row")


@pytest.mark.parametrize("shape", [(), (9,), (6, 10), (3, 4, 5), (20, 1100)], ids=str)
def test_triton_matches_numpy(shape) -> None:
    module = triton_module("adafactor")
    w0, grads = case(shape, np.float32)
    w = w0.copy()
    state = adafactor.init_state(w)
    tw = torch.from_numpy(w0.copy()).to(DEVICE)
    tstate = module.init_state(tw)
    for t, g in enumerate(grads[:4], start=1):
        adafactor.step(w, g.copy(), state, t, weight_decay=0.1)
        module.step(tw, torch.from_numpy(g.copy()).to(DEVICE), tstate, t, weight_decay=0.1)
    np.testing.assert_allclose(tw.cpu().numpy(), w, rtol=0, atol=1e-6)
    for key in ("row", "col"):
        got = tstate[key].cpu().numpy()
        np.testing.assert_allclose(got, state[key], rtol=1e-6, atol=1e-12)


def test_triton_step_multi_equals_step_each() -> None:
    module = triton_module("adafactor")
    shapes = [(6, 10), (9,), (2, 3, 4)]
    ws = [torch.from_numpy(case(s, np.float32)[0]).to(DEVICE) for s in shapes]
    gs = [torch.from_numpy(case(s, np.float32)[1][0]).to(DEVICE) for s in shapes]
    single = [w.clone() for w in ws]
    for w, g in zip(single, gs, strict=True):
        module.step(w, g, module.init_state(w), 1)
    multi = [w.clone() for w in ws]
    module.step_multi(multi, gs, [module.init_state(w) for w in multi], 1)
    for a, b in zip(single, multi, strict=True):
        assert torch.equal(a, b)


def test_a_wrong_state_shape_is_refused_before_anything_is_written() -> None:
    w = np.ones((4, 5))
    state = adafactor.init_state(w)
    state["row"] = np.zeros(5)  # a column's shape
    before = w.copy()
    with pytest.raises(ValueError, match=r"state\['row'\] shape is \(5,\), expected \(4,\)"):
        adafactor.step(w, np.ones((4, 5)), state, 1)
    assert np.array_equal(w, before)
