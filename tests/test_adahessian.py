"""AdaHessian against pytorch-optimizer 4.1.0's ``AdaHessian`` (the independent reference).

Both run 20 steps on a loss with a non-constant Hessian, on a 1-D and a 2-D weight, float32 and
float64. The Hessian-diagonal estimate is the same on both sides: before each step torch's
global generator is seeded, the reference draws its Rademacher vectors inside ``step()``
(``compute_hutchinson_hessian``) and ours draws them in ``optgen_runtime.hutchinson`` with the
same calls in the same order, from gradients of the same graph; so the comparison measures the
update alone (and ``test_the_estimates_are_the_references`` checks the estimates bit for bit).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import DEVICE
from pytorch_optimizer import AdaHessian as Reference

from generated.torch import AdaHessian
from optgen_runtime.hutchinson import hessian_diagonal

# backward(create_graph=True) is AdaHessian's documented use (pytorch-optimizer's form); torch
# then advises, once per process, about the parameter-gradient reference cycle, which these
# tests break by zeroing gradients with set_to_none.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Using backward\\(\\) with create_graph=True:UserWarning"
)

STEPS = 20
SHAPES = {"1-D": (7,), "2-D": (3, 4)}
# Our hyperparameters -> the reference's, per setting.
SETTINGS = {
    "defaults": ({}, {}),
    "decoupled wd": (
        {"lr": 0.05, "beta1": 0.8, "beta2": 0.99, "wd": 0.1, "epsilon": 1e-8},
        {"lr": 0.05, "betas": (0.8, 0.99), "weight_decay": 0.1, "eps": 1e-8},
    ),
    "coupled wd": (
        {"lr": 0.05, "wd": 0.1, "weight_decouple": False},
        {"lr": 0.05, "weight_decay": 0.1, "weight_decouple": False},
    ),
    "fixed decay, k = 0.5": (
        {"lr": 0.02, "wd": 0.01, "fixed_decay": True, "hessian_power": 0.5},
        {"lr": 0.02, "weight_decay": 0.01, "fixed_decay": True, "hessian_power": 0.5},
    ),
}
# Measured max relative error (|ours - theirs| / max(|theirs|, 1e-3)) over the 20 steps, every
# setting and shape: float64 5.9e-14, float32 1.3e-5 (k = 0.5: exp(log) against pow; 7.5e-6
# otherwise; the Triton backend 7.5e-6): lerp against beta1*m + (1-beta1)*g, an addcdiv's order.
RTOL = {torch.float64: 1e-12, torch.float32: 2e-5}
MEASURED: dict[str, float] = {}


def loss_of(w: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """A loss whose Hessian diagonal changes with w (quartic, plus a coupling term)."""
    flat = w.reshape(-1)
    return (data * flat**4).sum() / 4 + (flat[:-1] * flat[1:]).sum() + torch.sin(flat).sum()


def problem(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    w0 = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    data = torch.rand(math.prod(shape), generator=gen, dtype=torch.float64).to(dtype) + 0.5
    return w0, data


def backward(p: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    p.grad = None
    loss = loss_of(p, data)
    loss.backward(create_graph=True)
    return loss


def run_reference(shape, dtype, theirs: dict) -> list[torch.Tensor]:
    w0, data = problem(shape, dtype)
    p = torch.nn.Parameter(w0.clone())
    opt = Reference([p], **theirs)
    out = []
    for t in range(1, STEPS + 1):
        backward(p, data)
        torch.manual_seed(1000 + t)  # the reference draws z inside step()
        opt.step()
        out.append(p.detach().clone())
    return out


def run_ours(shape, dtype, ours: dict, backend: str = "numpy") -> list[torch.Tensor]:
    w0, data = problem(shape, dtype)
    p = torch.nn.Parameter(w0.clone().to(DEVICE if backend == "triton" else "cpu"))
    opt = AdaHessian([p], backend=backend, **ours)
    out = []
    for t in range(1, STEPS + 1):
        backward(p, data)
        torch.manual_seed(1000 + t)
        opt.step(hessian=hessian_diagonal(opt))
        out.append(p.detach().cpu().clone())
    return out


def max_rel_error(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    worst = 0.0
    for a, b in zip(got, want, strict=True):
        a64, b64 = a.double().numpy(), b.double().numpy()
        scale = np.maximum(np.abs(b64), 1e-3)
        worst = max(worst, float(np.max(np.abs(a64 - b64) / scale)))
    return worst


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_matches_pytorch_optimizer(setting: str, shape: str, dtype: torch.dtype) -> None:
    ours, theirs = SETTINGS[setting]
    want = run_reference(SHAPES[shape], dtype, theirs)
    got = run_ours(SHAPES[shape], dtype, ours)
    moved = float((want[-1] - problem(SHAPES[shape], dtype)[0]).abs().min())
    assert moved > 0, "every weight moves"
    error = max_rel_error(got, want)
    MEASURED[f"{setting}/{shape}/{dtype}"] = error
    assert error < RTOL[dtype], f"max relative error {error:.3g}"


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_triton_backend_matches_pytorch_optimizer(shape: str) -> None:
    ours, theirs = SETTINGS["decoupled wd"]
    want = run_reference(SHAPES[shape], torch.float32, theirs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = run_ours(SHAPES[shape], torch.float32, ours, backend="triton")
    assert max_rel_error(got, want) < RTOL[torch.float32]
    # the kernel computes log(0) in the power branch not taken: no warning, as on a GPU (Triton's
    # interpreter evaluates it in NumPy; optgen_runtime.triton_compat quiets it)
    assert [str(w.message) for w in caught] == []


def test_the_comparison_catches_a_wrong_estimate() -> None:
    """Test the tester: the estimate of another draw (a different seed) fails the float64
    comparison, so the bound does not hide the Hessian input."""
    shape, dtype = SHAPES["2-D"], torch.float64
    want = run_reference(shape, dtype, {})
    w0, data = problem(shape, dtype)
    p = torch.nn.Parameter(w0.clone())
    opt = AdaHessian([p])
    got = []
    for t in range(1, STEPS + 1):
        backward(p, data)
        torch.manual_seed(2000 + t)  # not the reference's draw
        opt.step(hessian=hessian_diagonal(opt))
        got.append(p.detach().clone())
    assert max_rel_error(got, want) > 1e-6


def test_the_estimates_are_the_references() -> None:
    """hessian_diagonal gives, bit for bit, the estimate the reference stores in its state."""
    w0, data = problem((3, 4), torch.float64)
    p, q = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    ref = Reference([p], update_period=1, num_samples=3)
    backward(p, data)
    torch.manual_seed(5)
    ref.step()
    backward(q, data)
    torch.manual_seed(5)
    (ours,) = hessian_diagonal([q], samples=3)
    assert torch.equal(ours, ref.state[p]["hessian"])
    # Rademacher z: exact (z_i^2 = 1) where the Hessian is diagonal, the loss without coupling
    q.grad = None
    w = q.detach().reshape(-1)
    ((data * q.reshape(-1) ** 4).sum() / 4 + torch.sin(q).sum()).backward(create_graph=True)
    (ours,) = hessian_diagonal([q])
    exact = 3 * w**2 * data - torch.sin(w)
    np.testing.assert_allclose(ours.reshape(-1).numpy(), exact.numpy(), rtol=1e-12)


def test_closure_and_a_callable_estimate_fit_one_step() -> None:
    """``step(closure, hessian=callable)``: the estimate is computed after the closure ran
    ``backward(create_graph=True)``; the same as computing it by hand first."""
    results = []
    for by_hand in (True, False):
        w0, data = problem((7,), torch.float64)
        p = torch.nn.Parameter(w0.clone())
        opt = AdaHessian([p], lr=0.05)
        for t in range(1, 4):
            if by_hand:
                backward(p, data)
                torch.manual_seed(t)
                loss = opt.step(hessian=hessian_diagonal(opt))
            else:

                def estimate(t=t, opt=opt):
                    torch.manual_seed(t)
                    return hessian_diagonal(opt)

                loss = opt.step(lambda p=p, data=data: backward(p, data), hessian=estimate)
                assert loss is not None
        results.append(p.detach().clone())
    assert torch.equal(results[0], results[1])


def test_hessian_diagonal_needs_the_graph() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    (p**3).sum().backward()
    with pytest.raises(ValueError, match=r"create_graph=True"):
        hessian_diagonal([p])
    with pytest.raises(ValueError, match="samples must be an int >= 1"):
        hessian_diagonal([p], samples=0)
