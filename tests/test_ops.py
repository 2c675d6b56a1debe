"""The one table of operations (codegen/ops.py): what a spec may write, the linearizer, the
symbolic reconstruction and every printer derive from it; a printer lacking an operation fails
when it is imported, naming the operation."""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import mpmath
import numpy as np
import pytest
import sympy as sp
from conftest import temporary_rule, ulp

from codegen import ops
from codegen.linearize import Linearizer
from codegen.lower import lower
from codegen.spec_checks import SUPPORTED_FUNCTIONS
from codegen.targets import numpy as numpy_target
from codegen.targets import triton as triton_target


@pytest.mark.parametrize("module", [numpy_target, triton_target], ids=["numpy", "triton"])
def test_a_printer_missing_an_operation_fails_at_import(
    module, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ops, "ELEMENT_OPS", (*ops.ELEMENT_OPS, "erfc"))
    with pytest.raises(ImportError, match=r"no entry for operation\(s\) erfc"):
        importlib.reload(module)
    monkeypatch.undo()
    importlib.reload(module)  # the real table: imports again


def test_a_printer_with_a_stray_operation_fails_at_import() -> None:
    with pytest.raises(ImportError, match=r"unknown operation\(s\) erfc"):
        ops.require("probe", {**dict.fromkeys(ops.ELEMENT_OPS), "erfc": None})


def test_spec_functions_and_the_linearizer_come_from_the_table() -> None:
    spec_level = {op.sympy for op in ops.OPS if op.sympy is not None}
    assert set(SUPPORTED_FUNCTIONS) | set(ops.RELATIONALS) | set(ops.HOST_ONLY) == spec_level
    lowered = set(Linearizer.UNARY) | set(Linearizer.RELATIONAL) | {sp.Max, sp.Min}
    assert lowered | {sp.Piecewise} | set(ops.HOST_ONLY) == spec_level


@pytest.mark.parametrize("op", [o for o in ops.OPS if not o.host_only], ids=lambda o: o.name)
def test_every_element_operation_has_a_reconstruction(op: ops.OpDef) -> None:
    a, b, c = sp.symbols("a b c", positive=True)
    args = (sp.Gt(a, b), b, c) if op.name == "where" else (a, b, c)[: op.arity]
    assert isinstance(ops.build(op.name, *args), sp.Basic)


# ------------------------------------------------------------- per-element functions, exactly
# Each new element function as a state of a probe rule (its gradient is the input), run through
# the generated NumPy module (float32, float64) and Triton kernel (float32), against the exact
# math at 60 digits (mpmath), rounded to the dtype. Fractional powers of a negative base are NaN
# (codegen/ops.py), -0.0 included as 0.
PROBE = '''"""Per-element functions, one state each."""
import sympy as sp
from codegen.spec import Rule, softplus
RULE = Rule("elemprobe", __doc__)
lr = RULE.hyper("lr", 0.1)
g = RULE.grad
FUNCTIONS = {
    "tanh_": sp.tanh(g),
    "softplus_": softplus(g),
    "cbrt_": g ** sp.Rational(1, 3),
    "two_thirds": g ** sp.Rational(2, 3),
    "four_thirds": g ** sp.Rational(4, 3),
    "two_fifths": g ** sp.Rational(2, 5),
    "fifth": g**5,
    "shifted_fifths": 3 * (g + 1) ** sp.Rational(2, 5),  # NumPy: pow in place of its base
}
for name, expr in FUNCTIONS.items():
    RULE.update(RULE.state(name, 0), expr)
RULE.update(RULE.weight, RULE.weight - lr * g)
'''


def _real(f: Any) -> Any:
    """``f`` of a base that must be nonnegative: NaN below 0 (fractional powers)."""
    return lambda b: mpmath.nan if b < 0 else f(b)


# name -> (exact value at x, exponent c of a fractional power or None, ulps allowed)
EXACT: dict[str, tuple[Any, Fraction | None, float]] = {
    "tanh_": (mpmath.tanh, None, 4),
    "softplus_": (lambda x: mpmath.log(1 + mpmath.exp(x)), None, 4),
    "cbrt_": (_real(mpmath.cbrt), None, 2),
    "two_thirds": (_real(lambda x: mpmath.cbrt(x) ** 2), None, 4),
    "four_thirds": (_real(lambda x: x * mpmath.cbrt(x)), None, 4),
    "two_fifths": (_real(lambda x: mpmath.power(x, mpmath.mpf(2) / 5)), Fraction(2, 5), 2),
    "fifth": (lambda x: x**5, None, 2),
    # 1 + x rounds first (half an ulp, times 2/5 after the power), the product last
    "shifted_fifths": (
        lambda x: 3 * _real(lambda b: mpmath.power(b, mpmath.mpf(2) / 5))(x + 1),
        Fraction(2, 5),
        4,
    ),
}
SPECIAL = [0.0, -0.0, 1.0, -1.0, 8.0, -8.0, 0.5, 1e-3, 3.7, 20.0, -20.0, 100.0, -100.0]
SPECIAL += [1e30, -1e30, 1e-40, np.nan, np.inf, -np.inf]


def exact(name: str, x: float) -> float:
    """The exact value at ``x`` as a double (NaN where the real function has none)."""
    function, _, _ = EXACT[name]
    if math.isnan(x):
        return math.nan
    mpmath.mp.dps = 60
    return float(function(mpmath.mpf(x)))


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with temporary_rule(tmp_path_factory.mktemp("probe"), "elemprobe", PROBE) as modules:
        yield modules


def inputs(dtype: Any) -> np.ndarray:
    rng = np.random.default_rng(5)
    random = rng.standard_normal(200) * np.exp(rng.uniform(-20, 20, 200))
    values = np.concatenate([np.array(SPECIAL), random]).astype(dtype)
    return values[np.isfinite(values) | ~np.isfinite(np.array(SPECIAL + list(random)))]


@pytest.mark.parametrize(
    ("backend", "dtype"),
    [("numpy", np.float32), ("numpy", np.float64), ("triton", np.float32)],
    ids=["numpy-float32", "numpy-float64", "triton-float32"],
)
def test_element_functions_match_the_exact_math(probe, backend: str, dtype: Any) -> None:
    import torch

    x = inputs(dtype)
    with np.errstate(all="ignore"):
        if backend == "numpy":
            w = np.zeros_like(x)
            state = probe["numpy"].init_state(w)
            probe["numpy"].step(w, x.copy(), state, 1)
            got = {k: np.asarray(v, dtype=np.float64) for k, v in state.items()}
        else:
            tw = torch.zeros(x.size)
            tstate = probe["triton"].init_state(tw)
            probe["triton"].step(tw, torch.from_numpy(x.copy()), tstate, 1)
            got = {k: v.numpy().astype(np.float64) for k, v in tstate.items()}
    for name, (_, c, ulps) in EXACT.items():
        with np.errstate(all="ignore"):  # overflow to inf when rounding to float32: wanted
            want = np.array([float(dtype(exact(name, float(v)))) for v in x])
            # a fractional exponent c the dtype rounds: x**c' = x**c * x**(c' - c)
            rounded = 0.0 if c is None else float(abs(Fraction(float(dtype(c))) - c))
            drift = rounded * np.abs(np.log(np.abs(x)))
            allowed = ulps * ulp(want, dtype) + np.abs(want) * np.nan_to_num(drift)
            bad = ~((np.abs(got[name] - want) <= allowed) | (got[name] == want))
        bad &= ~(np.isnan(got[name]) & np.isnan(want))
        assert not bad.any(), (
            f"{name} ({backend}, {np.dtype(dtype).name}): at x = {x[bad][:5]} got "
            f"{got[name][bad][:5]}, exact {want[bad][:5]}"
        )
        assert np.isnan(got[name][np.isnan(x)]).all(), name  # NaN stays NaN


def test_fractional_powers_of_negative_bases_are_nan_and_of_zeros_zero(probe) -> None:
    """The rule for negative bases (codegen/ops.py): NaN for every fractional exponent, -inf
    included, on both targets; -0.0 is not negative. Whole powers keep their sign."""
    import torch

    x = np.array([-8.0, -1e-30, -np.inf, -0.0, 0.0], np.float32)
    w = np.zeros_like(x)
    state = probe["numpy"].init_state(w)
    tw = torch.zeros(x.size)
    tstate = probe["triton"].init_state(tw)
    with np.errstate(all="ignore"):
        probe["numpy"].step(w, x.copy(), state, 1)
        probe["triton"].step(tw, torch.from_numpy(x.copy()), tstate, 1)
    for got in (state, {k: v.numpy() for k, v in tstate.items()}):
        for name in ("cbrt_", "two_thirds", "four_thirds", "two_fifths"):
            assert np.isnan(got[name][:3]).all(), (name, got[name])
            assert (got[name][3:] == 0).all(), (name, got[name])
        assert got["fifth"][0] == -32768.0 and got["fifth"][2] == -np.inf
        assert np.isnan(got["shifted_fifths"][[0, 2]]).all(), got["shifted_fifths"]


def test_a_fractional_power_in_place_of_its_base_guards_first(probe) -> None:
    """NumPy computes (g + 1)**(2/5) into the buffer of g + 1 (dead after): the NaN guard must
    read the base before the power overwrites it (the values: the tests above)."""
    source = Path(probe["numpy"].__file__).read_text()
    body = source[source.index("shifted_fifths_new = 3*(grad + 1)") :]
    guard, power = body.index("np.copyto(_b0, np.nan, where=_b0 < 0.0)"), body.index("np.power(")
    assert guard < power and "np.power(_b0, 0.4, out=_b0)" in body


def test_new_element_functions_lower_to_their_ops() -> None:
    """tanh and softplus are one op each; k/3 powers use cbrt, other fractions pow."""
    from conftest import RULES

    assert {op.name for op in ops.OPS if not op.host_only} >= {"tanh", "softplus", "cbrt", "pow"}
    kinds = {op.kind for op in lower(RULES["madgrad"]).ops}
    assert "cbrt" in kinds and "pow" not in kinds


def test_softplus_on_the_host_is_the_stable_form() -> None:
    """A host scalar with softplus (of a hyperparameter) prints max(x, 0) + log1p(exp(-|x|)):
    log(1 + exp(x)) to the last bits, without overflow at x = 1000."""
    from codegen.targets.host import host_code

    x = sp.Symbol("x", real=True)
    code = host_code(ops.softplus(x))
    f = eval(f"lambda x: {code}", {"math": math})
    for v in (-1000.0, -30.0, -1.0, -0.0, 0.0, 1e-300, 0.5, 30.0, 1000.0):
        mpmath.mp.dps = 60
        want = float(mpmath.log(1 + mpmath.exp(mpmath.mpf(v))))
        assert abs(f(v) - want) <= 2 * math.ulp(want), (v, f(v), want)
    assert ops.softplus(sp.Integer(0)) == sp.log(2)
    assert ops.exact(ops.softplus(x)) == sp.log(1 + sp.exp(x))


FLOAT_POWERS = '''"""Float exponents as a spec writes them in Python."""

import sympy as sp

from codegen.spec import Rule

RULE = Rule("float_powers", __doc__)
w, g = RULE.weight, RULE.grad
a = sp.Abs(g)
sq = RULE.update(RULE.state("sq", 0, doc="g**2.0"), g**2.0)
half = RULE.update(RULE.state("half", 0, doc="|g|**0.5"), a**0.5)
third = RULE.update(RULE.state("third", 0, doc="|g|**(1/3)"), a ** (1 / 3))
four = RULE.update(RULE.state("four", 0, doc="|g|**(4/3)"), a ** (4 / 3))
rest = RULE.update(RULE.state("rest", 0, doc="|g|**0.8"), a**0.8)
RULE.update(w, w - 0.1 * g)
'''


def test_a_float_exponent_that_is_a_whole_half_or_third_is_that_number(tmp_path: Path) -> None:
    """``g**2.0`` is g squared (a float exponent was a fractional power: NaN for g < 0),
    ``x**0.5`` the square root and Python's ``x**(1/3)``, ``x**(4/3)`` cube roots, as the
    README says; any other float exponent (0.8) stays a power."""
    from codegen.load import load_rule

    (tmp_path / "float_powers.py").write_text(FLOAT_POWERS)
    rule = load_rule(tmp_path / "float_powers.py")
    kinds = [op.kind for op in lower(rule).ops]
    assert kinds.count("pow") == 1 and kinds.count("cbrt") == 2 and "sqrt" in kinds
    with temporary_rule(tmp_path / "tree", "float_powers", FLOAT_POWERS) as modules:
        g = np.array([-2.0, -0.5, 0.5, 3.0], np.float32)
        w = np.zeros_like(g)
        state = modules["numpy"].init_state(w)
        modules["numpy"].step(w, g.copy(), state, 1)
    a = np.abs(g)
    np.testing.assert_array_equal(state["sq"], g * g)
    np.testing.assert_array_equal(state["half"], np.sqrt(a))
    np.testing.assert_array_equal(state["third"], np.cbrt(a))
    np.testing.assert_array_equal(state["four"], a * np.cbrt(a))
    np.testing.assert_allclose(state["rest"], a**0.8, rtol=1e-6)


BOOLEANS = '''"""Conditions joined per element."""

import sympy as sp

from codegen.spec import Rule

RULE = Rule("bool_probe", __doc__)
w, g = RULE.weight, RULE.grad


def flag(name, condition):
    return RULE.update(RULE.state(name, 0, doc=name), sp.Piecewise((1, condition), (0, True)))


flag("both", (g > 0) & (w > 0))
flag("three", (g > 0) & (w > 0) & (g < 2))
flag("either", (g > 0) | (w < -1))
flag("neither", ~((g > 0) | (w < -1)))
flag("zero", sp.Eq(g, 0))
flag("nonzero", sp.Ne(g, 0))
RULE.update(w, w - 0.1 * g)
'''


def test_and_or_eq_and_ne_conditions_run_per_element(tmp_path: Path) -> None:
    """``&``, ``|``, ``~``, ``Eq`` and ``Ne`` in a per-element Piecewise (before, refused: "And
    is not supported", "Not is not supported"): every target against NumPy's own comparisons,
    NaN included (a comparison with NaN is false, ``Ne`` true, ``~`` of a join Python's not)."""

    g = np.array([1.0, 1.0, -1.0, 0.0, -0.0, np.nan, 3.0, 1.0], np.float32)
    w = np.array([1.0, -2.0, -2.0, 1.0, 5.0, 1.0, 1.0, np.nan], np.float32)
    want = {
        "both": (g > 0) & (w > 0),
        "three": (g > 0) & (w > 0) & (g < 2),
        "either": (g > 0) | (w < -1),
        "neither": ~((g > 0) | (w < -1)),  # Python's not: true where g is NaN
        "zero": g == 0,
        "nonzero": g != 0,
    }
    with temporary_rule(tmp_path, "bool_probe", BOOLEANS) as modules:
        assert_masks(modules, w, g, want)


def assert_masks(modules: dict[str, Any], w: np.ndarray, g: np.ndarray, want: dict) -> None:
    """One step of each target's module from ``w`` and ``g``: each state is ``want``'s mask.
    NumPy joins masks with logical ops or in place, never ``np.where`` (a chunk's second mask)."""
    import torch

    assert "np.where(" not in inspect.getsource(modules["numpy"])
    for target in ("numpy", "numba", "triton"):
        if target == "numba":
            pytest.importorskip("numba")
        m = modules[target]
        weight = torch.from_numpy(w.copy()) if target == "triton" else w.copy()
        grad = torch.from_numpy(g.copy()) if target == "triton" else g.copy()
        state = m.init_state(weight)
        with np.errstate(invalid="ignore"):
            m.step(weight, grad, state, 1)
        for name, mask in want.items():
            got = np.asarray(state[name])
            np.testing.assert_array_equal(got, mask.astype(np.float32), f"{target} {name}")


FOLDED = '''"""A condition SymPy folds into a Piecewise of Boolean constants."""

import sympy as sp

from codegen.spec import Rule

RULE = Rule("folded_probe", __doc__)
w, g = RULE.weight, RULE.grad
used = sp.Piecewise((0, w < 0), (g, True))
moved = RULE.state("moved", 0, doc="used != 0")
RULE.update(moved, sp.Piecewise((1, sp.Abs(used) > 0), (0, True)))
kept = RULE.state("kept", 0, doc="g >= 1 or w < 0")
RULE.update(kept, sp.Piecewise((1, sp.Piecewise((True, w < 0), (g >= 1, True))), (0, True)))
RULE.update(w, w - 0.1 * g)
'''


def test_a_condition_folded_into_boolean_constants_runs_per_element(tmp_path: Path) -> None:
    """``Abs(Piecewise((0, w < 0), (g, True))) > 0`` is ``Piecewise((False, w < 0), (|g| > 0,
    True))`` to SymPy (refused before: "BooleanFalse is not supported"); a True branch alike;
    every target against NumPy's own comparisons, NaN included."""

    g = np.array([1.0, 1.0, 0.0, np.nan, 2.0, np.nan], np.float32)
    w = np.array([1.0, -1.0, 1.0, 1.0, -3.0, -1.0], np.float32)
    want = {
        "moved": np.where(w < 0, False, np.abs(g) > 0),
        "kept": np.where(w < 0, True, g >= 1),
    }
    from codegen.load import load_rule

    (tmp_path / "folded_probe.py").write_text(FOLDED)
    constants = [
        op.kind
        for op in lower(load_rule(tmp_path / "folded_probe.py")).ops
        if op.kind in ("ge", "ne") and op.args[0] == op.args[1]
    ]
    assert sorted(constants) == ["ge", "ne"]  # a True and a False branch, made from a mask
    with temporary_rule(tmp_path / "tree", "folded_probe", FOLDED) as modules:
        assert_masks(modules, w, g, want)


def test_f32_rounds_to_float32_as_numpy_on_the_host() -> None:
    """The spec function ``f32`` (host-only; ``host_f32`` at run time): the nearest float32,
    ties to even, NaN and inf kept; a finite value float32 cannot hold (past its range, or
    nonzero and rounding to 0) kept as it is, for the kernel's scalar check to refuse (an inf or
    a 0 would pass it); exact on integers float32 holds. The 40-digit reference's ``f32`` alike."""
    import math

    import mpmath
    import numpy as np
    from reference import MODULES

    from codegen.ops import f32
    from optgen_runtime.common import host_f32

    reference = MODULES[0]["f32"]
    for x in [0.1, 1 - float(np.float32(0.999)), 3.4028235e38, 2**-149, 0.0, math.inf]:
        assert host_f32(x) == float(np.float32(x)) == reference(mpmath.mpf(x)), x
    for x in [3.5e38, -1e39, 1e300, 1e-46, -1e-300]:  # float32: inf or 0
        assert host_f32(x) == x == reference(mpmath.mpf(x)), x
    assert math.isnan(host_f32(math.nan)) and math.copysign(1, host_f32(-0.0)) == -1
    # host_scalars_rows' column form, entry by entry the same bits
    from optgen_runtime.columns import rows_f32

    column = [0.1, 3.4028235e38, 3.5e38, -1e39, 1e-46, 2**-149, -0.0, math.inf, math.nan, 1e300]
    got = rows_f32(np.array(column))
    for x, y in zip(column, got, strict=True):
        want = host_f32(x)
        assert (math.isnan(y) and math.isnan(want)) or (
            y == want and math.copysign(1, y) == math.copysign(1, want)
        ), x
    assert f32(sp.Integer(1)) == 1 and isinstance(f32(sp.Symbol("b")), f32)
