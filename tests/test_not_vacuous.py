"""The equation tests test something: weights move, and every branch of every rule is taken.

A random setting under which the weight never changes (an LBSGD macro-batch that never completes)
makes the 40-digit comparison in test_symbolic.py pass vacuously; a Piecewise branch that none of
its settings reaches is never compared with the equations at all. These tests replay exactly the
settings test_symbolic.py uses (derived from each spec's declarations by tests/derived.py, plus
the spec's own ``RULE.test_case`` settings), and data cases for branches only special values
reach (zero gradients, zero weights), which are compared with the equations too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import sympy as sp
from conftest import RULES, numpy_module, tolerance
from derived import SPECIAL_DATA, STEPS, frozen_states, variant_data, variants
from reference import MODULES, spec_trajectory
from test_symbolic import case, max_rel_error, run_numpy

SEEDS = (0, 1)  # test_symbolic.test_numpy_float64_matches_equations
# States that stay constant by design under the random settings, and where they move instead.
CONSTANT: dict[tuple[str, str], str] = {
    (
        "madgrad",
        "x0",
    ): "the origin: moves only with momentum = 0 (RULE.test_case in specs/madgrad.py)",
    ("torch_asgd", "mu"): "1 until t > t0 (torch's default 1e6; RULE.test_case in the spec)",
}


def _assert_moves(rule_name: str, hp: dict, w0: np.ndarray, grads: list[np.ndarray]) -> None:
    """Within the steps tested, every element of the weight and of every state the setting does
    not freeze (``derived.frozen_states``) changes."""
    module = numpy_module(rule_name)
    history = run_numpy(module, w0, grads, hp)
    init = module.init_state(w0.copy(), **hp)
    assert len(history) == len(grads) >= STEPS
    moved = np.zeros(w0.shape, dtype=bool)
    for snapshot in history:
        moved |= snapshot["weight"] != w0
    assert moved.all(), f"{rule_name}: weight elements {np.flatnonzero(~moved)} never move ({hp})"
    frozen = frozen_states(RULES[rule_name], hp)
    for name, start in init.items():
        if name in frozen or (rule_name, name) in CONSTANT:
            continue
        changed = np.zeros(np.shape(start), dtype=bool)
        for snapshot in history:
            changed |= snapshot[name] != start
        assert np.all(changed), f"{rule_name}: state {name} never changes ({hp})"


@pytest.mark.parametrize("seed", SEEDS)
def test_random_settings_move_every_weight_and_state(rule_name: str, seed: int) -> None:
    _, hp, w0, grads = case(rule_name, seed)
    _assert_moves(rule_name, hp, w0, grads)


def test_flag_and_choice_settings_move_every_weight_and_state(rule_name: str) -> None:
    """The derived settings with another value of a flag or choice move as the random ones do,
    and every state moves in some derived setting (none is frozen everywhere)."""
    rule = RULES[rule_name]
    derived = [(hp, steps) for label, hp, steps in variants(rule) if "=" in label]
    for hp, steps in derived:
        _assert_moves(rule_name, hp, *variant_data(steps))
    settings = [case(rule_name, seed)[1] for seed in SEEDS] + [hp for hp, _ in derived]
    news = {eq.target: eq.expr for eq in rule.equations}
    for name, st in rule.states.items():
        if news[st.new] == st.symbol:  # constant by declaration (Prodigy's initial weight p0)
            continue
        assert any(name not in frozen_states(rule, hp) for hp in settings), (
            f"{rule_name}: state {name} is frozen in every setting"
        )


@pytest.mark.parametrize("data", SPECIAL_DATA, ids=[d.__name__ for d in SPECIAL_DATA])
def test_special_data_match_equations(rule_name: str, data: Any) -> None:
    """At the defaults, data random normal values cannot produce (exact zeros: MXNet's sign of a
    zero gradient, a zero gradient or weight norm) give the equations' values too."""
    w0, grads = data(np.random.default_rng(11))
    reference = spec_trajectory(RULES[rule_name], w0, grads, {})
    history = run_numpy(numpy_module(rule_name), w0, grads, {})
    assert max_rel_error(history, reference) < tolerance(np.float64, STEPS)["rtol"]


def _settings(rule_name: str) -> list[tuple[dict[str, Any], np.ndarray, list[np.ndarray]]]:
    """Every (hyperparameters, w0, gradients) the equation tests run for this rule."""
    out = [case(rule_name, seed)[1:] for seed in SEEDS]
    out.append(case(rule_name, 2, {})[1:])  # test_defaults_match_equations
    for _, hp, steps in variants(RULES[rule_name]):  # test_variant_settings_match_equations
        out.append((hp, *variant_data(steps)))
    for data in SPECIAL_DATA:  # test_special_data_match_equations
        out.append(({}, *data(np.random.default_rng(11))))
    return out


def test_every_flag_choice_and_none_is_tested(rule_name: str) -> None:
    """Flags and choices take each of their values, optional hyperparameters are both None and
    set, in the settings the equation tests run (flags enter as 0/1 factors, not branches)."""
    rule = RULES[rule_name]
    settings = [hp for hp, _, _ in _settings(rule_name)]
    for h in rule.hypers.values():
        seen = {hp.get(h.name, h.default) for hp in settings}
        if h.legal.flag:
            assert seen == {True, False}, f"{rule_name}: flag {h.name} only {seen}"
        elif h.legal.choices:
            assert seen == set(h.legal.choices), f"{rule_name}: {h.name} only {seen}"
        elif h.legal.allow_none:
            assert None in seen and len(seen) > 1, f"{rule_name}: {h.name} only {seen}"


class BranchRecorder:
    """Which branch of each Piecewise the equations take, following only the branches taken."""

    def __init__(self, rule: Any) -> None:
        self.equations = rule.ordered_equations()
        self.all: set[tuple[str, int]] = set()
        self.taken: set[tuple[str, int]] = set()
        self._conditions: dict[sp.Piecewise, list[Any]] = {}
        for eq in self.equations:
            for node in sp.preorder_traversal(eq.expr):
                if isinstance(node, sp.Piecewise):
                    self.all |= {(str(node), i) for i in range(len(node.args))}

    def _holds(self, condition: sp.Basic, env: dict[sp.Symbol, Any]) -> bool:
        if condition is sp.true:
            return True
        symbols = sorted(condition.free_symbols, key=str)
        f = sp.lambdify(symbols, condition, modules=MODULES)
        return bool(f(*(env[s] for s in symbols)))

    def _visit(self, expr: sp.Basic, env: dict[sp.Symbol, Any]) -> None:
        if not expr.has(sp.Piecewise):
            return
        if isinstance(expr, sp.Piecewise):
            for i, (value, condition) in enumerate(expr.args):
                if self._holds(condition, env):
                    self.taken.add((str(expr), i))
                    self._visit(value, env)
                    return
            raise AssertionError(f"no branch of {expr} holds")
        for arg in expr.args:
            self._visit(arg, env)

    def __call__(self, env: dict[sp.Symbol, Any]) -> None:
        for eq in self.equations:
            self._visit(eq.expr, env)


def test_every_branch_is_taken(rule_name: str) -> None:
    """Every branch of every Piecewise (flags, choices, schedules, per-tensor and per-element
    cases) is reached by some setting the equation tests compare with the equations."""
    rule = RULES[rule_name]
    recorder = BranchRecorder(rule)
    for hp, w0, grads in _settings(rule_name):
        spec_trajectory(rule, w0, grads, hp, on_element=recorder)
    missing = sorted(recorder.all - recorder.taken)
    assert not missing, (
        f"{rule_name}: branches never taken: {missing} (where no derived setting reaches one, the "
        "spec can ask for a setting that does: RULE.test_case(steps=..., **hyperparams))"
    )


@pytest.mark.parametrize(
    "name", ["batch_scale", "updates_per_epoch", "begin_epoch", "warmup_epochs"]
)
def test_counts_must_be_whole_numbers(name: str) -> None:
    """LBSGD's counts are integers: 1.5 calls per macro-batch would never complete (MXNet documents
    them as unsigned); the error names the hyperparameter and its legal values."""
    module = numpy_module("lbsgd")
    assert module.LEGAL[name].integer
    w = np.ones(3)
    state = module.init_state(w)
    with pytest.raises(ValueError, match=rf"lbsgd: hyperparameter {name}=1.5 must be an integer"):
        module.step(w, np.ones(3), state, 1, **{name: 1.5})
    assert np.all(w == 1.0) and not state["acc"].any()
    module.step(w, np.ones(3), state, 1, **{name: 2})  # an int, or a float like 2.0, is fine
    module.step(w, np.ones(3), state, 2, **{name: 2.0})
