"""Generated rules against torch.optim where the math coincides (>= 20 steps).

The torch.optim side is built from each spec's ``torch_equivalent`` (``conftest.torch_peer``),
except where ``conftest.TORCH_DIFFERS`` says (nag, adamax). The mappings, and why the math
coincides (MXNet names -> torch):
- sgd_mom:  lr, momentum, wd -> SGD(lr, momentum, weight_decay=wd, dampening=0); MXNet's state
  is mom = -lr * buf (torch's buffer), so the weights coincide for a constant lr.
- nag:      no torch_equivalent declared; sgd_mom's mapping with SGD(nesterov=True):
  w += mu*mom - lr*G equals torch's w -= lr*(g + mu*buf) with buf = -mom/lr while lr is
  constant; a test below pins the exact difference after an lr change (ours keeps each step's
  lr in mom, torch rescales its buffer).
- sgd:      SGD(lr, momentum=0, weight_decay=wd).
- adam:     lr, (beta1, beta2), wd -> Adam(lr, betas, weight_decay=wd); MXNet folds the bias
  correction into the rate and leaves epsilon uncorrected, which is torch's Adam with
  eps_t = epsilon / sqrt(1 - beta2^t): set per step below, so the test also pins that difference.
- nadam:    lr, (beta1, beta2), epsilon, wd, schedule_decay -> NAdam(..., momentum_decay):
  torch keeps the momentum-schedule product per parameter, as optgen does (MXNet 1.9.1 shares it
  across parameters; identical for a single tensor). Tests below pin the differences as formulas:
  the per-parameter product with two tensors, torch's decoupled_weight_decay=True (NAdamW), and
  MXNet's clip of rescale_grad * g + wd * w, which torch does not have.
- adamw, radam, amsgrad: follow torch.optim.AdamW, RAdam and Adam(amsgrad=True) by design
  (names: beta1/beta2 -> betas, epsilon -> eps, wd -> weight_decay).
- adagrad:  lr, eps, initial_accumulator_value -> Adagrad(lr, eps, initial_accumulator_value)
  (ours reaches the state through init_state); MXNet puts eps inside the sqrt and keeps wd out
  of the accumulator (torch: outside, and wd inside), so they coincide for wd = 0 and a tiny eps.
- rmsprop:  lr, gamma1, wd -> RMSprop(lr, alpha=gamma1, weight_decay=wd); eps inside (MXNet) vs
  outside (torch) the sqrt: a tiny epsilon.
- rmsprop_centered: + gamma2 -> RMSprop(centered=True, momentum=gamma2); MXNet's delta is
  -lr * torch's momentum buffer.
- adadelta: rho, epsilon -> Adadelta(lr=1.0, rho, eps); MXNet has no lr and decoupled,
  unscaled wd, torch couples wd into the gradient: wd = 0.
- adamax:   lr, (beta1, beta2), wd -> Adamax(lr, betas, weight_decay=wd); torch adds eps inside
  the max, optgen (like MXNet master) outside: a tiny epsilon (1e-20 here, 1e-12 in torch).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import RULES, TORCH_DIFFERS, numpy_module, tolerance, torch_peer, triton_module

from generated.torch import RULES as CLASSES
from optgen_runtime.optim import torch_optimizer

STEPS = 20

# Our hyperparameters; the torch.optim side is built from the spec's torch_equivalent
# (conftest.torch_peer), but for the differences in conftest.TORCH_DIFFERS (nag, adamax).
CASES = {
    "sgd": dict(lr=0.05, wd=0.01),
    "sgd_mom": dict(lr=0.05, momentum=0.9, wd=0.01),
    "nag": dict(lr=0.05, momentum=0.9, wd=0.01),
    "adam": dict(lr=0.01, beta1=0.8, beta2=0.95, epsilon=1e-3, wd=0.01),
    "nadam": dict(lr=0.01, beta1=0.9, beta2=0.99, epsilon=1e-8, wd=0.01, schedule_decay=0.004),
    "adamw": dict(lr=0.01, beta1=0.8, beta2=0.95, epsilon=1e-3, wd=0.05),
    "radam": dict(lr=0.01, beta1=0.8, beta2=0.9, epsilon=1e-3, wd=0.01),  # rectified from t=6
    "amsgrad": dict(lr=0.01, beta1=0.8, beta2=0.95, epsilon=1e-3, wd=0.01),
    "adagrad": dict(lr=0.1, eps=1e-12, initial_accumulator_value=0.5),  # torch's, via init_state
    "rmsprop": dict(lr=0.01, gamma1=0.9, epsilon=1e-20, wd=0.01),
    "rmsprop_centered": dict(lr=0.01, gamma1=0.9, gamma2=0.8, epsilon=1e-20, wd=0.01),
    "adadelta": dict(rho=0.9, epsilon=1e-5),
    "adamax": dict(lr=0.01, beta1=0.8, beta2=0.95, epsilon=1e-20, wd=0.01),
}


def before_torch_step(rule: str, optimizer: torch.optim.Optimizer, hp: dict, t: int) -> None:
    if rule == "adam":
        optimizer.param_groups[0]["eps"] = hp["epsilon"] / math.sqrt(1 - hp["beta2"] ** t)


@pytest.mark.parametrize("target", ["numpy", "triton"])
@pytest.mark.parametrize("rule", sorted(CASES))
def test_matches_torch_optim(rule: str, target: str) -> None:
    if rule not in RULES:
        pytest.fail(f"no spec for {rule}")
    hp = CASES[rule]
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal(257).astype(np.float32)
    param = torch.nn.Parameter(torch.tensor(w0))
    optimizer = torch_peer(rule, [param], hp, TORCH_DIFFERS)
    module = numpy_module(rule) if target == "numpy" else triton_module(rule)
    w = w0.copy() if target == "numpy" else torch.tensor(w0)
    state = module.init_state(w, **hp)
    for t in range(1, STEPS + 1):
        g = rng.standard_normal(257).astype(np.float32)
        param.grad = torch.tensor(g)
        before_torch_step(rule, optimizer, hp, t)
        optimizer.step()
        module.step(w, g if target == "numpy" else torch.tensor(g), state, t, **hp)
    ours = w if target == "numpy" else w.numpy()
    np.testing.assert_allclose(ours, param.detach().numpy(), **tolerance(np.float32, STEPS))
    assert not np.allclose(ours, w0, atol=1e-3)  # the trajectory went somewhere


def test_adam_epsilon_placement_is_a_real_difference() -> None:
    """Without the per-step eps mapping torch's Adam and MXNet's differ (documented in the spec)."""
    hp = CASES["adam"]
    rng = np.random.default_rng(4)
    w0 = rng.standard_normal(64).astype(np.float32)
    param = torch.nn.Parameter(torch.tensor(w0))
    optimizer = torch_peer("adam", [param], hp)
    w, module = w0.copy(), numpy_module("adam")
    state = module.init_state(w)
    for t in range(1, STEPS + 1):
        g = rng.standard_normal(64).astype(np.float32) * 1e-2  # small grads: eps matters
        param.grad = torch.tensor(g)
        optimizer.step()
        module.step(w, g, state, t, **hp)
    assert not np.allclose(w, param.detach().numpy(), **tolerance(np.float32, STEPS))


# ------------------------------------------------------------------------------------------------
# Where the math does not coincide: the documented differences, asserted as formulas.


def _api(rule: str, target: str):
    """(module, dtype, to our array type, back to NumPy): float64 NumPy, or fp32 Triton."""
    if target == "numpy":
        return numpy_module(rule), np.float64, (lambda a: a.copy()), (lambda a: np.array(a))
    return triton_module(rule), np.float32, torch.tensor, (lambda a: a.numpy().copy())


@pytest.mark.parametrize("target", ["numpy", "triton"])
def test_nag_lr_change_is_exactly_the_documented_difference(target: str) -> None:
    """NAG's ``mom`` holds lr-scaled steps, torch's buffer gradients (specs/nag.py).

    Equal for a constant lr, with mom = -lr * buf. When lr changes from a to b before step k+1,
    ours - torch's weight = momentum^2 (b - a) buf_k, and mom_{k+1} + b buf_{k+1} =
    momentum (b - a) buf_k: predicted here from torch's buffer after step k. The momentum is a
    float32 number (0.875): MXNet's kernel takes it as float32 and adds 1 to that (specs/nag.py),
    which at 0.9 would put a float32 rounding into this float64 comparison.
    """
    module, dtype, ours, back = _api("nag", target)
    mu, a, b, wd, k = 0.875, 0.05, 0.02, 0.01, 8
    rng = np.random.default_rng(5)
    w0 = rng.standard_normal(257).astype(dtype)
    param = torch.nn.Parameter(torch.tensor(w0))
    optimizer = torch.optim.SGD([param], lr=a, momentum=mu, weight_decay=wd, nesterov=True)
    w = ours(w0)
    state = module.init_state(w)

    def step(t: int, lr: float) -> None:
        g = rng.standard_normal(257).astype(dtype)
        param.grad = torch.tensor(g)
        optimizer.param_groups[0]["lr"] = lr
        optimizer.step()
        module.step(w, ours(g), state, t, lr=lr, momentum=mu, wd=wd)

    for t in range(1, k + 1):
        step(t, a)
    tol = tolerance(dtype, k + 1)
    buf_k = optimizer.state[param]["momentum_buffer"].numpy().astype(np.float64)
    np.testing.assert_allclose(back(w), param.detach().numpy(), **tol)
    np.testing.assert_allclose(back(state["mom"]), -a * buf_k, **tol)
    step(k + 1, b)
    atol = tol["atol"] * max(1.0, float(np.abs(back(w)).max()), float(np.abs(buf_k).max()))
    predicted = mu**2 * (b - a) * buf_k
    assert np.abs(predicted).max() > 100 * atol  # a difference far above rounding
    diff = back(w).astype(np.float64) - param.detach().numpy()
    np.testing.assert_allclose(diff, predicted, rtol=0, atol=atol)
    buf = optimizer.state[param]["momentum_buffer"].numpy()
    np.testing.assert_allclose(
        back(state["mom"]) + b * buf, mu * (b - a) * buf_k, rtol=0, atol=atol
    )


NADAM = dict(lr=0.01, beta1=0.9, beta2=0.99, epsilon=1e-8, schedule_decay=0.004)
# torch keeps mu_product in a float32 tensor, so even float64 runs agree to float32 precision only.
NADAM_TOL = tolerance(np.float32, STEPS)


def _torch_nadam(params: list[torch.nn.Parameter], **kwargs) -> torch.optim.NAdam:
    """torch's NAdam running NADAM (the spec's mapping), with the torch settings ``kwargs``."""
    return torch_optimizer(CLASSES["nadam"], params, override=kwargs, **NADAM)


@pytest.mark.parametrize("target", ["numpy", "triton"])
def test_nadam_decoupled_weight_decay_is_exactly_the_documented_difference(target: str) -> None:
    """torch's NAdam(decoupled_weight_decay=True) multiplies w by (1 - lr wd) and leaves wd out of
    the moments; ours (MXNet's) adds wd * w to the gradient inside the clip (specs/nadam.py):
    torch's trajectory is ours with wd = 0 after the same multiplicative decay, not ours with wd."""
    module, dtype, ours, back = _api("nadam", target)
    wd = 0.05
    rng = np.random.default_rng(6)
    w0 = rng.standard_normal(257).astype(dtype)
    param = torch.nn.Parameter(torch.tensor(w0))
    optimizer = _torch_nadam([param], weight_decay=wd, decoupled_weight_decay=True)
    decayed, coupled = ours(w0), ours(w0)
    s_decayed, s_coupled = module.init_state(decayed), module.init_state(coupled)
    for t in range(1, STEPS + 1):
        g = rng.standard_normal(257).astype(dtype)
        param.grad = torch.tensor(g)
        optimizer.step()
        decayed *= 1 - NADAM["lr"] * wd
        module.step(decayed, ours(g), s_decayed, t, **NADAM)
        module.step(coupled, ours(g), s_coupled, t, **NADAM, wd=wd)
    np.testing.assert_allclose(back(decayed), param.detach().numpy(), **NADAM_TOL)
    assert not np.allclose(back(coupled), param.detach().numpy(), **NADAM_TOL)


@pytest.mark.parametrize("target", ["numpy", "triton"])
def test_nadam_clipping_wd_inside_is_exactly_the_documented_difference(target: str) -> None:
    """torch has no rescale_grad or clip_gradient. Ours feeds the moments MXNet's
    G = clip(rescale_grad * g + wd * w, c) (wd inside the clip): torch fed that G as its gradient,
    with weight_decay=0, follows ours."""
    module, dtype, ours, back = _api("nadam", target)
    hp = dict(NADAM, wd=0.05, rescale_grad=0.7, clip_gradient=0.5)
    rng = np.random.default_rng(8)
    w0 = rng.standard_normal(257).astype(dtype)
    param = torch.nn.Parameter(torch.tensor(w0))
    optimizer = _torch_nadam([param])
    w = ours(w0)
    state = module.init_state(w)
    clipped = 0
    for t in range(1, STEPS + 1):
        g = rng.standard_normal(257).astype(dtype)
        w_i = param.detach().numpy().astype(np.float64)
        G = hp["rescale_grad"] * g + hp["wd"] * w_i
        clipped += int(np.sum(np.abs(G) > hp["clip_gradient"]))
        G = np.clip(G, -hp["clip_gradient"], hp["clip_gradient"])
        param.grad = torch.tensor(G.astype(dtype))
        optimizer.step()
        module.step(w, ours(g), state, t, **hp)
    assert clipped > STEPS  # the clip bites
    np.testing.assert_allclose(back(w), param.detach().numpy(), **NADAM_TOL)


def test_nadam_schedule_is_per_parameter_as_in_torch() -> None:
    """MXNet 1.9.1 shares one schedule product M between all parameters (advanced by each
    parameter's update); optgen keeps it per weight, like torch's ``mu_product``: with two tensors
    torch's trajectories and products are ours, M_t = prod_{s<=t} mu_s, not 1.9.1's shared
    prod_{s<t} mu_s^2 * mu_t^(j+1) for tensor j (tested against MXNet in test_mxnet_goldens.py)."""
    module = numpy_module("nadam")
    rng = np.random.default_rng(9)
    w0s = [rng.standard_normal(n) for n in (257, 31)]
    params = [torch.nn.Parameter(torch.tensor(w0)) for w0 in w0s]
    optimizer = _torch_nadam(params, weight_decay=0.01)
    ws = [w0.copy() for w0 in w0s]
    states = [module.init_state(w) for w in ws]
    b1, sd = NADAM["beta1"], NADAM["schedule_decay"]
    mu = [b1 * (1 - 0.5 * 0.96 ** (s * sd)) for s in range(0, STEPS + 2)]  # mu[s] = mu_s
    for t in range(1, STEPS + 1):
        for w, state, param in zip(ws, states, params, strict=True):
            g = rng.standard_normal(w.size)
            param.grad = torch.tensor(g)
            module.step(w, g, state, t, **NADAM, wd=0.01)
        optimizer.step()
        own = math.prod(mu[1 : t + 1])
        for j, (state, param) in enumerate(zip(states, params, strict=True)):
            assert state["m_schedule"] == pytest.approx(own, rel=1e-14)
            assert optimizer.state[param]["mu_product"].item() == pytest.approx(
                own, rel=1e-6
            )  # fp32
            shared = math.prod(mu[1:t]) ** 2 * mu[t] ** (j + 1)
            assert abs(shared - own) > 1e-3 * own or (t == 1 and j == 0)
    for w, param in zip(ws, params, strict=True):
        np.testing.assert_allclose(w, param.detach().numpy(), **NADAM_TOL)
