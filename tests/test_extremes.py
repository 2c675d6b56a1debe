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


def copies(weight, state) -> tuple[np.ndarray, dict]:
    """Plain copies of a weight and its state (NumPy arrays or tensors, host floats)."""
    return np.array(np.asarray(weight)), {
        k: np.array(np.asarray(v)) if hasattr(v, "shape") else v for k, v in state.items()
    }


def run(module, weight, make, state, hp) -> tuple[Exception | None, tuple[np.ndarray, dict]]:
    """Two steps; a refusal, with the weight and state from before the refused step (a scalar
    that depends on t, Adagrad's lr / (1 + (t - 1) lr_decay), may first fail at t = 2)."""
    rng = np.random.default_rng(0)
    before = copies(weight, state)
    try:
        for t in (1, 2):
            before = copies(weight, state)
            grad = make(rng.standard_normal(64).astype(np.float32))
            module.step(weight, grad, state, t, **hp, **step_inputs(module, weight, t))
    except ValueError as error:
        return error, before
    return None, before


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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        error, (w_before, before) = run(module, weight, make, state, {name: value})
    out = np.asarray(weight)
    if error is None:
        assert np.isfinite(out).all(), f"{rule} {name}={value:g}: infinite float32 weights"
        return
    message = str(error)
    assert message.startswith(f"{rule}:") and "kernel scalar" in message, message
    # refused: the refused step wrote nothing
    np.testing.assert_array_equal(out, w_before)
    for key, old in before.items():
        np.testing.assert_array_equal(np.asarray(state[key]), np.asarray(old))


def test_float64_weights_take_what_float32_refuses() -> None:
    from generated.numpy import sgd

    w = np.ones(4)
    sgd.step(w, np.ones(4), sgd.init_state(w), 1, lr=1e300)
    assert np.isfinite(w).all() and w[0] == -1e300 + 1


def test_a_let_the_kernel_cannot_hold_is_named_with_its_inputs() -> None:
    """A refused scalar that is (or uses) a spec ``let`` names what it is computed from (found by
    the long fuzz profile: torch_nadam at weight_decay=5e-324 named only the let ``coupled``;
    since 2026-12-06 its spec has no such let, and the scalar is the hyperparameter itself)."""
    from generated.numpy import torch_nadam
    from generated.rules import lars, sm3

    w = np.ones(4, dtype=np.float32)
    state = torch_nadam.init_state(w)
    with pytest.raises(
        ValueError, match=r"kernel scalar weight_decay \(hyperparameter\) is 4\.94066e-324"
    ):
        torch_nadam.step(w, np.ones(4, dtype=np.float32), state, 1, lr=0.0, weight_decay=5e-324)
    assert w.tolist() == [1.0] * 4
    assert sm3.SCALARS["decay"] == "let, computed by host_scalars from beta"
    # an expression that uses a let names the let's inputs too (LARS at momentum=5e-324,
    # rescale_grad=1e308 was refused naming only -local_lr)
    # (and the spec line of the equation it is computed for)
    assert lars.SCALARS["_h1"] == (
        "= -local_lr, in specs/lars.py:41, from eps, eta, g_sq, lr, rescale_grad, w_sq, wd"
    )


def test_the_host_max_and_min_are_the_kernels_nan_propagating_ones() -> None:
    """The host code's max/min (Max/Min of a host scalar): NaN if any argument is NaN, else
    Python's max/min (the first of equal values, so -0.0 and 0.0 keep their order), with two
    arguments (the fast path) and three."""
    import itertools
    import math

    from optgen_runtime.common import host_max, host_min

    values = [0.0, -0.0, 1.0, -1.0, math.inf, -math.inf, math.nan, 2.5, 1]
    for args in [*itertools.product(values, repeat=2), *itertools.product(values[:7], repeat=3)]:
        for ours, theirs in ((host_max, max), (host_min, min)):
            got = ours(*args)
            if any(math.isnan(a) for a in args):
                assert math.isnan(got), args
                continue
            want = theirs(args)
            assert got == want and type(got) is type(want), args
            assert math.copysign(1.0, got) == math.copysign(1.0, want), args


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_the_range_check_refuses_exactly_what_the_dtype_rounds_to_inf_or_zero(dtype: type) -> None:
    """check_scalars' shortcut (a magnitude the width surely holds) and its rounding check agree
    with NumPy's own cast at every edge: the largest finite value and just past it, the
    smallest subnormal and the halfway point below it, zero, infinities, NaN."""
    from optgen_runtime.scalars import check_scalars

    info = np.finfo(dtype)
    tiny = float(info.smallest_subnormal)
    big = float(info.max)
    edges = [big, np.nextafter(big, np.inf), big * (1 + 2.0**-12), big * 2, tiny, tiny / 2]
    edges += [tiny * 0.75, tiny * 0.25, 0.0, -0.0, 1.0, np.inf, -np.inf, np.nan]
    for value in [*edges, *(-v for v in edges)]:
        with np.errstate(over="ignore"):
            cast = dtype(value)
        refused = bool(np.isfinite(value)) and (np.isinf(cast) or (cast == 0 and value != 0))
        if refused:
            with pytest.raises(ValueError, match="cannot hold"):
                check_scalars("rule", {"x": "x"}, (float(value),), dtype)
        else:
            assert check_scalars("rule", {"x": "x"}, (float(value),), dtype) == (float(value),)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_adadelta_takes_a_gradient_whose_square_overflows_as_mxnets_code(backend: str) -> None:
    """MXNet's AdaDelta computes ``(1 - rho) * grad * grad`` left to right and its delta before
    squaring it: a gradient element of 1e20 makes acc_g inf, so delta is 0 there and the weight
    stays; the other elements step. (SymPy's expansion of delta**2, inf / inf, made the weight
    NaN: found by an audit, 2026-12-06.)"""
    from generated.torch import Adadelta

    if backend == "numba":
        pytest.importorskip("numba")
    p = torch.nn.Parameter(torch.tensor([0.5, 0.5]))
    opt = Adadelta([p], backend=backend)
    for g in ([1e20, 1.0], [1.0, 1.0]):
        p.grad = torch.tensor(g)
        opt.step()
    assert p[0].item() == 0.5 and 0 < p[1].item() < 0.5
    assert torch.isinf(opt.state[p]["acc_g"][0]) and opt.state[p]["acc_delta"][0].item() == 0.0


@pytest.mark.parametrize("g", [0.001, 0.0, -0.001, 0.5])
def test_ftrl_signs_its_zero_weight_as_mxnets_indicator_product(g: float) -> None:
    """MXNet 1.9.1's FTRL multiplies (sign(z) * lamda1 - z) / denominator by the indicator
    |z| > lamda1: a weight inside the L1 dead zone is a zero with that quotient's sign (-0.0
    for z in (-lamda1, 0)), which master's closed form -sign(z) * max(|z| - lamda1, 0) / ...
    gives as +0.0 (found by an audit, 2026-12-06). The formula below is 1.9.1's kernel in
    float32, step by step."""
    from generated.torch import Ftrl

    f = np.float32
    p = torch.nn.Parameter(torch.tensor([1.0]))
    opt = Ftrl([p])
    p.grad = torch.tensor([g])
    opt.step()
    w, z, n, lr, l1, beta, G = f(1), f(0), f(0), f(0.1), f(0.01), f(1), f(g)
    z = z + (G - (np.sqrt(n + G * G) - np.sqrt(n)) * w / lr)
    n = n + G * G
    want = (np.sign(z) * l1 - z) / ((beta + np.sqrt(n)) / lr + f(0)) * f(abs(z) > l1)
    got = p.detach().numpy()[0]
    assert got == want and np.signbit(got) == np.signbit(want), (got, want)


@pytest.mark.parametrize("rule", ["adam", "lamb", "nadam"])
def test_mxnets_second_moment_is_its_factor_times_g_times_g(rule: str) -> None:
    """MXNet 1.9.1's kernels (AdamUpdateKernel, LAMB's phase one, Nadam's Python) compute
    ``(1.f - beta2) * grad * grad`` left to right: a gradient element of 3e19, whose square
    overflows float32, gives a finite second moment (9e35) (Adam's weight moves); squaring
    first froze the element at inf for good (found by an audit, 2026-12-06)."""
    module = importlib.import_module(f"generated.numpy.{rule}")
    w = np.ones(2, np.float32)
    g = np.array([3e19, 1.0], np.float32)
    state = module.init_state(w)
    module.step(w, g, state, 1)
    # Adam's spec computes MXNet's float32 1.f - beta2 (f32): its bits; LAMB's and Nadam's
    # factor is the double 1 - beta2 rounded once (1.3e-5 relative off MXNet's)
    f = np.float32
    mxnet = (f(1) - f(0.999)) * g[0] * g[0]
    assert np.isfinite(state["var"][0]) and np.isclose(state["var"][0], 9e35, rtol=2e-5)
    assert state["var"][0] == mxnet or rule != "adam"
    assert np.isfinite(w).all()
    # (Nadam and LAMB divide v by 1 - beta2**t = 0.001 at t = 1: inf in MXNet's float32 too)
    assert w[0] != 1.0 or rule != "adam"


def test_dcasgd_takes_a_gradient_whose_square_overflows_as_mxnet() -> None:
    """MXNet's DCASGD computes ``lamda * grad * grad * (weight - previous_weight)`` left to
    right: on the first step (weight == previous) that is a finite times 0, where g**2 first
    was inf * 0 = NaN (found by an audit)."""
    module = importlib.import_module("generated.numpy.dcasgd")
    w = np.ones(2, np.float32)
    state = module.init_state(w)
    module.step(w, np.array([3e19, 1.0], np.float32), state, 1)
    assert np.isfinite(w).all() and w[0] == np.float32(1) - np.float32(0.01) * np.float32(3e19)


def test_adadelta_keeps_a_negative_zero_weight_as_mxnet() -> None:
    """MXNet: ``weight[:] -= current_delta + wd * weight``: -0.0 - (0 + 0) is -0.0 (the spec's
    w - delta - wd * w gave +0.0; found by an audit)."""
    module = importlib.import_module("generated.numpy.adadelta")
    w = np.array([-0.0, 1.0], np.float32)
    module.step(w, np.zeros(2, np.float32), module.init_state(w), 1)
    assert w[0] == 0.0 and np.signbit(w[0])


def test_ftml_divides_z_by_d_as_mxnet() -> None:
    """MXNet's FTML kernel writes ``- z / d_t``; folding the division into one product of
    factors overflowed where the quotient is finite (lr 1, wd 0.5, a weight of 3e19: 3e19
    stays; found by an audit)."""
    module = importlib.import_module("generated.numpy.ftml")
    w = np.array([3e19], np.float32)
    module.step(w, np.array([-0.3], np.float32), module.init_state(w), 1, lr=1.0, wd=0.5)
    assert np.isfinite(w).all() and abs(w[0] / np.float32(3e19) - 1) < 1e-3
