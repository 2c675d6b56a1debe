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


def generator_modules_loaded(modules: list[str], preamble: str = "") -> list[str]:
    """Import ``modules`` in a fresh interpreter; the generator-only modules it then holds."""
    code = PROBE.format(preamble=preamble, modules=modules, forbidden=GENERATOR_ONLY)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=dict(os.environ, TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "1")),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
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
