"""What ``pip install`` puts into site-packages: ``optgen`` (the generated modules) and
``optgen_runtime``, no generic top-level ``tools``, ``generated`` or ``codegen``; installed, the
generated package imports and steps from outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")  # keep setuptools' build/ out of the checkout
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(out), str(ROOT)],
        check=True,
        cwd=build,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    (path,) = out.glob("optgen-*.whl")
    return path


def test_wheel_top_level_names_are_project_specific(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"optgen", "optgen_runtime"}, top
    # every generated subpackage (a new target's too) ships under optgen/
    subpackages = {p.parent.name for p in (ROOT / "generated").glob("*/__init__.py")}
    shipped = {n.split("/")[1] for n in names if n.startswith("optgen/") and n.count("/") == 2}
    assert subpackages <= shipped, f"add optgen.{sorted(subpackages - shipped)} to pyproject.toml"
    rules = {p.name for p in (ROOT / "generated" / "numpy").glob("*.py")}
    assert {n.split("/")[-1] for n in names if n.startswith("optgen/numpy/")} == rules


def test_generated_modules_import_each_other_relatively() -> None:
    """An absolute ``generated.`` import would break the installed ``optgen`` package."""
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "generated").rglob("*.py")
        if "from generated" in p.read_text() or "import generated" in p.read_text()
    ]
    assert offenders == []


def test_installed_package_steps_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target)]
        + [str(wheel)],
        check=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    code = (
        "import sys, numpy as np, torch\n"
        "from optgen.numpy import adam\n"
        "from optgen.torch import Adam\n"
        "import optgen_runtime\n"
        "assert all(m.__file__.startswith(sys.argv[1]) for m in (adam, optgen_runtime))\n"
        "w = np.ones(3); adam.step(w, np.ones(3), adam.init_state(w), 1, lr=0.1)\n"
        "p = torch.nn.Parameter(torch.ones(3)); p.grad = torch.ones(3)\n"
        "Adam([p], lr=0.1).step()\n"
        "assert np.allclose(w, 0.9) and torch.allclose(p.detach(), torch.full((3,), 0.9))\n"
    )
    # not the checkout: the installed files come first on sys.path
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(target)!r})\n" + code]
        + [str(target)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
