"""Reductions whose summands share subexpressions (issue 10, generator bug 1): the NumPy module
kept the first summand in a scratch row the second one then overwrote, and returned the second
sum twice. Checked against the sums computed directly, on both targets."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
import torch

from codegen.generate import generate_all, write

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
    root = tmp_path_factory.mktemp("twosums")
    (root / "specs").mkdir()
    (root / "specs" / "twosums.py").write_text(SPEC)
    write(generate_all(root / "specs"), root / "out")
    packages = [importlib.import_module(f"generated.{t}") for t in TARGETS]
    for package, target in zip(packages, TARGETS, strict=True):
        package.__path__.append(str(root / "out" / target))
    yield {t: importlib.import_module(f"generated.{t}.twosums") for t in ("numpy", "triton")}
    for package, target in zip(packages, TARGETS, strict=True):
        package.__path__.remove(str(root / "out" / target))
        sys.modules.pop(f"generated.{target}.twosums", None)


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
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "guarded.py").write_text(GUARDED)
    out = tmp_path / "out"
    write(generate_all(tmp_path / "specs"), out)
    namespace: dict = {}
    exec(compile((out / "rules" / "guarded.py").read_text(), "guarded", "exec"), namespace)
    namespace["host_scalars"](1, lr=0.1, s=0.0)  # was: ZeroDivisionError
    scalars, _ = namespace["host_scalars"](1, lr=0.1, s=4.0)
    assert 0.5 in scalars, scalars  # 1 / sqrt(s) where the branch is taken
