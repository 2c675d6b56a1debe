"""``python -m tools.generate``: a malformed spec is one line on stderr and exit 2, never exit 0."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tools.generate import main

ROOT = Path(__file__).resolve().parent.parent

SPEC = '''"""A test rule."""
import sympy as sp
from codegen.mxnet import common
from codegen.spec import Rule
RULE = Rule("bad", __doc__)
mx = common(RULE)
w = RULE.weight
'''

BODIES = {
    "exit(0)": ("import sys\nsys.exit(0)", "specs/bad.py:9: SystemExit"),
    "syntax error": ("RULE.update(w, (w", "specs/bad.py:8: SyntaxError"),
    "TypeError in a spec call": ("RULE.hyper()", "specs/bad.py:8: TypeError"),
    "Piecewise without default": (
        "RULE.update(w, w - sp.Piecewise((mx.lr, RULE.t > 3)) * RULE.grad)",
        "specs/bad.py:8: equation for weight_new has a Piecewise with no default branch",
    ),
    "test case with an undeclared hyperparameter": (
        "RULE.test_case(steps=3, beta=0.5)",
        "specs/bad.py:8: test_case sets 'beta', which is not a hyperparameter declared before it",
    ),
    "constant outside float32": (
        "RULE.update(w, w - RULE.grad * sp.Float(1e-42))",
        "specs/bad.py:8: per-element constant 1e-42 is outside float32's normal range",
    ),
}


def specs_dir(tmp_path: Path, body: str) -> Path:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "bad.py").write_text(SPEC + textwrap.dedent(body) + "\n")
    return specs


@pytest.mark.parametrize("check", [False, True], ids=["generate", "check"])
@pytest.mark.parametrize("case", sorted(BODIES))
def test_a_malformed_spec_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, check: bool
) -> None:
    body, message = BODIES[case]
    specs = specs_dir(tmp_path, body)
    argv = ["--specs", str(specs), "--out", str(tmp_path / "out")] + ["--check"] * check
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {message}"), err
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    specs = specs_dir(tmp_path, "RULE.hyper()")
    assert main(["--debug", "--specs", str(specs), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "TypeError" in err
    assert err.splitlines()[-1].startswith("error: specs/bad.py:8: TypeError")


def test_a_spec_calling_exit_0_fails_the_check(tmp_path: Path) -> None:
    """The adversarial case: exit(0) while loading made ``--check`` pass on a stale tree."""
    specs = specs_dir(tmp_path, "import sys\nsys.exit(0)")
    command = [sys.executable, "-m", "tools.generate", "--check", "--specs", str(specs)]
    command += ["--out", str(tmp_path / "out")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 2, done
    assert done.stderr == "error: specs/bad.py:9: SystemExit: the spec called exit(0)\n"
    assert "in sync" not in done.stdout


GOOD = '''"""A test rule."""
from codegen.mxnet import common
from codegen.spec import Rule
RULE = Rule("{name}", __doc__)
mx = common(RULE)
RULE.update(RULE.weight, RULE.weight - mx.lr * RULE.grad)
'''


def test_a_named_new_rule_generates_every_spec_for_the_indexes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m tools.generate NEW`` for a spec the indexes do not list yet (as ``tools.new``
    leaves it) regenerates every spec, so the new rule is importable from the packages and the
    tree is fresh; a named rule already listed regenerates its own modules only."""
    specs, out = tmp_path / "specs", tmp_path / "out"
    specs.mkdir()
    (specs / "one.py").write_text(GOOD.format(name="one"))
    assert main(["--specs", str(specs), "--out", str(out)]) == 0
    (specs / "two.py").write_text(GOOD.format(name="two"))
    capsys.readouterr()
    assert main(["--specs", str(specs), "--out", str(out), "two"]) == 0
    printed = capsys.readouterr().out
    assert "two: not in the package indexes yet" in printed
    assert f"changed {out / 'rules' / '__init__.py'}" in printed  # the index, where written
    index = (out / "rules" / "__init__.py").read_text()
    assert '"one"' in index and '"two"' in index
    assert main(["--specs", str(specs), "--out", str(out), "--check"]) == 0
    (specs / "two.py").write_text(GOOD.format(name="two").replace("mx.lr *", "2 * mx.lr *"))
    capsys.readouterr()
    assert main(["--specs", str(specs), "--out", str(out), "two"]) == 0
    printed = capsys.readouterr().out
    assert "not in the package indexes" not in printed
    assert f"changed {out / 'rules' / 'two.py'}" in printed  # (not "generated/...": --out)
    assert "__init__.py" not in printed


def test_command_line_mistakes_are_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing or empty ``--specs`` made a full generation delete every module of ``--out``
    and exit 0; an unknown rule name regenerated every spec; ``--check NAME`` diffed every
    rule; a stale ``--out`` tree was reported as ``generated/``. Each is now one line on stderr
    and exit 2 (1 for a stale tree), with nothing written."""
    specs, out = tmp_path / "specs", tmp_path / "out"
    specs.mkdir()
    (specs / "one.py").write_text(GOOD.format(name="one"))
    (specs / "two.py").write_text(GOOD.format(name="two"))
    assert main(["--specs", str(specs), "--out", str(out)]) == 0
    before = {p: p.read_text() for p in out.rglob("*.py")}
    for argv, said in [
        (["--specs", str(tmp_path / "none")], f"--specs {tmp_path / 'none'}: no such directory"),
        (["--specs", str(tmp_path)], "no spec files in it (a full generation would delete"),
        (["--specs", str(specs), "One"], f"no spec named 'One' in {specs}/ (did you mean one?)"),
        (["--specs", str(specs), "--check", "three"], "no spec named 'three'"),
    ]:
        capsys.readouterr()
        assert main([*argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and said in err and len(err.splitlines()) == 1, err
    assert {p: p.read_text() for p in out.rglob("*.py")} == before
    (out / "numpy" / "two.py").write_text("# edited\n")
    capsys.readouterr()
    assert main(["--specs", str(specs), "--out", str(out), "--check", "one"]) == 0
    assert main(["--specs", str(specs), "--out", str(out), "--check", "two"]) == 1
    printed = capsys.readouterr()
    assert (
        f"--- {out / 'numpy' / 'two.py'} (on disk)" in printed.out and "one.py" not in printed.out
    )
    again = f"python -m tools.generate two --specs {specs} --out {out}"
    assert printed.err.startswith(f"{out}/ is stale: 1 file(s) differ; run: {again}")


def test_a_failed_write_replaces_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Files were written one by one: a write error in the numba tree left the rules and NumPy
    modules of the new spec beside the old numba one (and said "internal error"). Every changed
    file is written aside first, then all are renamed: now nothing changes."""
    specs, out = tmp_path / "specs", tmp_path / "out"
    specs.mkdir()
    (specs / "one.py").write_text(GOOD.format(name="one"))
    assert main(["--specs", str(specs), "--out", str(out)]) == 0
    before = {p: p.read_text() for p in out.rglob("*.py")}
    (specs / "one.py").write_text(GOOD.format(name="one").replace("mx.lr *", "2 * mx.lr *"))
    (tmp_path / "numba_elsewhere").mkdir()
    for p in (out / "numba").iterdir():
        p.rename(tmp_path / "numba_elsewhere" / p.name)
    (out / "numba").rmdir()
    (out / "numba").write_text("a file where the numba tree was\n")
    capsys.readouterr()
    assert main(["--specs", str(specs), "--out", str(out), "one"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write ") and err.endswith("(nothing was written)\n"), err
    after = {p: p.read_text() for p in out.rglob("*.py")}
    assert after == {p: t for p, t in before.items() if "numba" not in p.parts}
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
