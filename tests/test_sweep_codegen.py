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
from conftest import temporary_rule

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


@pytest.mark.parametrize("target", ["numpy", "triton"])
def test_a_row_state_without_sizes(tmp_path: Path, target: str) -> None:
    rng = np.random.default_rng(0)
    w0, g = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    with temporary_rule(tmp_path, "rowpeak", ROW_PEAK) as modules:
        module = modules[target]
        make = (lambda a: a.copy()) if target == "numpy" else torch.from_numpy
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
