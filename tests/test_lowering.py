"""The lowered form (host scalars + three-address ops) equals the raw equations, symbolically."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from conftest import ALL_RULES, RULES

from codegen.lower import PASSES, _keep_quotients, lower, reconstruct
from codegen.variants import variants
from tools.op_counts import GOLDEN


def raw_outputs(rule):
    """Substitute the raw equations into each other, in declaration order, independently.

    A reduction stays a symbol (one number per tensor); its entry is its summand.
    """
    values: dict[sp.Symbol, sp.Expr] = {}
    summands: dict[sp.Symbol, sp.Expr] = {}
    pending = list(rule.equations)
    while pending:
        waiting = {e.target for e in pending}
        ready = [eq for eq in pending if not (eq.expr.free_symbols & waiting)]
        assert ready, "cycle"
        for eq in ready:
            if eq.target in rule.reductions:
                summands[eq.target] = eq.expr.xreplace(values)
                values[eq.target] = eq.target
            else:
                values[eq.target] = eq.expr.xreplace(values)
            pending.remove(eq)
    return {**values, **summands}


def test_lowered_equals_raw_equations(rule_name: str) -> None:
    rule = RULES[rule_name]
    lowered = lower(rule)
    raw = raw_outputs(rule)
    rebuilt = reconstruct(lowered)
    expected = {rule.weight_new} | {s.new for s in rule.states.values()} | set(rule.reductions)
    assert set(rebuilt) == expected
    for new, expr in rebuilt.items():
        for case in choice_cases(rule):
            # (doit: as_is's unevaluated operands as their values)
            difference = sp.simplify(sp.piecewise_fold((expr - raw[new]).doit().xreplace(case)))
            assert difference == 0, f"{new} at {case}: {difference}"


def choice_cases(rule) -> list[dict[sp.Symbol, sp.Integer]]:
    """Each combination of the choice hyperparameters' values (their indices, as the host passes
    them), or one empty case: proved value by value, SymPy's simplification of one Piecewise
    over all of them (LBSGD's strategies under its momentum and macro-batch conditions) can
    leave a difference that no single value has."""
    choices = [h for h in rule.hypers.values() if h.legal.choices]
    return [
        {h.symbol: sp.Integer(i) for h, i in zip(choices, combo, strict=True)}
        for combo in itertools.product(*(range(len(h.legal.choices)) for h in choices))
    ]


def test_every_op_is_per_element(rule_name: str) -> None:
    """Work that depends only on hyperparameters and t never reaches the kernel."""
    lowered = lower(RULES[rule_name])
    host = set(lowered.host)
    for op in lowered.ops:
        element_args = [a for a in op.args if isinstance(a, sp.Symbol) and a not in host]
        # copies may broadcast a scalar; "ne" turns a host condition into a mask
        assert element_args or op.kind in ("copy", "ne"), op
    for scalar in lowered.host:
        assert lowered.host_value(scalar).free_symbols <= set(RULES[rule_name].scalar_inputs)


def test_lowering_is_deterministic(rule_name: str) -> None:
    first, second = lower(RULES[rule_name]), lower(RULES[rule_name])
    assert first.ops == second.ops and first.host == second.host


def test_adam_op_counts_are_pinned() -> None:
    """One CSE over all outputs: the clipped gradient is computed once, used by both moments."""
    lowered = lower(RULES["adam"])
    assert lowered.op_counts() == {
        "add": 5, "div": 1, "max": 1, "min": 1, "mul": 8, "sqrt": 1
    }  # fmt: skip
    assert sp.Symbol("t", positive=True, integer=True) not in {
        a for op in lowered.ops for a in op.args
    }
    bias = [s for s in lowered.host if RULES["adam"].t in lowered.host_value(s).free_symbols]
    assert len(bias) == 1  # lr * sqrt(1 - beta2^t) / (1 - beta1^t), once per step on the host


def test_op_counts_are_pinned(rule_name: str) -> None:
    """Each pass's op counts per role, for every rule, against tests/goldens/op_counts.json
    (re-record with ``python -m tools.op_counts --write`` after an intended change)."""
    golden = json.loads(GOLDEN.read_text())
    if rule_name not in golden:
        pytest.skip(f"{rule_name} is not pinned yet: python -m tools.op_counts --write")
    assert dict(lower(RULES[rule_name]).report) == golden[rule_name]


VARIANTS = {v.name: v for rule in RULES.values() for v in variants(rule)}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_op_counts_are_pinned(variant: str) -> None:
    """Each variant's counts too (special cases, those without absent states): they were not
    checked until 2026-12-06, and eight of the recorded ones had gone stale."""
    golden = json.loads(GOLDEN.read_text())
    assert dict(lower(VARIANTS[variant]).report) == golden[variant]


def test_the_op_counts_golden_holds_only_rules_and_variants() -> None:
    golden = json.loads(GOLDEN.read_text())
    assert set(golden) <= set(ALL_RULES) | set(VARIANTS)


def test_no_shared_reciprocal_is_multiplied_in(rule_name: str) -> None:
    """A quotient is one division: no operation computes ``1/x`` for a product to use (CSE
    shares ``1/x`` between ``y/x`` and ``z/x`` unless ``_keep_quotients`` puts it back: torch_nadam,
    torch_rmsprop_no_decay and adan had one)."""
    ops = lower(RULES[rule_name]).ops
    reciprocals = {op.dest for op in ops if op.kind == "div" and op.args[0] == 1}
    used = [op for op in ops if op.kind == "mul" and reciprocals & set(op.args)]
    assert not used, used


def test_a_shared_reciprocal_is_put_back_as_divisions() -> None:
    """``_keep_quotients`` on CSE's own output: ``y/(a+b)`` and ``z/(a+b)`` are two divisions
    by one temporary ``a + b``; ``1/a`` of a plain symbol needs no temporary."""
    a, b, y, z = sp.symbols("a b y z", real=True)
    replacements, reduced = sp.cse(
        [y / (a + b), z / (a + b)], symbols=sp.numbered_symbols("_t", real=True)
    )
    assert replacements[0][1] == 1 / (a + b)  # what CSE makes
    kept, exprs = _keep_quotients(replacements, reduced)
    t = kept[0][0]
    assert kept == [(t, a + b)] and exprs == [y / t, z / t]
    replacements, reduced = sp.cse([y / a + 1, z / a], symbols=sp.numbered_symbols("_t"))
    kept, exprs = _keep_quotients(replacements, reduced)
    assert not any(e == 1 / a for _, e in kept) and exprs == [y / a + 1, z / a]


def test_passes_run_in_order_and_report() -> None:
    lowered = lower(RULES["lamb"])
    assert [name for name, _ in lowered.report] == ["spec", *(name for name, _ in PASSES)]
    assert lowered.block.stage == "traced"
    roles = {a.role for a in lowered.block.assigns}
    assert roles == {"host", "reduction", "element"}
    # every element and reduction assignment is an operation from the table
    assert all(a.op is not None for a in lowered.block.assigns if a.role != "host")


CHAIN = '''"""A chain of host schedules, each let using the one before twice."""
import sympy as sp
from codegen.spec import Rule
RULE = Rule("chain", __doc__)
lr = RULE.hyper("lr", 0.1)
b = RULE.hyper("b", 0.9)
w, g, t = RULE.weight, RULE.grad, RULE.t
m = RULE.state("m", 0)
h = lr
for k in range(40):
    h = RULE.let(f"h{k}", h * (1 - b**t) / (1 + sp.sqrt(t + k)) + sp.cos(t * (k + 1)) * h)
m_new = RULE.update(m, b * m + (1 - b) * g * h)
RULE.update(w, w - h * m_new)
'''


def test_a_chain_of_host_lets_stays_linear(tmp_path) -> None:
    """Issue 10, generator bug 4: inlined lets share subtrees, and SymPy's free_symbols,
    count_ops and evaluation walked them expanded (2**40 nodes here; 8 lets took 43 s). The
    host code computes each let once, by name: the module grows with the chain, linearly."""
    from conftest import temporary_rule

    with temporary_rule(tmp_path, "chain", CHAIN) as modules:
        source = Path(modules["rules"].__file__).read_text()
        assert source.count("\n    h39 = ") == 1 and len(source.splitlines()) < 400
        w = np.ones(5)
        modules["numpy"].step(w, np.ones(5), modules["numpy"].init_state(w), 3)
        assert np.isfinite(w).all()


CONSTANT_LET = '''"""A let that is one constant at the naming points (their inputs are positive)."""

import sympy as sp

from codegen.spec import Rule

RULE = Rule("naming_probe", __doc__)
w, g = RULE.weight, RULE.grad
gate = RULE.state("gate", 0, doc="w where g <= 0")
RULE.update(gate, sp.Piecewise((0, g > 0), (1, True)) * w)
z = RULE.let("z", sp.Piecewise((0, g > 0), (g, True)))
RULE.update(w, w - 0.5 * z)
'''


def test_a_let_constant_at_the_naming_points_names_only_itself(tmp_path: Path) -> None:
    """Values are named by comparing them with the lets at two random points; ``z`` is 0 at
    both, and so was ``where(g > 0, 0, 1)``, which took its name (Rprop's and CAME's kernels
    had such misnamed temporaries). Such a let now names only a value that is its expression."""
    from codegen.load import load_rule

    (tmp_path / "naming_probe.py").write_text(CONSTANT_LET)
    ops = lower(load_rule(tmp_path / "naming_probe.py")).ops
    named = [op for op in ops if op.dest.name == "z"]
    assert len(named) == 1
    assert named[0].kind == "where" and named[0].args[1:] == (0, sp.Symbol("grad", real=True))


@pytest.mark.parametrize("rule_name", ["torch_adam", "torch_adadelta", "adadelta"])
def test_as_is_operands_are_computed_first(rule_name: str) -> None:
    """``as_is((1 - beta2) * G) * G`` (torch's addcmul_) never forms G * G, and Adadelta's
    ``as_is((1 - rho) * delta) * delta`` keeps delta one value, not SymPy's expansion of
    delta**2, a * G**2 / b (two divisions): no op squares a value, one op divides."""
    lowered = lower(RULES[rule_name])
    squares = [op for op in lowered.ops if op.kind == "mul" and op.args[0] == op.args[1]]
    assert not squares
    assert sum(op.kind == "div" for op in lowered.ops) == 1
