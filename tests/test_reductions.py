"""Reductions whose summands share subexpressions (issue 10, generator bug 1): the NumPy module
kept the first summand in a scratch row the second one then overwrote, and returned the second
sum twice. Checked against the sums computed directly, on both targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import temporary_rule

SPEC = '''"""Two sums, the first a subexpression of the second."""
from codegen.spec import Rule
RULE = Rule("twosums", __doc__)
lr = RULE.hyper("lr", 0.1)
w, g = RULE.weight, RULE.grad
a = RULE.sum("a", g**2)
b = RULE.sum("b", g**2 / (1 + w**2))
RULE.update(w, w - lr * (a - 2 * b) * g)
'''
TARGETS = ("rules", "numpy", "triton")


@pytest.fixture(scope="module")
def twosums(tmp_path_factory: pytest.TempPathFactory):
    with temporary_rule(tmp_path_factory.mktemp("twosums"), "twosums", SPEC) as modules:
        yield modules


@pytest.mark.parametrize("target", ["numpy", "triton"])
def test_sums_sharing_a_summand_are_both_right(twosums, target: str) -> None:
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(3000)
    g = rng.standard_normal(3000)
    a, b = np.sum(g**2), np.sum(g**2 / (1 + w0**2))
    expected = w0 - 0.1 * (a - 2 * b) * g
    module = twosums[target]
    if target == "numpy":
        w = w0.copy()
        module.step(w, g, module.init_state(w), 1)
        np.testing.assert_allclose(w, expected, rtol=1e-12)
    else:
        w = torch.from_numpy(w0.astype(np.float32))
        module.step(w, torch.from_numpy(g.astype(np.float32)), module.init_state(w), 1)
        np.testing.assert_allclose(w.numpy(), expected, rtol=1e-4, atol=1e-4)


GUARDED = '''"""A division guarded by its sum."""
import sympy as sp
from codegen.spec import Rule
RULE = Rule("guarded", __doc__)
lr = RULE.hyper("lr", 0.1)
w, g = RULE.weight, RULE.grad
s = RULE.sum("s", g**2)
RULE.update(w, w - lr * sp.Piecewise((g / sp.sqrt(s), s > 0), (0, True)))
'''


def test_a_division_guarded_by_its_sum_is_not_hoisted_out_of_the_guard(tmp_path) -> None:
    """Issue 10, generator bug 2: ``Piecewise((g / sqrt(s), s > 0), (0, True))`` made an
    unconditional host scalar ``1 / sqrt(s)``: a zero gradient divided by zero on the host. The
    scalar is now computed only where its branch is taken (codegen.ops.Guarded)."""
    with temporary_rule(tmp_path, "guarded", GUARDED) as generated:
        host_scalars = generated["rules"].host_scalars
        host_scalars(1, lr=0.1, s=0.0)  # was: ZeroDivisionError
        scalars, _ = host_scalars(1, lr=0.1, s=4.0)
    assert 0.5 in scalars, scalars  # 1 / sqrt(s) where the branch is taken


RUNNORM = '''"""SGD scaled by a running gradient norm (a host state fed by a sum), cosine lr."""
import sympy as sp
from codegen.spec import Rule, integer, positive
RULE = Rule("runnorm", __doc__)
lr = RULE.hyper("lr", 0.1, positive())
period = RULE.hyper("period", 10, integer(1))
w, g, t = RULE.weight, RULE.grad, RULE.t
s = RULE.sum("s", g**2)
rn = RULE.host_state("rn", 0.0)
rn_new = RULE.update(rn, 0.9 * rn + 0.1 * sp.sqrt(s))
lr_t = RULE.let("lr_t", lr * (1 + sp.cos(sp.pi * t / period)) / 2)
RULE.update(w, w - lr_t * g / (rn_new + 1))
'''


def test_a_host_state_fed_by_a_reduction_with_a_cosine_schedule(tmp_path) -> None:
    """Issue 10, bug 6: a host state that depends on a per-tensor sum was refused as depending
    on "per-element values", and cos in a step-count schedule as outside the elementwise set."""
    import math

    with temporary_rule(tmp_path, "runnorm", RUNNORM) as generated:
        modules = [generated["numpy"], generated["triton"]]
        rng = np.random.default_rng(0)
        w0 = rng.standard_normal(100)
        w, wt = w0.copy(), torch.from_numpy(w0.astype(np.float32))
        states = [modules[0].init_state(w), modules[1].init_state(wt)]
        rn, ref = 0.0, w0.copy()
        for t in range(1, 4):
            g = rng.standard_normal(100)
            modules[0].step(w, g, states[0], t)
            modules[1].step(wt, torch.from_numpy(g.astype(np.float32)), states[1], t)
            rn = 0.9 * rn + 0.1 * math.sqrt(np.sum(g**2))
            ref = ref - 0.1 * (1 + math.cos(math.pi * t / 10)) / 2 * g / (rn + 1)
        np.testing.assert_allclose(w, ref, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(wt.numpy(), ref, rtol=1e-5, atol=1e-6)
        assert states[0]["rn"] == pytest.approx(rn, rel=1e-13)


COMPARE = '''"""A per-element comparison with a host-side Piecewise."""
import sympy as sp
from codegen.spec import Rule
RULE = Rule("compare", __doc__)
lr = RULE.hyper("lr", 0.1)
w, g, t = RULE.weight, RULE.grad, RULE.t
thr = RULE.let("thr", sp.Piecewise((lr, t > 3), (0, True)))
RULE.update(w, w - lr * sp.Piecewise((g, g > thr), (0, True)))
'''


@pytest.mark.parametrize("target", ["numpy", "triton"])
def test_a_comparison_with_a_host_piecewise(tmp_path, target: str) -> None:
    """Issue 10, bug 3: SymPy writes ``g > Piecewise(...)`` as ``ITE(c, g > a, g > b)``, which was
    refused (``ITE is not supported``); it is a select between two masks."""
    with temporary_rule(tmp_path, "compare", COMPARE) as generated:
        module = generated[target]
        rng = np.random.default_rng(0)
        for t in (1, 5):
            w0, g = rng.standard_normal(50), rng.standard_normal(50) * 0.3
            expected = w0 - 0.1 * np.where(g > (0.1 if t > 3 else 0.0), g, 0.0)
            if target == "numpy":
                w = w0.copy()
                module.step(w, g, {}, t)
                np.testing.assert_array_equal(w, expected)
            else:
                w = torch.from_numpy(w0.astype(np.float32))
                module.step(w, torch.from_numpy(g.astype(np.float32)), {}, t)
                np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6, atol=1e-6)
