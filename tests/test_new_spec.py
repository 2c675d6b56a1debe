"""A new correct spec passes the whole suite with no test edit.

One small synthetic spec combines what per-rule test tables used to be needed for: no MXNet
preprocessing (no ``wd``, no ``rescale_grad``), a state guarded by an off-by-default flag, a
branch first taken at step 8, MXNet's sign and a choice, a state whose initial value is a
hyperparameter set by the spec's test case (the sign test's modules start there, as the
equations do: Yogi's ``initial_accumulator_value``) and a per-element input (as AdaHessian's).
It is generated, with every real spec, into a temporary tree, and every test of the suite that
is parametrized by rule runs on it there (``OPTGEN_ROOT``, tests/conftest.py); nothing in this
repository changes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from derived import frozen_states, steps_for, uses_sign, variants
from test_aot import assert_ieee_division_and_sqrt

from codegen.generate import generate_all, write
from codegen.load import SPECS_DIR, load_rule

ROOT = Path(__file__).resolve().parent.parent
NAME = "synthetic_probe"

SPEC = f'''"""Synthetic probe: sign descent on a momentum, every derivable test need in one rule.

No MXNet preprocessing; ``peak`` is kept only with the off-by-default ``keep_max``; the rate halves
from step 8; MXNet's sign (0 at 0 and at NaN) or the plain momentum, by ``mode``; the momentum
starts at ``mom0``; each element's step is scaled by the input ``scale``.
"""

import sympy as sp

from codegen.mxnet import mxnet_sign
from codegen.spec import Rule, nonnegative, positive, unit

RULE = Rule("{NAME}", __doc__)
eta = RULE.hyper("eta", 0.05, positive(), doc="step size")
beta = RULE.hyper("beta", 0.5, unit(), doc="decay of the momentum")
keep_max = RULE.flag("keep_max", False, doc="scale by the running peak of |mom|")
mode = RULE.choice("mode", "sign", ("sign", "plain"), doc="direction")
w, g, t = RULE.weight, RULE.grad, RULE.t
mom0 = RULE.hyper("mom0", 0.0, nonnegative(), doc="initial momentum")
scale = RULE.input("scale", doc="per-element step scale")
mom = RULE.state("mom", mom0, doc="momentum")
RULE.test_case(mom0=0.5)  # init_state takes it: the equations start there
peak = RULE.state("peak", 0, doc="running peak of |mom| (only with keep_max)")
mom_new = RULE.update(mom, beta * mom + (1 - beta) * g)
on = sp.Eq(keep_max, 1)
peak_new = RULE.update(peak, sp.Piecewise((sp.Max(peak, sp.Abs(mom_new)), on), (peak, True)))
rate = RULE.let("rate", sp.Piecewise((eta / 2, t >= 8), (eta, True)))
d = sp.Piecewise((mxnet_sign(mom_new), RULE.is_choice(mode, "sign")), (mom_new, True))
RULE.update(w, w - rate * scale * d / (1 + peak_new))
'''


def test_the_probe_needs_every_derivation(tmp_path: Path) -> None:
    """The probe is the case it claims to be: each derivation has something to do."""
    (tmp_path / f"{NAME}.py").write_text(SPEC)
    rule = load_rule(tmp_path / f"{NAME}.py")
    assert "wd" not in rule.hypers and "rescale_grad" not in rule.hypers
    assert steps_for(rule, {}) == 8  # the halved rate is first taken at step 8
    assert frozen_states(rule, {}) == {"peak"} and not frozen_states(rule, {"keep_max": True})
    assert uses_sign(rule)
    labels = ["keep_max=True", "mode=plain", "test_case0@line22"]
    assert [label for label, _, _ in variants(rule)] == labels
    assert set(rule.inputs) == {"scale"} and rule.states["mom"].init == rule.hypers["mom0"].symbol


def test_a_new_spec_passes_every_rule_test_unedited(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    shutil.copytree(SPECS_DIR, specs, ignore=shutil.ignore_patterns("__pycache__"))
    (specs / f"{NAME}.py").write_text(SPEC)
    write(generate_all(specs), tmp_path / "generated")
    # tests/test_aot.py compiles every rule at once (one broken rule fails them all): the probe's
    # kernels are compiled on their own below, with that file's checks.
    select = f"{NAME} and not test_every_kernel_compiles"
    pytest_args = ["-q", "-rA", "-p", "no:cacheprovider", "-k", select, "tests"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *pytest_args],
        cwd=ROOT,
        env={**os.environ, "OPTGEN_ROOT": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert "failed" not in summary and "error" not in summary, summary
    # the derived tests ran on it: its variants, its sign, its special data, its branches
    for test in (
        f"test_variant_settings_match_equations[{NAME}-keep_max=True]",
        f"test_triton_matches_numpy_on_variant_settings[{NAME}-mode=plain]",
        f"test_sign_at_zero_and_nan_matches_equations[{NAME}-numpy]",
        f"test_special_data_match_equations[{NAME}-zeros_in_gradients]",
        f"test_every_branch_is_taken[{NAME}]",
        f"test_flag_and_choice_settings_move_every_weight_and_state[{NAME}]",
    ):
        assert test in done.stdout, test
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    compiled = subprocess.run(
        [sys.executable, "-m", "tools.aot", "--json", NAME],
        cwd=tmp_path,  # its generated/ first; tools and the runtime from this repository
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    rows = json.loads(compiled.stdout)
    assert {r["kernel"] for r in rows} == {f"{NAME}_kernel", f"{NAME}_multi_kernel"}
    for r in rows:
        assert r["target_ok"] and r["cubin_bytes"] > 0, r
        assert_ieee_division_and_sqrt(r)


def test_the_hint_and_the_readme_list_the_same_commands(tmp_path: Path) -> None:
    """``python -m tools.new``'s hint and README's "Adding an optimizer" list every command a new
    rule needs, the same ones in the same order."""
    from tools.new import next_commands

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Adding an optimizer") :]
    block = section[section.index("```bash\n") + len("```bash\n") : section.index("\n```\n")]
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    assert [c for c in commands if c] == ["python -m tools.new my_rule", *next_commands("my_rule")]
    done = subprocess.run(
        [sys.executable, "-m", "tools.new", "my_rule", "--specs", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    hint = [line.split("#")[0].strip() for line in done.stdout.splitlines()[2:]]
    assert hint == next_commands("my_rule"), done.stdout


def test_the_skeleton_passes_the_linters(tmp_path: Path) -> None:
    """tools/test.sh runs ``ruff check`` and ``ruff format --check`` first: a fresh skeleton
    must pass both, or the hint's ``bash tools/test.sh -k NAME`` fails before any test."""
    subprocess.run(
        [sys.executable, "-m", "tools.new", "my_rule", "--specs", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    ruff = Path(sys.executable).parent / "ruff"
    for command in (["check", "--no-cache"], ["format", "--check", "--no-cache"]):
        done = subprocess.run(
            [
                str(ruff),
                *command,
                "--config",
                str(ROOT / "pyproject.toml"),
                str(tmp_path / "my_rule.py"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stdout + done.stderr
