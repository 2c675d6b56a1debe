"""Reductions beyond the per-tensor sum (issue 10): max and min (NaN-propagating), mean and the
element count, and chained reductions (a summand that uses another reduction: a later phase).

Each is checked on NumPy and Triton against the same quantities computed directly with NumPy
from the formulas (independent of the generator), and against the spec evaluated at 40 digits.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import temporary_rule
from reference import spec_trajectory

from codegen.load import load_rule

SPEC = '''"""Every kind of per-tensor reduction, one chained on another."""
import sympy as sp
from codegen.spec import Rule
RULE = Rule("kinds", __doc__)
lr = RULE.hyper("lr", 0.1)
w, g = RULE.weight, RULE.grad
peak = RULE.max("peak", sp.Abs(g))
low = RULE.min("low", w)
avg = RULE.let("avg", RULE.mean("g_sum", g))
var = RULE.mean("dev_sq", (g - avg) ** 2)
scale = RULE.let("scale", sp.Piecewise((1 / sp.sqrt(var), var > 0), (0, True)))
RULE.update(w, w - lr * ((g - avg) * scale + peak * 1e-3) - 1e-4 * low)
'''


def expected(w0: np.ndarray, g: np.ndarray, lr: float = 0.1) -> np.ndarray:
    avg = g.mean()
    var = ((g - avg) ** 2).mean()
    scale = 1 / math.sqrt(var) if var > 0 else 0.0
    return w0 - lr * ((g - avg) * scale + np.abs(g).max() * 1e-3) - 1e-4 * w0.min()


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("kinds")
    with temporary_rule(root, "kinds", SPEC) as modules:
        yield modules, root


def test_metadata_names_kinds_and_phases(kinds) -> None:
    modules, _ = kinds
    rules = modules["rules"]
    assert rules.REDUCE_KINDS == {"dev_sq": "sum", "g_sum": "sum", "low": "min", "peak": "max"}
    assert rules.SIZES == ("numel",)
    # dev_sq uses avg = g_sum / numel: a second phase, whose host function takes phase 1's results
    assert "g_sum" in rules.reduction_scalars_2.__code__.co_varnames
    assert not hasattr(rules, "reduction_scalars_3")


@pytest.mark.parametrize("n", [1, 7, 3000, 70000])
def test_numpy_float64_matches_the_formulas(kinds, n: int) -> None:
    modules, _ = kinds
    rng = np.random.default_rng(n)
    w0, g = rng.standard_normal(n), rng.standard_normal(n)
    w = w0.copy()
    modules["numpy"].step(w, g, modules["numpy"].init_state(w), 1)
    np.testing.assert_allclose(w, expected(w0, g), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("n", [1, 7, 3000])
def test_triton_matches_the_formulas(kinds, n: int) -> None:
    modules, _ = kinds
    rng = np.random.default_rng(n)
    w0 = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    w = torch.from_numpy(w0.copy())
    modules["triton"].step(w, torch.from_numpy(g), modules["triton"].init_state(w), 1)
    want = expected(w0.astype(np.float64), g.astype(np.float64))
    np.testing.assert_allclose(w.numpy(), want, rtol=1e-4, atol=1e-5)


def test_triton_multi_tensor_equals_one_launch_each(kinds) -> None:
    modules, _ = kinds
    triton_module = modules["triton"]
    rng = np.random.default_rng(3)
    shapes = [5, 2000, 1]
    w0 = [torch.from_numpy(rng.standard_normal(n).astype(np.float32)) for n in shapes]
    g = [torch.from_numpy(rng.standard_normal(n).astype(np.float32)) for n in shapes]
    single = [w.clone() for w in w0]
    for w, grad in zip(single, g, strict=True):
        triton_module.step(w, grad, triton_module.init_state(w), 1)
    multi = [w.clone() for w in w0]
    triton_module.step_multi(multi, g, [triton_module.init_state(w) for w in multi], 1)
    for a, b in zip(single, multi, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("target", ["numpy", "triton"])
def test_max_and_min_propagate_nan(kinds, target: str) -> None:
    """One NaN gradient element makes peak NaN, hence every new weight (as np.max would)."""
    modules, _ = kinds
    g = np.array([1.0, np.nan, -2.0, 0.5])
    w0 = np.array([0.3, -0.2, 0.1, 0.4])
    if target == "numpy":
        w = w0.copy()
        modules["numpy"].step(w, g, modules["numpy"].init_state(w), 1)
        got = w
    else:
        w = torch.tensor(w0, dtype=torch.float32)
        modules["triton"].step(w, torch.tensor(g, dtype=torch.float32), {}, 1)
        got = w.numpy()
    assert np.isnan(got).all()


def test_empty_tensor_is_a_no_op(kinds) -> None:
    """No elements: max is -inf and min +inf, mean has no value, but nothing is computed per
    element: the update writes nothing and raises nothing."""
    modules, _ = kinds
    w = np.zeros(0)
    modules["numpy"].step(w, np.zeros(0), {}, 1)
    tw = torch.zeros(0)
    modules["triton"].step(tw, torch.zeros(0), {}, 1)


def test_chained_reduction_matches_the_spec_at_40_digits(kinds) -> None:
    modules, root = kinds
    rule = load_rule(root / "specs" / "kinds.py")
    rng = np.random.default_rng(11)
    w0 = rng.standard_normal(9)
    grads = [rng.standard_normal(9) for _ in range(3)]
    reference = spec_trajectory(rule, w0, grads, {})
    w = w0.copy()
    for t, g in enumerate(grads, start=1):
        modules["numpy"].step(w, g, {}, t)
        np.testing.assert_allclose(w, reference[t - 1]["weight"], rtol=1e-13)
