"""Malformed specs are refused with an error naming the spec file and the culprit."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from codegen.load import load_rule
from codegen.lower import lower
from codegen.spec import SpecError

HEADER = '''
"""A test rule."""
import sympy as sp
from codegen.mxnet import common
from codegen.spec import Rule, unit
RULE = Rule("bad", __doc__)
mx = common(RULE)
w = RULE.weight
'''

CASES = {
    "undeclared symbol": (
        "RULE.update(w, w - mx.lr * sp.Symbol('mystery'))",
        r"specs/bad.py: equation for weight_new uses undeclared symbol\(s\) mystery",
    ),
    "weight updated twice": (
        "RULE.update(w, w - mx.lr * RULE.grad)\nRULE.update(w, w)",
        r"specs/bad.py: weight is updated twice",
    ),
    "weight never updated": (
        "m = RULE.state('m')\nRULE.update(m, m + RULE.grad)",
        r"specs/bad.py: the weight is never updated",
    ),
    "state never updated": (
        "m = RULE.state('m')\nRULE.update(w, w - mx.lr * m)",
        r"specs/bad.py: state m is never updated",
    ),
    "cycle": (
        "m = RULE.state('m')\n"
        "a = RULE.let('a', RULE.new(m) * 2)\n"
        "RULE.update(m, a + RULE.grad)\nRULE.update(w, w - a)",
        r"specs/bad.py: the equations form a cycle: a -> m_new -> a",
    ),
    "unsupported function": (
        "RULE.update(w, w - mx.lr * sp.sin(RULE.grad))",
        r"specs/bad.py: equation for weight_new uses sin, which is outside the supported",
    ),
    "undefined function": (
        "RULE.update(w, w - mx.lr * sp.Function('f')(RULE.grad))",
        r"specs/bad.py: equation for weight_new uses f, which is outside the supported",
    ),
    "hyperparameter without default": (
        "b = RULE.hyper('beta', None)\nRULE.update(w, w - b * RULE.grad)",
        r"specs/bad.py: hyperparameter 'beta' has no default",
    ),
    "default outside legal values": (
        "b = RULE.hyper('beta', 1.5, unit())\nRULE.update(w, w - b * RULE.grad)",
        r"specs/bad.py: default beta=1.5 is outside its legal values \[0, 1\)",
    ),
    "clash with generated temporaries": (
        "b = RULE.hyper('_t0', 0.5)\nRULE.update(w, w - b * RULE.grad)",
        r"specs/bad.py: hyperparameter name '_t0' clashes with generated temporaries",
    ),
    "clash with a template name": (
        "m = RULE.state('offs')\nRULE.update(m, m)\nRULE.update(w, w - m)",
        r"specs/bad.py: state name 'offs' clashes with a name the generated code uses "
        r"\(a local of the generated kernels\)",
    ),
    "duplicate name": (
        "b = RULE.hyper('lr', 0.5)",
        r"specs/bad.py: hyperparameter 'lr' is declared twice",
    ),
    "state initialised from the gradient": (
        "m = RULE.state('m', RULE.grad)\nRULE.update(m, m)\nRULE.update(w, w - m)",
        r"specs/bad.py: initial value of state 'm' may use only constants and the weight",
    ),
    "per-element power with a symbolic exponent": (
        "RULE.update(w, w - mx.lr * RULE.grad ** RULE.t)",
        r"specs/bad.py: cannot generate per-element code for .*: a per-element power needs a "
        r"constant exponent",
    ),
}


def write_spec(tmp_path: Path, body: str, name: str = "bad") -> Path:
    specs = tmp_path / "specs"
    specs.mkdir(exist_ok=True)
    path = specs / f"{name}.py"
    path.write_text(HEADER + textwrap.dedent(body) + "\n")
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_spec_is_refused(tmp_path: Path, case: str) -> None:
    body, message = CASES[case]
    path = write_spec(tmp_path, body)
    with pytest.raises(SpecError, match=message):
        lower(load_rule(path))


def test_file_name_must_match_rule_name(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "RULE.update(w, w - mx.lr * RULE.grad)", name="other")
    with pytest.raises(SpecError, match=r"specs/other.py: rule is named 'bad'"):
        load_rule(path)


def test_mxnet_name_must_be_an_optimizer_name(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "Rule('bad', __doc__, mxnet='mx.sgd')")
    with pytest.raises(SpecError, match=r"specs/bad.py: mxnet='mx.sgd' is not an MXNet optimizer"):
        load_rule(path)


def test_a_well_formed_spec_loads(tmp_path: Path) -> None:
    """The header above is sound: the errors come from the bodies, not the scaffolding."""
    path = write_spec(tmp_path, "RULE.update(w, w - mx.lr * RULE.grad)")
    assert lower(load_rule(path)).rule.name == "bad"
