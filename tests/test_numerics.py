"""Special values: a backend-coverage expression set, zero gradients, NaN propagation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
import torch
from conftest import (
    RULE_NAMES,
    RULES,
    numpy_module,
    step_inputs,
    temporary_rule,
    tolerance,
    triton_module,
)
from derived import uses_sign
from reference import MODULES, spec_trajectory

COVERAGE_SPEC = '''
"""Backend coverage: one of every supported construct, pushed through every printer."""
import sympy as sp
from codegen.spec import Rule
RULE = Rule("coverage", __doc__)
a = RULE.hyper("a", 0.5)
w, g = RULE.weight, RULE.grad
s = RULE.state("s", 0)
RULE.update(s, sp.sign(g) + 2 * sp.Abs(g) + sp.Max(g, a) - sp.Min(g, -a) + g**3 / 4)
RULE.update(
    w,
    sp.Piecewise((sp.sqrt(sp.Abs(g)) + sp.exp(-g * g), g > a), (sp.log(1 + g * g), True))
    + sp.Rational(1, 3) * w,
)
'''

SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.25, -3.5, math.nan, math.inf, -math.inf, 1e-30]


@pytest.fixture(scope="module")
def coverage(tmp_path_factory: pytest.TempPathFactory):
    """The coverage spec generated into a temp dir, importable as generated.<target>.coverage."""
    with temporary_rule(tmp_path_factory.mktemp("coverage"), "coverage", COVERAGE_SPEC) as modules:
        yield [modules["numpy"], modules["triton"]]


def reference(g: float) -> tuple[float, float]:
    """The coverage equations in plain Python floats (w starts at 0.75, a = 0.5)."""
    sign = math.copysign(0.0, g) if g == 0 else (math.nan if math.isnan(g) else math.copysign(1, g))
    maximum = math.nan if math.isnan(g) else max(g, 0.5)
    minimum = math.nan if math.isnan(g) else min(g, -0.5)
    with np.errstate(all="ignore"):
        s = sign + 2 * abs(g) + maximum - minimum + np.float64(g) ** 3 / 4
        w = (
            math.sqrt(abs(g)) + math.exp(-g * g)
            if g > 0.5
            else float(np.log(1 + np.float64(g) * g))
        ) + 0.75 / 3
    if math.isnan(g):
        w = math.nan
    return float(s), float(w)


def test_every_construct_at_special_values(coverage) -> None:
    numpy_mod, triton_mod = coverage
    g = np.array(SPECIAL)
    w = np.full_like(g, 0.75)
    state = numpy_mod.init_state(w)
    with np.errstate(all="ignore"):
        numpy_mod.step(w, g.copy(), state, 1)
    tw = torch.full((len(g),), 0.75)
    tstate = triton_mod.init_state(tw)
    triton_mod.step(tw, torch.tensor(g, dtype=torch.float32), tstate, 1)
    f64, f32 = tolerance(np.float64), tolerance(np.float32, scale=0.0)  # no value is near 0
    for i, x in enumerate(SPECIAL):
        want_s, want_w = reference(x)
        np.testing.assert_allclose(state["s"][i], want_s, **f64, err_msg=f"s at g={x}")
        np.testing.assert_allclose(w[i], want_w, **f64, err_msg=f"w at g={x}")
        np.testing.assert_allclose(
            tstate["s"][i].item(), want_s, **f32, err_msg=f"triton s at g={x}"
        )
        np.testing.assert_allclose(tw[i].item(), want_w, **f32, err_msg=f"triton w at g={x}")


def test_sympy_sign_is_zero_at_zero_and_nan_at_nan(coverage) -> None:
    """``sp.sign`` (torch's sign, used by lion): 0 at 0, NaN stays NaN, on both targets.

    MXNet's comparison sign (signsgd, signum) is ``codegen.mxnet.mxnet_sign``: see below.
    """
    numpy_mod, triton_mod = coverage
    g = np.array([0.0, math.nan, 2.0, -2.0])
    w = np.zeros(4)
    state = numpy_mod.init_state(w)
    numpy_mod.step(w, g.copy(), state, 1, a=100.0)  # Max/Min then pass 100/-100 through
    tw = torch.zeros(4)
    tstate = triton_mod.init_state(tw)
    triton_mod.step(tw, torch.tensor(g, dtype=torch.float32), tstate, 1, a=100.0)
    expected_sign = np.array([0.0, math.nan, 1.0, -1.0])
    got = state["s"] - (2 * np.abs(g) + 100.0 + 100.0 + g**3 / 4)
    scale = np.nanmax(np.abs(state["s"]))  # got cancels s's terms: as accurate as |s|
    np.testing.assert_allclose(got, expected_sign, **tolerance(np.float64, scale=scale))
    np.testing.assert_allclose(tstate["s"].numpy(), state["s"], **tolerance(np.float32))


W0 = 0.75
# One step from w = W0 (states at their initial value) for the gradients 0, NaN, 2, -2: the weight
# each rule's documented equations give, computed here by hand.
#   signsgd: w - lr * (wd + wd_lh) * w - lr * sign(g), MXNet's sign: (g > 0) - (g < 0), so 0 for a
#            0 and for a NaN gradient (the weight is only decayed).
#   signum:  mom = -(1 - momentum) * g (wd = 0, so a zero gradient gives mom = 0 exactly), then
#            (1 - lr * wd_lh) * w + lr * sign(mom), MXNet's sign again: NaN mom -> only decayed.
#   lion:    c = (1 - beta1) * g, w - lr * (sign(c) + wd * w) with torch's sign: NaN stays NaN.
#   ftrl:    z = g - |g| * w / lr (n = 0), then -sign(z) max(|z| - lamda1, 0) / ((beta + |g|) / lr
#            + wd): 0 for g = 0; NaN for NaN, as MXNet's (sign(z) lamda1 - z) / (...) * [|z| >
#            lamda1] (its sign gives 0, but NaN * 0 is NaN).
#   The hyperparameters are binary fractions: MXNet's rules take theirs as float32 (``f32`` in
#   signum's spec), which these float64 expectations then need not model.
_LR, _WD, _WD_LH = 0.125, 0.25, 0.0625
SIGN_CASES: dict[str, tuple[dict[str, float], list[float]]] = {
    "signsgd": (
        dict(lr=_LR, wd=_WD, wd_lh=_WD_LH),
        [(1 - _LR * (_WD + _WD_LH)) * W0 + d for d in (0.0, 0.0, -_LR, _LR)],
    ),
    "signum": (
        dict(lr=_LR, wd=0.0, wd_lh=_WD_LH, momentum=0.9),
        [(1 - _LR * _WD_LH) * W0 + d for d in (0.0, 0.0, -_LR, _LR)],
    ),
    "lion": (
        dict(lr=_LR, wd=_WD),
        [W0 - _LR * (s + _WD * W0) for s in (0.0, math.nan, 1.0, -1.0)],
    ),
    "ftrl": (
        dict(lr=_LR, wd=_WD, lamda1=0.5, beta=1.0),
        [0.0, math.nan]
        + [
            -math.copysign(abs(z) - 0.5, z) / ((1 + 2) / _LR + _WD)
            for z in (2 - 2 * W0 / _LR, -2 - 2 * W0 / _LR)
        ],
    ),
}


def test_every_sign_rule_has_a_sign_case() -> None:
    """The hand-computed cases above are rules that take a sign; every rule that takes one (a new
    spec too) is checked against its own equations by test_sign_at_zero_and_nan_matches_equations.
    """
    assert set(SIGN_CASES) <= {n for n, r in RULES.items() if uses_sign(r)}


SIGN_RULES = [name for name in RULE_NAMES if uses_sign(RULES[name])]
SIGN_GRADS = [0.0, math.nan, 2.0, -2.0]


def _sign_arguments(rule) -> list:
    """(arguments, mpmath function) of each sign in the rule's equations."""
    nodes = {
        n for eq in rule.equations for n in sp.preorder_traversal(eq.expr) if n.func == sp.sign
    }
    out = []
    for node in sorted(nodes, key=str):
        args = sorted(node.args[0].free_symbols, key=str)
        out.append((args, sp.lambdify(args, node.args[0], modules=MODULES)))
    return out


@pytest.mark.parametrize("target", ["numpy", "triton"])
@pytest.mark.parametrize("rule_name", SIGN_RULES)
def test_sign_at_zero_and_nan_matches_equations(rule_name: str, target: str) -> None:
    """Every rule that takes a sign, one step from w = W0 with the gradients 0, NaN, 2, -2, at its
    defaults and at each of its spec's RULE.test_case settings: weight and states are what the
    spec's equations give at 40 digits (NaN exactly where they give NaN; SymPy's sign keeps a NaN,
    MXNet's counts it as 0), and in one of these settings some sign's argument is exactly 0."""
    rule = RULES[rule_name]
    signs = _sign_arguments(rule)
    zero_seen = []

    def record(env) -> None:
        for args, f in signs:
            value = f(*(env[a] for a in args))
            zero_seen.append(value == 0)

    for hp in [{}] + [dict(case.hyperparams) for case in rule.test_cases]:
        want = spec_trajectory(rule, np.full(4, W0), [np.array(SIGN_GRADS)], hp, on_element=record)
        if target == "numpy":
            module, w, grad = numpy_module(rule_name), np.full(4, W0), np.array(SIGN_GRADS)
        else:
            module, w = triton_module(rule_name), torch.full((4,), W0)
            grad = torch.tensor(SIGN_GRADS, dtype=torch.float32)
        dtype = np.float64 if target == "numpy" else np.float32
        # the setting's initial values (``RULE.state("v", initial_accumulator_value)``) and
        # the rule's step inputs, as the equations above take them
        state = module.init_state(
            w, **{k: v for k, v in hp.items() if k in module.INIT_HYPERPARAMS}
        )
        with np.errstate(invalid="ignore"):
            module.step(w, grad, state, 1, **hp, **step_inputs(module, w, 1))
        for name, value in [("weight", w), *state.items()]:
            got = np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value, np.float64)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want[0][name]), err_msg=name)
            np.testing.assert_allclose(
                got, want[0][name], **tolerance(dtype), err_msg=f"{rule_name} {target} {name} {hp}"
            )
    assert any(zero_seen), f"{rule_name}: no sign argument is 0 at a zero gradient"


@pytest.mark.parametrize("target", ["numpy", "triton"])
@pytest.mark.parametrize("rule", sorted(SIGN_CASES))
def test_sign_at_zero_and_nan(rule: str, target: str) -> None:
    """sign(0) = 0 in every rule; a NaN counts as 0 in MXNet's signsgd/signum, NaN in lion."""
    hp, expected = SIGN_CASES[rule]
    g = np.array([0.0, math.nan, 2.0, -2.0])
    if target == "numpy":
        module, w, grad = numpy_module(rule), np.full(4, W0), g.copy()
    else:
        module, w, grad = triton_module(rule), torch.full((4,), W0), torch.tensor(g).float()
    state = module.init_state(w)
    with np.errstate(invalid="ignore"):
        module.step(w, grad, state, 1, **hp)
    got = w if target == "numpy" else w.numpy()
    rtol = 4 * np.finfo(got.dtype).eps  # a couple of roundings of the same formula
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=0, err_msg=f"{rule} {target}")
    assert np.isnan(got[1]) == math.isnan(expected[1])


@pytest.mark.parametrize("target", ["numpy", "triton"])
def test_zero_gradients_stay_finite(rule_name: str, target: str) -> None:
    """Rules that divide by accumulated statistics survive many all-zero gradients."""
    module = numpy_module(rule_name) if target == "numpy" else triton_module(rule_name)
    make = np.zeros if target == "numpy" else (lambda n: torch.zeros(n))
    w = make(33) + 0.5
    state = module.init_state(w)
    for t in range(1, 201):  # per-element inputs (a Hessian estimate) all zero too
        zeros = {k: make(33) for k in module.INPUTS}
        module.step(w, make(33), state, t, **{**step_inputs(module, w, t), **zeros})
    values = [w] + [state[s] for s in module.STATES]
    assert all(np.all(np.isfinite(np.asarray(v))) for v in values)


def test_nan_gradient_propagates_the_same_way(rule_name: str) -> None:
    rng = np.random.default_rng(9)
    g = rng.standard_normal(40).astype(np.float32)
    g[[3, 17]] = np.nan
    w = rng.standard_normal(40).astype(np.float32)
    w0 = w.copy()
    npm, trm = numpy_module(rule_name), triton_module(rule_name)
    tw = torch.tensor(w)
    nstate, tstate = npm.init_state(w), trm.init_state(tw)
    with np.errstate(invalid="ignore"):
        for t in range(1, 4):
            extra = step_inputs(npm, w, t)
            textra = {k: torch.tensor(v) for k, v in extra.items()}
            if npm.HOST_STATES and npm.REDUCTIONS:  # a host state fed by a NaN sum: refused
                try:
                    npm.step(w, g.copy(), nstate, t, **extra)
                except ValueError as error:
                    assert "would make host state" in str(error) and np.array_equal(w, w0)
                    with pytest.raises(ValueError, match="would make host state"):
                        trm.step(tw, torch.tensor(g), tstate, t, **textra)
                    assert np.array_equal(tw.numpy(), w0)
                    return
            else:
                npm.step(w, g.copy(), nstate, t, **extra)
            trm.step(tw, torch.tensor(g), tstate, t, **textra)
    for name, ours, theirs in [("weight", w, tw)] + [(s, nstate[s], tstate[s]) for s in npm.STATES]:
        np.testing.assert_array_equal(np.isnan(theirs.numpy()), np.isnan(ours), err_msg=name)
        np.testing.assert_allclose(theirs.numpy(), ours, **tolerance(np.float32, 3), err_msg=name)
    # Whether a NaN gradient reaches the weight is the equations' answer at 40 digits: MXNet's
    # sign counts a NaN (signsgd, signum: the weight is only decayed), LAMB's norm spreads it.
    want = spec_trajectory(RULES[rule_name], w0.astype(np.float64), [g.astype(np.float64)] * 3, {})
    expected = np.isnan(want[-1]["weight"])
    np.testing.assert_array_equal(np.isnan(w), expected, err_msg="weight")


@pytest.mark.parametrize("target", ["numpy", "triton"])
def test_rmsprop_centered_keeps_epsilon_when_gamma1_is_zero(target: str) -> None:
    """gamma1 = 0 (legal) makes n - g**2 exactly 0 in float32: epsilon must be added to that
    difference, as the spec writes it (n - g^2 + epsilon) and MXNet computes it. Added to n first
    ((epsilon + n) - g^2), it is lost and the step divides by zero (the weights went to +-inf)."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal(4096).astype(np.float32)
    hp = dict(gamma1=0.0, epsilon=1e-8, lr=1e-3)
    module = (
        numpy_module("rmsprop_centered") if target == "numpy" else triton_module("rmsprop_centered")
    )
    weight = w.copy() if target == "numpy" else torch.from_numpy(w.copy())
    state = module.init_state(weight)
    for t in range(1, 4):
        g = rng.standard_normal(4096).astype(np.float32)
        module.step(weight, g if target == "numpy" else torch.from_numpy(g), state, t, **hp)
    out = weight if target == "numpy" else weight.numpy()
    assert np.isfinite(out).all()
    # each step moves by at most lr * |G| / sqrt(epsilon) (delta accumulates over 3 steps)
    assert np.abs(out - w).max() < 3 * 1e-3 * 5 / 1e-4 + 1


def test_sums_add_the_host_term_last() -> None:
    """The lowering's one reassociation rule: in a sum, per-element terms first, the host-only
    term last. Every add/sub whose operand is a host scalar ends its chain."""
    from codegen.lower import lower

    for rule in RULES.values():
        lowered = lower(rule)
        host = set(lowered.host)
        for ops_ in (lowered.ops, lowered.reduce_ops):
            users = {}
            for op in ops_:
                for a in op.args:
                    users.setdefault(a, []).append(op)
            for op in ops_:
                if op.kind in ("add", "sub") and op.args[0] in host:
                    # a host scalar may start a chain only when no element term is added to it
                    assert not any(u.kind in ("add", "sub") for u in users.get(op.dest, [])), (
                        rule.name,
                        op,
                    )


def test_lamb_one_nan_gradient_element_makes_the_whole_tensor_nan() -> None:
    """As LAMB's docstring says: the norm of u is NaN, so the trust ratio and every weight are."""
    module = numpy_module("lamb")
    w = np.linspace(-1, 1, 100, dtype=np.float32)
    g = np.full(100, 0.1, dtype=np.float32)
    g[7] = np.nan
    state = module.init_state(w)
    with np.errstate(invalid="ignore"):
        module.step(w, g, state, 1)
    assert np.isnan(w).all()
