"""Malformed specs are refused with one line naming the spec file, the line and the culprit.

The header below is 8 lines (it starts with a newline): a body's first line is line 9.
"""

from __future__ import annotations

import inspect
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from conftest import temporary_rule

from codegen.load import load_rule
from codegen.lower import lower
from codegen.spec import SpecError
from codegen.targets.host import literal
from optgen_runtime import variants as runtime_variants

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
    "per-element constant float32 cannot hold": (
        "RULE.update(w, w - mx.lr * sp.Max(RULE.grad, 1e-42))",
        r"specs/bad.py:9: per-element constant 1e-42 is outside float32's normal range",
    ),
    "undeclared symbol": (
        "RULE.update(w, w - mx.lr * sp.Symbol('mystery'))",
        r"specs/bad.py:9: equation for weight_new uses undeclared symbol\(s\) mystery",
    ),
    "weight updated twice": (
        "RULE.update(w, w - mx.lr * RULE.grad)\nRULE.update(w, w)",
        r"specs/bad.py:10: weight is updated twice",
    ),
    "weight never updated": (
        "m = RULE.state('m')\nRULE.update(m, m + RULE.grad)",
        r"specs/bad.py:6: the weight is never updated",
    ),
    "state never updated": (
        "m = RULE.state('m')\nRULE.update(w, w - mx.lr * m)",
        r"specs/bad.py:9: state m is never updated",
    ),
    "a math function of a symbol": (
        "import math\nRULE.update(w, w - math.sqrt(mx.lr) * RULE.grad)",
        r"specs/bad.py:10: TypeError: Cannot convert expression to float \(a math, NumPy or "
        r"float\(\) call on a symbol: use SymPy's, sp.sqrt, sp.exp\)",
    ),
    "an undeclared state updated": (
        "RULE.update(sp.Symbol('mom'), RULE.grad)\nRULE.update(w, w - mx.lr * RULE.grad)",
        r"specs/bad.py:9: mom is not the weight or a declared state \(declare it with "
        r"RULE.state\('mom', init\)",
    ),
    "a host state of per-element values": (
        "h = RULE.host_state('h', 0.0)\nRULE.update(h, h + RULE.grad)\n"
        "RULE.update(w, w - mx.lr * RULE.grad)",
        r"specs/bad.py:10: state h holds .* but its new value varies .* \(reduce it first: "
        r"RULE.sum, RULE.mean or RULE.norm",
    ),
    "cycle": (
        "m = RULE.state('m')\n"
        "a = RULE.let('a', RULE.new(m) * 2)\n"
        "RULE.update(m, a + RULE.grad)\nRULE.update(w, w - a)",
        r"specs/bad.py:10: the equations form a cycle: a -> m_new -> a",
    ),
    "unsupported function": (
        "RULE.update(w, w - mx.lr * sp.erf(RULE.grad))",
        r"specs/bad.py:9: equation for weight_new uses erf, which optgen does not support",
    ),
    "host-only function per element": (
        "RULE.update(w, w - mx.lr * sp.sin(RULE.grad))",
        r"specs/bad.py:\d+: cannot generate per-element code for sin\(grad\): sin is computed on "
        r"the host only \(per element: .*tanh, .*comparisons joined by &, \|, ~, Eq, Ne, and "
        r"Piecewise; on the host only .* also Mod, ceiling, cos, f32, floor, sin\)",
    ),
    "undefined function": (
        "RULE.update(w, w - mx.lr * sp.Function('f')(RULE.grad))",
        r"specs/bad.py:9: equation for weight_new uses f, which optgen does not support",
    ),
    "hyperparameter without default": (
        "b = RULE.hyper('beta', None)\nRULE.update(w, w - b * RULE.grad)",
        r"specs/bad.py:9: hyperparameter 'beta' has no default",
    ),
    "default outside legal values": (
        "b = RULE.hyper('beta', 1.5, unit())\nRULE.update(w, w - b * RULE.grad)",
        r"specs/bad.py:9: default beta=1.5 is outside its legal values \[0, 1\)",
    ),
    "clash with generated temporaries": (
        "b = RULE.hyper('_t0', 0.5)\nRULE.update(w, w - b * RULE.grad)",
        r"specs/bad.py:9: hyperparameter name '_t0' clashes with generated temporaries",
    ),
    "clash with a template name": (
        "m = RULE.state('offs')\nRULE.update(m, m)\nRULE.update(w, w - m)",
        r"specs/bad.py:9: state name 'offs' clashes with a name the generated code uses "
        r"\(a local of the generated kernels\)",
    ),
    "duplicate name": (
        "b = RULE.hyper('lr', 0.5)",
        r"specs/bad.py:9: hyperparameter 'lr' is declared twice",
    ),
    "state initialised from the gradient": (
        "m = RULE.state('m', RULE.grad)\nRULE.update(m, m)\nRULE.update(w, w - m)",
        r"specs/bad.py:9: initial value of state 'm' may use only constants, hyperparameters "
        r"declared before it and the weight, not \['grad'\]",
    ),
    "state initialised from a hyperparameter declared after it": (
        "b = sp.Symbol('b0', real=True)\nm = RULE.state('m', b)\nb0 = RULE.hyper('b0', 1.0)\n"
        "RULE.update(m, m)\nRULE.update(w, w - m)",
        r"specs/bad.py:10: initial value of state 'm' may use only constants, hyperparameters "
        r"declared before it and the weight, not \['b0'\]",
    ),
    "state initialised from the weight and a hyperparameter": (
        "m = RULE.state('m', mx.lr * w)\nRULE.update(m, m)\nRULE.update(w, w - m)",
        r"specs/bad.py:9: initial value of state 'm' is lr\*weight: it may be the weight itself "
        r"or an expression of constants and hyperparameters, not a mix",
    ),
    "state initialised with an unsupported function": (
        "m = RULE.state('m', sp.erf(mx.lr))\nRULE.update(m, m)\nRULE.update(w, w - m)",
        r"specs/bad.py:9: equation for initial m uses erf, which optgen does not support "
        r"\(per element: .*Abs, sign, exp, log, tanh, .*; on the host only .* also .*cos",
    ),
    "per-element power with an irrational exponent": (
        "RULE.update(w, w - mx.lr * sp.Abs(RULE.grad) ** sp.pi)",
        r"specs/bad.py:\d+: cannot generate per-element code for Abs\(grad\)\*\*pi: a per-element "
        r"power needs a constant exponent, a number \(2, Rational\(1, 3\), 0.25\), not a "
        r"symbolic constant",
    ),
    "softplus of two arguments": (
        "from codegen.spec import softplus\nRULE.update(w, w - mx.lr * softplus(RULE.grad, w))",
        r"specs/bad.py:10: TypeError: softplus takes exactly 1 argument \(2 given\)",
    ),
    "upper-case rule name": (
        "Rule('BadRule', __doc__)",
        r"rule name 'BadRule' must be lower-case \('badrule'; class_name=\.\.\. names its class\)",
    ),
    "per-element power with a hyperparameter exponent, in the spec's terms": (
        "RULE.update(w, w - mx.lr * sp.Abs(RULE.grad) ** (2 * mx.lr))",
        r"specs/bad.py:\d+: cannot generate per-element code for Abs\(grad\)\*\*\(2\*lr\): ",
    ),
    "per-element power with a symbolic exponent": (
        "RULE.update(w, w - mx.lr * RULE.grad ** RULE.t)",
        r"specs/bad.py:\d+: cannot generate per-element code for grad\*\*t: a per-element power "
        r"needs a constant exponent, .* not a symbol \(for a base > 0, exp\(k\*log\(x\)\)",
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
    with pytest.raises(SpecError, match=r"specs/other.py:6: rule is named 'bad'"):
        load_rule(path)


def test_mxnet_name_must_be_an_optimizer_name(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "Rule('bad', __doc__, mxnet='mx.sgd')")
    with pytest.raises(SpecError, match=r"specs/bad.py:9: mxnet='mx.sgd' is not an MXNet "):
        load_rule(path)


def test_a_well_formed_spec_loads(tmp_path: Path) -> None:
    """The header above is sound: the errors come from the bodies, not the scaffolding."""
    path = write_spec(tmp_path, "RULE.update(w, w - mx.lr * RULE.grad)")
    assert lower(load_rule(path)).rule.name == "bad"


# Found by an adversarial run (issue 9): each is refused at load, with the spec line.
LOAD_CASES = {
    "host Piecewise without a default branch": (
        "f = RULE.let('f', sp.Piecewise((mx.lr, RULE.t > 3)))\nRULE.update(w, w - f * RULE.grad)",
        r"specs/bad.py:9: equation for f has a Piecewise with no default branch \(last condition "
        r"t > 3\); end it with \(value, True\)",
    ),
    "per-element Piecewise without a default branch": (
        "RULE.update(w, sp.Piecewise((w - RULE.grad, RULE.grad > 0)))",
        r"specs/bad.py:9: equation for weight_new has a Piecewise with no default branch",
    ),
    "NaN constant": (
        "RULE.update(w, w - mx.lr * RULE.grad * sp.nan)",
        r"specs/bad.py:9: equation for weight_new has the constant nan",
    ),
    "float NaN": (
        "RULE.update(w, w - mx.lr * RULE.grad * float('nan'))",
        r"specs/bad.py:9: equation for weight_new has the constant nan",
    ),
    "complex infinity": (
        "RULE.update(w, w - mx.lr * RULE.grad / sp.S.Zero)",
        r"specs/bad.py:9: equation for weight_new has the constant zoo \(not a number: SymPy's "
        r"value of a division by zero",
    ),
    "sys.exit(0)": ("import sys\nsys.exit(0)", r"specs/bad.py:10: SystemExit: the spec called"),
    "SystemExit": ("raise SystemExit", r"specs/bad.py:9: SystemExit"),
    "KeyboardInterrupt": ("raise KeyboardInterrupt", r"specs/bad.py:9: KeyboardInterrupt"),
    "BaseException": ("raise BaseException('x')", r"specs/bad.py:9: BaseException: x"),
    "RuntimeError": ("raise RuntimeError('boom')", r"specs/bad.py:9: RuntimeError: boom"),
    "undefined name": (
        "RULE.update(w, w - nothing)",
        r"specs/bad.py:9: NameError: name 'nothing' is not defined",
    ),
    "import error": ("import not_a_module", r"specs/bad.py:9: ModuleNotFoundError"),
    "syntax error": ("RULE.update(w, (w", r"specs/bad.py:9: SyntaxError: '\(' was never closed"),
    "wrong arguments to hyper": (
        "RULE.hyper()",
        r"specs/bad.py:9: TypeError: Rule.hyper\(\) missing 2 required positional arguments",
    ),
    "wrong arguments to state": (
        "RULE.state('m', 0, 'doc', 4)",
        r"specs/bad.py:9: TypeError: Rule.state\(\) takes from 2 to 4 positional arguments",
    ),
    "a name that is not a string": (
        "RULE.hyper(3, 0.1)",
        r"specs/bad.py:9: hyperparameter name 3 is not a string",
    ),
    "an expression written as a string": (
        "RULE.update(w, 'w - )')",
        r"specs/bad.py:9: the new value of weight is the string 'w - \)', not an expression",
    ),
    "a value that is not an expression": (
        "RULE.update(w, object())",
        r"specs/bad.py:9: the new value of weight is a object, not a SymPy expression",
    ),
    "a relation as a value": (
        "RULE.update(w, w < RULE.grad)",
        r"specs/bad.py:9: the new value of weight is weight < grad \(a StrictLessThan\)",
    ),
    "an error raised inside SymPy": (
        "RULE.update(w, sp.Max(w, sp.I))",
        r"specs/bad.py:9: ValueError: The argument 'I' is not comparable",
    ),
    "no RULE": ("del RULE", r"specs/bad.py: defines no RULE"),
    "a doc with a line break (it would end a comment in generated code)": (
        "RULE.hyper('b', 0.5, doc='x\\n    \"y\": 1,')",
        r"specs/bad.py:9: the doc of hyperparameter 'b' must be one line of printable text",
    ),
    "a state doc with a control character": (
        "RULE.state('m', doc='x\\ry')",
        r"specs/bad.py:9: the doc of state 'm' must be one line of printable text",
    ),
    "a test case setting an undeclared hyperparameter": (
        "RULE.test_case(beta=0.5)",
        r"specs/bad.py:9: test_case sets 'beta', which is not a hyperparameter declared before it",
    ),
    "a test case with an illegal value": (
        "RULE.test_case(lr=-1.0)",
        r"specs/bad.py:9: test_case lr=-1.0 is outside its legal values \[0, inf\)",
    ),
    "a test case with None where None is not legal": (
        "RULE.test_case(lr=None)",
        r"specs/bad.py:9: test_case lr=None is outside its legal values",
    ),
    "a test case with a choice given by its index": (
        "m = RULE.choice('mode', 'a', ('a', 'b'))\nRULE.test_case(mode=1)",
        r"specs/bad.py:10: test_case mode=1 is outside its legal values one of 'a', 'b'",
    ),
    "a test case with a flag given as a number": (
        "f = RULE.flag('on', False)\nRULE.test_case(on=1)",
        r"specs/bad.py:10: test_case on=1 is outside its legal values True or False",
    ),
    "a test case with zero steps": (
        "RULE.test_case(steps=0)",
        r"specs/bad.py:9: test_case steps=0 must be an int in 1..100",
    ),
    "a test case with fractional steps": (
        "RULE.test_case(steps=2.5, lr=0.1)",
        r"specs/bad.py:9: test_case steps=2.5 must be an int in 1..100",
    ),
    "a test case with positional hyperparameters": (
        "RULE.test_case(3, 0.1)",
        r"specs/bad.py:9: TypeError: Rule.test_case\(\) takes from 1 to 2 positional arguments",
    ),
    "a reduction called without its summand": (  # (named Reductions.sum() until 2026-12-06)
        "RULE.sum('s')",
        r"specs/bad.py:9: TypeError: Rule.sum\(\) missing 1 required positional argument",
    ),
    "a sparse mode that is not lazy or dense": (
        "RULE.sparse('rows')",
        r"specs/bad.py:9: sparse: mode 'rows' is not 'lazy' or 'dense'",
    ),
    "sparse declared twice": (
        "RULE.sparse('dense')\nRULE.sparse('lazy')",
        r"specs/bad.py:10: sparse is declared twice",
    ),
    "lazy_update for a dense rule": (
        "RULE.sparse('dense', lazy_update=True)",
        r"specs/bad.py:9: sparse: lazy_update=True is for mode 'lazy'",
    ),
    "a sparse refusal without its reason": (
        "RULE.sparse('lazy', only_at={mx.wd: 0})",
        r"specs/bad.py:9: sparse: only_at/not_at need why=",
    ),
    "a sparse refusal's reason without a refusal": (
        "RULE.sparse('lazy', why='because')",
        r"specs/bad.py:9: sparse: why= explains only_at/not_at; none is given",
    ),
    "a sparse refusal at an undeclared hyperparameter": (
        "RULE.sparse('dense', not_at={sp.Symbol('beta'): 0}, why='x')",
        r"specs/bad.py:9: sparse: not_at names beta, which is not a hyperparameter declared",
    ),
    "a sparse refusal at an illegal value": (
        "RULE.sparse('lazy', only_at={mx.wd: -1}, why='x')",
        r"specs/bad.py:9: sparse: only_at wd=-1 is outside its legal values",
    ),
    "none given as a string (SymPy would parse it)": (
        "RULE.hyper('b', 0.5, none='oo')",
        r"specs/bad.py:9: none='oo' of 'b' must be a number",
    ),
}


@pytest.mark.parametrize("case", sorted(LOAD_CASES))
def test_malformed_spec_is_refused_at_load_in_one_line(tmp_path: Path, case: str) -> None:
    body, message = LOAD_CASES[case]
    path = write_spec(tmp_path, body)
    with pytest.raises(SpecError, match=message) as error:
        load_rule(path)
    assert "\n" not in str(error.value)


def test_a_test_case_is_recorded_with_its_line(tmp_path: Path) -> None:
    """``RULE.test_case`` keeps the setting as written (the tests read it from the spec)."""
    body = (
        "RULE.update(w, w - mx.lr * RULE.grad)\nRULE.test_case(steps=7, lr=0.5, clip_gradient=None)"
    )
    rule = load_rule(write_spec(tmp_path, body))
    [case] = rule.test_cases
    assert (case.hyperparams, case.steps, case.line) == ({"lr": 0.5, "clip_gradient": None}, 7, 10)


def test_a_per_element_constant_outside_float32_names_where_it_is() -> None:
    with pytest.raises(SpecError, match=r"specs/x.py:3: per-element constant 1e-42 is outside"):
        literal(sp.Float(1e-42), "specs/x.py:3")
    with pytest.raises(SpecError, match=r"specs/x.py: per-element constant nan is not finite"):
        literal(sp.nan, "specs/x.py")
    assert literal(sp.Float(0.5)) == "0.5"


def test_a_special_case_with_a_per_element_input_keeps_it(tmp_path: Path) -> None:
    """A special case in a rule with a per-element input (AdaHessian's hessian at
    hessian_power = 1) is the update at those values, the input still taken."""
    from codegen.variants import variants

    body = """
    h = RULE.input("h", doc="an estimate")
    RULE.update(w, w - mx.lr * RULE.grad * h)
    RULE.special_case("plain", {mx.lr: 1.0}, doc="lr = 1")
    """
    (variant,) = variants(load_rule(write_spec(tmp_path, body)))
    assert variant.name == "bad_plain" and list(variant.inputs) == ["h"]
    assert lower(variant).rule.name == "bad_plain"


def test_a_special_case_with_a_scalar_input_is_refused(tmp_path: Path) -> None:
    """Not supported yet: refused when generating, naming the spec file and the reason."""
    from codegen.variants import variants

    body = """
    loss = RULE.scalar("loss", doc="the step's loss")
    RULE.update(w, w - mx.lr * RULE.grad * loss)
    RULE.special_case("plain", {mx.lr: 1.0}, doc="lr = 1")
    """
    message = r"specs/bad.py: special_case 'plain' is not supported yet in a rule with per-step "
    with pytest.raises(SpecError, match=message + "scalar inputs"):
        variants(load_rule(write_spec(tmp_path, body)))


NONE_CASES = '''"""Special cases and an absent state at hyperparameters' None."""

import inspect
import math

import sympy as sp

from codegen.spec import Rule, positive

RULE = Rule("none_probe", __doc__)
lr = RULE.hyper("lr", 0.1, positive())
clip = RULE.hyper("clip", None, positive(allow_none=True), none=math.inf, doc="None: no clip")
cap = RULE.hyper("cap", None, positive(allow_none=True), none=2.0, doc="None: 2")
w, g = RULE.weight, RULE.grad
mom = RULE.state("mom", 0, doc="a momentum", absent_when={cap: None})
mom_new = RULE.update(mom, mom + g)
step = sp.Piecewise((0, sp.Eq(cap, 2)), (mom_new, True))
RULE.update(w, w - lr * sp.Min(sp.Max(g, -clip), clip) * cap - step)
RULE.special_case("plain", {clip: None, cap: None}, doc="no clip, cap 2")
RULE.special_case("unclipped", {clip: None}, doc="no clip")
'''


def test_special_cases_and_absent_states_at_none(tmp_path: Path) -> None:
    """``special_case``/``absent_when`` at a hyperparameter's None (what its ``none=`` says it
    stands for) was refused ("clip=None is outside its legal values ... or None"); an infinite
    value was printed ``inf`` (no Python name) in the rules module. Both run now: the variants
    are taken at None and step as the full update does."""
    with temporary_rule(tmp_path, "none_probe", NONE_CASES) as modules:
        rules, m = modules["rules"], modules["numpy"]
        assert rules.SPECIAL == {
            "none_probe_plain": {"clip": math.inf, "cap": 2.0},
            "none_probe_unclipped": {"clip": math.inf},
        }
        assert rules.ABSENT == {"mom": {"cap": 2.0}}
        g = np.array([-3.0, 0.5, 4.0], np.float32)
        for clip, cap in [(None, None), (1.0, None), (None, 3.0), (1.0, 3.0)]:
            hp = {"clip": clip, "cap": cap}
            resolved = {"lr": 0.1, "clip": math.inf if clip is None else clip}
            resolved["cap"] = 2.0 if cap is None else cap
            variant = {(None, None): "plain", (None, 3.0): "unclipped", (1.0, None): "without_mom"}
            running = runtime_variants.running_variant(rules, resolved)
            assert running == (
                f"none_probe_{variant[clip, cap]}" if (clip, cap) in variant else None
            )
            w = np.zeros(3, np.float32)
            state = m.init_state(w, **hp)
            m.step(w, g, state, 1, **hp)
            want = -0.1 * np.clip(g, -resolved["clip"], resolved["clip"]) * resolved["cap"]
            if cap is not None:
                want -= g
            np.testing.assert_allclose(w, want, rtol=1e-6)


HOST_DIVISION = '''"""A host scalar that a legal setting cannot compute (wd = 0)."""

from codegen.mxnet import common
from codegen.spec import Rule

RULE = Rule("host_division", __doc__)
mx = common(RULE, lr=0.1)
w, g = RULE.weight, RULE.grad
q = RULE.let("q", mx.lr / mx.wd)
RULE.update(w, w - q * g)
'''


def test_a_host_scalars_failure_names_its_spec_line(tmp_path: Path) -> None:
    """``lr / wd`` at wd = 0: the step is refused naming the generated host line, as before,
    and now the spec equation it computes for (the host code carries each scalar's spec line
    as a comment); nothing written."""
    with temporary_rule(tmp_path, "host_division", HOST_DIVISION) as modules:
        source = inspect.getsource(modules["rules"].host_scalars)
        assert "# specs/host_division.py:10: weight_new = -grad*q + weight\n" in source
        m = modules["numpy"]
        w = np.ones(3, np.float32)
        with pytest.raises(ValueError) as error:
            m.step(w, w.copy(), m.init_state(w), 1, wd=0.0)
        assert str(error.value).endswith(
            "float division by zero in `_h0 = -lr / wd` "
            f"({tmp_path / 'out' / 'rules' / 'host_division.py'}:"
            f"{_line_of(modules['rules'], '_h0 = -lr / wd')}; "
            "from specs/host_division.py:10: weight_new = -grad*q + weight)"
        )
        assert (w == 1).all()


def _line_of(module: object, text: str) -> int:
    lines = inspect.getsource(module).splitlines()
    return next(i for i, line in enumerate(lines, start=1) if line.strip() == text)
