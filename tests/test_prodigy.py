"""Prodigy against pytorch-optimizer 4.1.0's ``pytorch_optimizer.Prodigy`` (non-foreach path on
CPU): one parameter group holding a 1-D and a 2-D weight, 20 steps, float32 and float64, through
the torch class, the NumPy module's step_multi and the Triton module's step_multi (= NumPy).

The reference keeps d_numerator and the sum of |s| in torch's default dtype: float64 runs set it
to float64, so both sides add in doubles and agree to rounding; float32 runs leave it float32,
so the reference's d differs from optgen's (float64 sums) by a few float32 ulps, which the
weights inherit. The gradients keep one direction (plus noise), so <g, p0 - w> grows and d rises
from d0 by orders of magnitude within the 20 steps: the estimate is exercised, not just d0.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from conftest import triton_module
from pytorch_optimizer import Prodigy as Reference

from generated.numpy import prodigy
from generated.torch import Prodigy

SHAPES = [(7,), (5, 6)]
STEPS = 20
D0 = 1e-6
# (ours, reference's): default; decoupled wd scaled by d_lr with bias correction; the warm-up
# safeguard at lr 0.5 with a growth limit; d0, wd and beta2 (hence the default beta3); beta3,
# d_coef, beta1 and epsilon. Coupled wd: test_coupled_weight_decay_adds_wd_w_to_the_gradient.
SETTINGS = [
    ({}, {}),
    ({"wd": 0.1, "bias_correction": True}, {"weight_decay": 0.1, "bias_correction": True}),
    (
        {"lr": 0.5, "safeguard_warmup": True, "growth_rate": 1.5},
        {"lr": 0.5, "safeguard_warmup": True, "growth_rate": 1.5},
    ),
    (
        {"wd": 1e-3, "d0": 1e-5, "beta2": 0.99},
        {"weight_decay": 1e-3, "d0": 1e-5, "betas": (0.9, 0.99)},
    ),
    (
        {"beta3": 0.9, "d_coef": 2.0, "beta1": 0.8, "epsilon": 1e-6},
        {"beta3": 0.9, "d_coef": 2.0, "betas": (0.8, 0.999), "eps": 1e-6},
    ),
]
# Measured worst relative errors over these settings and steps (any element of a weight; d;
# ``python tests/test_prodigy.py``): float64 2.3e-14 and 8.2e-16 (rounding, amplified by d growing
# up to 3e11-fold); float32 3.4e-5 and 2.8e-7 (the reference's float32 sums move d by a few ulps,
# and d multiplies every step; largest difference / largest weight: 3.9e-7).
BOUNDS = {torch.float64: 1e-12, torch.float32: 2e-4}


def data(dtype: torch.dtype) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    gen = torch.Generator().manual_seed(11)
    weights = [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]
    direction = [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]
    grads = [
        [c + 0.5 * torch.randn(c.shape, generator=gen, dtype=dtype) for c in direction]
        for _ in range(STEPS)
    ]
    return weights, grads


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """The reference allocates d_numerator and d_de_nom with torch.tensor([0.0])."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def reference(weights, grads, theirs: dict, coupled_wd: float = 0.0) -> list[tuple]:
    """(weights, d, states) after each step; ``coupled_wd``: wd * w added to the gradient first."""
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    with default_dtype(weights[0].dtype):
        opt = Reference([{"params": params}], **theirs)
        out = []
        for step in grads:
            for p, g in zip(params, step, strict=True):
                p.grad = g.clone() + coupled_wd * p.detach()
            opt.step()
            states = [{k: v.clone() for k, v in opt.state[p].items()} for p in params]
            out.append(([p.detach().clone() for p in params], opt.param_groups[0]["d"], states))
    return out


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs().clamp_min(1e-30)).max())


def check(ws, d: float, states, expected, bound: float) -> None:
    want_ws, want_d, want_states = expected
    assert abs(d - want_d) <= bound * want_d
    for w, e in zip(ws, want_ws, strict=True):
        torch.testing.assert_close(torch.as_tensor(w), e, rtol=bound, atol=bound * 1e-3)
    for st, e in zip(states, want_states, strict=True):
        for ours, theirs in [("mean", "exp_avg"), ("var", "exp_avg_sq"), ("s", "s"), ("p0", "p0")]:
            torch.testing.assert_close(
                torch.as_tensor(st[ours]),
                e[theirs],
                rtol=bound,
                atol=bound * 1e-3 * e[theirs].abs().max(),
            )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("ours", "theirs"), SETTINGS)
def test_torch_class(dtype, ours: dict, theirs: dict) -> None:
    weights, grads = data(dtype)
    want = reference(weights, grads, theirs)
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    opt = Prodigy([{"params": params}], **ours)
    for step, expected in zip(grads, want, strict=True):
        for p, g in zip(params, step, strict=True):
            p.grad = g.clone()
        opt.step()
        states = [opt.state[p] for p in params]
        assert states[0]["d"] == states[1]["d"]  # a group value, the same in every tensor
        check([p.detach() for p in params], states[0]["d"], states, expected, BOUNDS[dtype])
    assert want[-1][1] > 100 * ours.get("d0", D0)  # not vacuous: d grew from d0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("ours", "theirs"), SETTINGS)
def test_numpy_step_multi(dtype, ours: dict, theirs: dict) -> None:
    weights, grads = data(dtype)
    want = reference(weights, grads, theirs)
    ws = [w.numpy().copy() for w in weights]
    states = [prodigy.init_state(w) for w in ws]
    for t, (step, expected) in enumerate(zip(grads, want, strict=True), start=1):
        prodigy.step_multi(ws, [g.numpy() for g in step], states, t, **ours)
        check(ws, states[0]["d"], states, expected, BOUNDS[dtype])


def test_coupled_weight_decay_adds_wd_w_to_the_gradient() -> None:
    """weight_decouple=False: the reference adds wd * w to the gradient after the moments used
    it (no effect on the weights); optgen, as prodigyopt, before: the reference fed g + wd * w."""
    weights, grads = data(torch.float64)
    want = reference(weights, grads, {}, coupled_wd=0.1)
    ws = [w.numpy().copy() for w in weights]
    states = [prodigy.init_state(w) for w in ws]
    for t, (step, expected) in enumerate(zip(grads, want, strict=True), start=1):
        prodigy.step_multi(ws, [g.numpy() for g in step], states, t, wd=0.1, weight_decouple=False)
        check(ws, states[0]["d"], states, expected, BOUNDS[torch.float64])
    plain = reference(weights, grads, {})
    assert not torch.allclose(torch.as_tensor(ws[1]), plain[-1][0][1], rtol=1e-6, atol=0)


def test_a_zero_gradient_step_updates_the_moments_but_not_the_weights_or_d() -> None:
    """The reference's early return when sum |s| == 0 (every gradient 0 at the first step)."""
    weights, grads = data(torch.float64)
    zero = [[torch.zeros_like(g) for g in grads[0]], *grads[:3]]
    want = reference(weights, zero, {})
    ws = [w.numpy().copy() for w in weights]
    states = [prodigy.init_state(w) for w in ws]
    for t, (step, expected) in enumerate(zip(zero, want, strict=True), start=1):
        with np.errstate(invalid="ignore"):  # the discarded branch divides 0 by 0
            prodigy.step_multi(ws, [g.numpy() for g in step], states, t)
        check(ws, states[0]["d"], states, expected, BOUNDS[torch.float64])
    assert want[0][1] == D0 and torch.equal(want[0][0][0], weights[0])


def test_triton_step_multi_equals_numpy_step_multi() -> None:
    """float32, every setting, 20 steps. Triton adds float32 partial sums in its blocks (NumPy
    adds in float64): d differs by up to 4.5e-7 relative, the weights by up to 4.8e-7 of the
    largest weight (measured: ``python tests/test_prodigy.py``)."""
    module = triton_module("prodigy")
    weights, grads = data(torch.float32)
    for ours, _ in SETTINGS:
        ws = [w.numpy().copy() for w in weights]
        states = [prodigy.init_state(w) for w in ws]
        tws = [w.clone() for w in weights]
        tstates = [module.init_state(w) for w in tws]
        for t, step in enumerate(grads, start=1):
            prodigy.step_multi(ws, [g.numpy() for g in step], states, t, **ours)
            module.step_multi(tws, [g.clone() for g in step], tstates, t, **ours)
        assert abs(tstates[0]["d"] - states[0]["d"]) <= 1e-5 * states[0]["d"]
        for w, tw in zip(ws, tws, strict=True):
            np.testing.assert_allclose(tw.numpy(), w, rtol=1e-5, atol=1e-7)


GUARDED_LET = '''"""A host let that divides by a sum which a Piecewise tests for 0 first."""

import sympy as sp

from codegen.spec import Rule

RULE = Rule("guarded_let", __doc__)
w, g = RULE.weight, RULE.grad
n = RULE.sum("n", g**2)
q = RULE.let("q", 1 / n)
r = RULE.let("r", sp.sqrt(n - 1))
RULE.update(w, sp.Piecewise((w, sp.Eq(n, 0)), (w - q * g, n < 4), (w - r * g, True)))
'''


# Fixed, a regression test (was a strict xfail: a host let computed before the Piecewise
# that guards its only use).
def test_a_host_let_used_only_under_a_guard_is_not_computed_outside_it(tmp_path) -> None:
    """Why prodigy.py guards d_hat itself (d0 where sum |s| == 0) instead of only its uses:
    host code computed every host let first (``q = n ** (-1)``), so a zero gradient made the
    step raise although the update's scalar is guarded (``(-q) if (n != 0) else 0.0``). A let
    only Piecewise branches use is now computed in a ``try``, and raises only where a branch
    taken uses it (``r = sqrt(n - 1)`` is a domain error at n = 0.5, used from n = 4 on)."""
    import importlib.util

    from codegen.generate import generate_all, write
    from optgen_runtime.scalars import computed

    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "guarded_let.py").write_text(GUARDED_LET)
    write(generate_all(tmp_path / "specs", ["guarded_let"]), tmp_path / "out")
    path = tmp_path / "out" / "rules" / "guarded_let.py"
    spec = importlib.util.spec_from_file_location("guarded_let_rules", path)
    rules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rules)
    assert 'unavailable("q", _error)' in path.read_text()
    scalar = {n: rules.host_scalars(1, n)[0] for n in (0.0, 0.5, 2.0, 9.0)}
    # the kernel's scalars -q (under n < 4) and -r (from n = 4 on), each 0 where unused
    assert scalar[0.5][:2] == (-2.0, 0.0) and scalar[2.0][:2] == (-0.5, 0.0)
    assert scalar[0.0][:2] == (0.0, 0.0)  # where n == 0: 1/0 and sqrt(-1) both unused
    assert scalar[9.0][:2] == (0.0, -math.sqrt(8.0))
    with pytest.raises(ZeroDivisionError, match=r"^q: float division by zero$"):
        rules.unavailable("q", ZeroDivisionError("float division by zero")) + 1.0
    ok, _ = computed("guarded_let", rules.host_scalars, 1, n=0.5)  # r fails, unused: fine
    assert ok[0] == -2.0


def measure() -> None:
    """The worst relative errors quoted at BOUNDS, and Triton's against NumPy (float32)."""
    for dtype in (torch.float32, torch.float64):
        worst = {"element": 0.0, "largest": 0.0, "d": 0.0}
        for ours, theirs in SETTINGS:
            weights, grads = data(dtype)
            want = reference(weights, grads, theirs)
            params = [torch.nn.Parameter(w.clone()) for w in weights]
            opt = Prodigy([{"params": params}], **ours)
            ws = [w.numpy().copy() for w in weights]
            states = [prodigy.init_state(w) for w in ws]
            for t, (step, (ew, ed, _)) in enumerate(zip(grads, want, strict=True), start=1):
                for p, g in zip(params, step, strict=True):
                    p.grad = g.clone()
                opt.step()
                prodigy.step_multi(ws, [g.numpy() for g in step], states, t, **ours)
                got = [(opt.state[params[0]]["d"], [p.detach() for p in params])]
                got.append((states[0]["d"], [torch.as_tensor(w) for w in ws]))
                for d, cur in got:
                    worst["d"] = max(worst["d"], abs(d - ed) / ed)
                    for a, b in zip(cur, ew, strict=True):
                        worst["element"] = max(worst["element"], relative(a, b))
                        largest = float((a - b).abs().max() / b.abs().max())
                        worst["largest"] = max(worst["largest"], largest)
        print(f"{dtype} vs pytorch-optimizer: {worst}")
    module = triton_module("prodigy")
    weights, grads = data(torch.float32)
    worst = {"element": 0.0, "largest": 0.0, "d": 0.0}
    for ours, _ in SETTINGS:
        ws = [w.numpy().copy() for w in weights]
        states = [prodigy.init_state(w) for w in ws]
        tws = [w.clone() for w in weights]
        tstates = [module.init_state(w) for w in tws]
        for t, step in enumerate(grads, start=1):
            prodigy.step_multi(ws, [g.numpy() for g in step], states, t, **ours)
            module.step_multi(tws, [g.clone() for g in step], tstates, t, **ours)
            worst["d"] = max(worst["d"], abs(tstates[0]["d"] - states[0]["d"]) / states[0]["d"])
            for w, tw in zip(ws, tws, strict=True):
                worst["element"] = max(worst["element"], relative(tw, torch.as_tensor(w)))
                largest = float(np.abs(tw.numpy() - w).max() / np.abs(w).max())
                worst["largest"] = max(worst["largest"], largest)
    print(f"Triton vs NumPy step_multi, float32: {worst}")


if __name__ == "__main__":
    measure()
