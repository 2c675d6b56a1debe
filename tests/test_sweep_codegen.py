"""Generated modules of two shapes of rule that SM3 and CAME first needed: a row state in a rule
that uses no sizes (RULE.ndim, numel, rows, cols), and ten chained reductions (ten phases, whose
names sort ``_2`` before ``_10``). Each is checked against its formula and, for the second, the
lint the repository runs on generated/ (import and ``__all__`` order)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import temporary_rule, tolerance

ROOT = Path(__file__).resolve().parent.parent

ROW_PEAK = '''"""A row state in a rule without sizes: each row's largest |g| so far."""
import sympy as sp
from codegen.spec import Rule
RULE = Rule("rowpeak", __doc__)
w, g = RULE.weight, RULE.grad
peak = RULE.state("peak", 0, doc="largest |g| of the row so far", axis=-1)
new = RULE.update(peak, sp.Max(peak, RULE.max("row_abs", sp.Abs(g), axis=-1)))
RULE.update(w, w - 0.1 * g / (new + 1))
'''

CHAIN = '''"""Ten chained reductions: m_k = max(|g| + m_{k-1}) = k max|g|, one phase each."""
import sympy as sp
from codegen.spec import Rule
RULE = Rule("chain10", __doc__)
w, g = RULE.weight, RULE.grad
level = RULE.max("m1", sp.Abs(g))
for k in range(2, 11):
    level = RULE.max(f"m{k}", sp.Abs(g) + level)
RULE.update(w, w - 0.01 * level)
'''


MIXED = '''"""Every kind of sweep the compiled row/column loops take: a per-row max, a per-column
min and a whole sum over the elements, a per-matrix mean of a row vector, a whole sum over a
column vector, a cube root in the update."""
import sympy as sp
from codegen.spec import Rule
RULE = Rule("rowcolmix", __doc__)
w, g = RULE.weight, RULE.grad
r = RULE.state("r", 0, doc="largest |g| of the row so far", axis=-1)
c = RULE.state("c", 1, doc="running least g^2 + 1 of the column", axis=-2)
r_new = RULE.update(r, sp.Max(r, RULE.max("rmax", sp.Abs(g), axis=-1)))
c_new = RULE.update(c, sp.Min(c, RULE.min("cmin", g**2 + 1, axis=-2)))
rm = RULE.mean("rmean", r_new, axis=-1)
ct = RULE.sum("ctot", c_new)
gs = RULE.sum("gsq", g**2)
RULE.update(w, w - 0.01 * sp.cbrt(g**2 + 1) * r_new / (rm + 1) / (ct + gs + 1))
'''


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_kind_of_compiled_sweep_equals_numpy(tmp_path: Path, dtype: type) -> None:
    """A row/column rule with max, min and sum reductions along rows, columns, a matrix's
    vector and the whole tensor, compiled (generated/numba: optgen_runtime.numba_tiles) against
    its NumPy module over three steps on every kind of tile; sums differ in float64 rounding
    only, max and min not at all."""
    shapes = [(300, 7), (70001,), (400, 300), (3, 70, 1000), (2, 40000)]
    rng = np.random.default_rng(2)
    with temporary_rule(tmp_path, "rowcolmix", MIXED) as modules:
        ref, nb = modules["numpy"], modules["numba"]
        assert nb.COMPILED
        a = [rng.standard_normal(s).astype(dtype) for s in shapes]
        b = [w.copy() for w in a]
        start = [w.copy() for w in a]
        sa, sb = [ref.init_state(w) for w in a], [nb.init_state(w) for w in b]
        for t in range(1, 4):
            grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
            ref.step_multi(a, grads, sa, t)
            nb.step_multi(b, grads, sb, t)
    for shape, w0, wa, wb, xa, xb in zip(shapes, start, a, b, sa, sb, strict=True):
        for key in ("r", "c"):  # max and min: the same values whatever the order
            assert np.array_equal(xa[key], xb[key]), (shape, key)
        np.testing.assert_allclose(wb, wa, **tolerance(dtype, steps=3), err_msg=str(shape))
        assert np.mean(wa != w0) > 0.5, shape  # the weights moved: not a comparison of no-ops


@pytest.mark.parametrize("target", ["numpy", "triton", "numba"])
def test_a_row_state_without_sizes(tmp_path: Path, target: str) -> None:
    rng = np.random.default_rng(0)
    w0, g = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    with temporary_rule(tmp_path, "rowpeak", ROW_PEAK) as modules:
        module = modules[target]
        make = (lambda a: a.copy()) if target != "triton" else torch.from_numpy
        w = make(w0.astype(np.float32))
        state = module.init_state(w)
        module.step(w, make(g.astype(np.float32)), state, 1)
    peak = np.abs(g).max(axis=-1)
    np.testing.assert_allclose(np.asarray(state["peak"]), peak, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(w), w0 - 0.1 * g / (peak[:, None] + 1), rtol=1e-6)


def test_ten_phases_lint_clean_and_match_the_formula(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    w0, g = rng.standard_normal(50), rng.standard_normal(50)
    with temporary_rule(tmp_path, "chain10", CHAIN) as modules:
        assert hasattr(modules["rules"], "reduction_scalars_10")
        w = w0.copy()
        modules["numpy"].step(w, g, modules["numpy"].init_state(w), 1)
    np.testing.assert_allclose(w, w0 - 0.1 * np.abs(g).max(), rtol=1e-14)
    files = [str(tmp_path / "out" / t / "chain10.py") for t in ("rules", "numpy", "triton")]
    lint = [sys.executable, "-m", "ruff", "check", "--isolated", "--line-length", "100"]
    lint += ["--select", "I,RUF022"]
    lint += ["--config", "lint.isort.known-first-party = ['generated', 'optgen_runtime']"]
    done = subprocess.run([*lint, *files], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
