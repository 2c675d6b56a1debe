"""The generated code runs without the generator: importing it loads no sympy, jinja2, mpmath
or codegen module (checked in a fresh interpreter, where nothing else has imported them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import MATRIX_RULE_NAMES, RULE_NAMES

ROOT = Path(__file__).resolve().parent.parent
GENERATOR_ONLY = ("sympy", "jinja2", "mpmath", "codegen")

PROBE = """
import importlib, json, sys
{preamble}
for name in {modules!r}:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {forbidden!r})))
"""


def python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``code`` run by a fresh interpreter in the repository, ``env`` added; it must succeed."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def generator_modules_loaded(modules: list[str], preamble: str = "") -> list[str]:
    """Import ``modules`` in a fresh interpreter; the generator-only modules it then holds."""
    code = PROBE.format(preamble=preamble, modules=modules, forbidden=GENERATOR_ONLY)
    done = python(code, TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "1"))
    return json.loads(done.stdout.splitlines()[-1])


def test_generated_modules_import_without_the_generator() -> None:
    modules = [
        f"generated.{target}.{rule}"
        for target in ("numpy", "triton")
        for rule in [*RULE_NAMES, *MATRIX_RULE_NAMES]
    ]
    assert generator_modules_loaded([*modules, "generated.torch", "generated.torch.optim"]) == []


def test_the_import_check_catches_a_generator_import() -> None:
    """Test the tester: a module that pulls in the generator (here, a preamble) is reported."""
    found = generator_modules_loaded(["generated.numpy.sgd"], preamble="import codegen.lower")
    assert "codegen.lower" in found and "sympy" in found and "jinja2" not in found


NO_NUMBA = """
import json, sys
sys.modules["numba"] = None  # as on a machine without numba (a lent GPU's own Python)
sys.modules["llvmlite"] = None
import numpy as np
import torch
from generated.numpy import adam as reference
from generated.torch import Adam
from optgen_runtime.optim.backends import NumbaMissing
from tools import gpu_check

p = torch.nn.Parameter(torch.linspace(-1, 1, 300))
p.grad = torch.linspace(2, -1, 300)
w, state = p.detach().numpy().copy(), None
opt = Adam([p], lr=0.1)
for t in (1, 2, 3):  # the first step in full, then the fast step: NumPy on CPU
    opt.step()
    state = state or reference.init_state(w)
    reference.step(w, p.grad.numpy(), state, t, lr=0.1)
try:
    Adam([p], backend="numba")
    refused = ""
except NumbaMissing as error:
    refused = str(error)
rows = gpu_check.bit_checks(["adam"], device="cpu", sizes=(16, 48, 7))
print(json.dumps({
    "equal": bool(np.array_equal(p.detach().numpy(), w)),
    "refused": refused,
    "bit_checks": all(r["ok"] for r in rows),
    "numba_loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("numba", "llvmlite")
                           and sys.modules[m] is not None),
}))
"""


def test_the_torch_classes_and_the_gpu_check_run_without_numba() -> None:
    """numba is needed only for the compiled CPU loops: without it (a lent GPU's Python has
    torch, Triton, NumPy and SymPy, no numba) the classes import, ``backend="auto"`` runs the
    NumPy reference on CPU (equal to it, fast step included), ``backend="numba"`` is refused
    naming the class and why, and the GPU check's bit checks run."""
    done = python(NO_NUMBA, TRITON_INTERPRET="1", OPTGEN_CPU_BACKEND="")
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["equal"] and found["bit_checks"], found
    assert found["refused"].startswith("Adam: the compiled CPU loops need numba"), found
    assert found["numba_loaded"] == [], found


# what a lent GPU's Python lacks (it has torch, Triton, NumPy, SymPy and maybe pytest): the
# generator's templates, the compiled CPU loops, the test-only references and plugins
LENT_LACKS = ("jinja2", "numba", "llvmlite", "hypothesis", "mxnet", "pytorch_optimizer", "ruff")
LACKING = """
import sys
import pytest

class Lacking:  # another finder with these hidden: not found, as where not installed
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {lacks!r}:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, name):
        return getattr(self.finder, name)

sys.meta_path[:] = [Lacking(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
sys.exit(pytest.main(["-q", "--collect-only", "-p", "no:cacheprovider", *{files!r}]))
"""


def test_the_gpu_checks_test_files_collect_without_what_a_lent_machine_lacks() -> None:
    """tools/gpu_check runs these files with pytest on the lent machine: none may need a
    package that machine lacks (a failed collection would cost the device's minutes)."""
    from tools import gpu_check

    code = LACKING.format(lacks=LENT_LACKS, files=gpu_check.TEST_FILES)
    done = python(code, TRITON_INTERPRET="1", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    collected = [line for line in done.stdout.splitlines() if "tests collected" in line]
    assert collected and int(collected[-1].split()[0]) > 500, done.stdout[-500:]
