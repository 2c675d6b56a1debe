"""Test settings derived from a spec's declarations, so that a new correct spec passes the whole
suite without a test edit (no per-rule table to extend).

From what a rule declares:

- random legal settings near the defaults (``reference.sample_hyperparams``), flags and choices
  at their defaults, and the defaults themselves;
- one random setting per other value of every flag and every choice (``variants``);
- the settings the spec asks for with ``RULE.test_case(steps=..., **hyperparams)``, for what the
  derivation cannot reach (a branch behind a particular combination of counts, say);
- steps: at least ``STEPS``, and more where a branch decided on the host (its condition depends
  only on hyperparameters, the step count and host states: a warmup that ends, a rectification
  that starts) is first taken later, up to ``MAX_STEPS`` (``steps_for``);
- data for branches random normal vectors cannot reach (exact zeros: MXNet's sign of 0, a zero
  norm; a stack of matrices: per-row and per-column values), run at every rule's defaults
  (``SPECIAL_DATA``);
- which states a setting freezes: a state whose update, with the setting's flags and choices
  substituted, is the state itself (AMSGrad's maximum with the maximum switched off) need not
  move under it (``frozen_states``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import mpmath
import numpy as np
import sympy as sp
from reference import DIGITS, MODULES, resolved, sample_hyperparams

from codegen.spec import Rule

STEPS = 5  # the fewest steps an equation test runs
MAX_STEPS = 40  # the most steps_for derives: a later branch needs RULE.test_case(...)


# ------------------------------------------------------------------------------------- steps
@functools.cache
def _host_program(rule: Rule) -> list[tuple[sp.Symbol, list[sp.Symbol], Callable[..., Any]]]:
    """The equations computable on the host, in order: (target, arguments, mpmath function)."""
    known = set(rule.host_inputs)
    program = []
    for eq in rule.ordered_equations():
        if eq.target in rule.reductions or not eq.expr.free_symbols <= known:
            continue
        args = sorted(eq.expr.free_symbols, key=str)
        program.append((eq.target, args, sp.lambdify(args, eq.expr, modules=MODULES)))
        known.add(eq.target)
    return program


def _holds(condition: sp.Basic, env: dict[sp.Symbol, Any]) -> bool | None:
    """The condition's truth value, or None where it depends on more than ``env`` knows."""
    if condition is sp.true or condition is sp.false:
        return bool(condition)
    if not condition.free_symbols <= env.keys():
        return None
    args, f = _condition(condition)
    try:
        return bool(f(*(env[s] for s in args)))
    except (ZeroDivisionError, ValueError, TypeError):
        return None


@functools.cache
def _condition(condition: sp.Basic) -> tuple[list[sp.Symbol], Callable[..., Any]]:
    args = sorted(condition.free_symbols, key=str)
    return args, sp.lambdify(args, condition, modules=MODULES)


def _visit(expr: sp.Basic, env: dict, seen: dict, t: int) -> None:
    """Record the first step each Piecewise branch decided on the host is taken."""
    if not expr.has(sp.Piecewise):
        return
    if isinstance(expr, sp.Piecewise):
        for i, (value, condition) in enumerate(expr.args):
            holds = _holds(condition, env)
            if holds is None:  # decided per element: every later branch may be taken
                for later, _ in expr.args[i:]:
                    _visit(later, env, seen, t)
                return
            if holds:
                seen.setdefault((str(expr), i), t)
                _visit(value, env, seen, t)
                return
        return
    for arg in expr.args:
        _visit(arg, env, seen, t)


def host_branch_steps(rule: Rule, hp: dict[str, Any], max_steps: int = MAX_STEPS) -> int:
    """The step by which every Piecewise branch that the host decides under ``hp`` has been
    taken at least once, looking ``max_steps`` steps ahead (0 when there is none)."""
    mpmath.mp.dps = DIGITS
    values = resolved(rule, hp)
    base = {h.symbol: mpmath.mpf(values[h.name]) for h in rule.hypers.values()}
    host = {hs.symbol: mpmath.mpf(hs.init) for hs in rule.host_states.values()}
    seen: dict[tuple[str, int], int] = {}
    for t in range(1, max_steps + 1):
        env = {**base, **host, rule.t: mpmath.mpf(t)}
        for target, args, f in _host_program(rule):
            if all(a in env for a in args):
                with contextlib.suppress(ZeroDivisionError, ValueError, TypeError):
                    env[target] = f(*(env[a] for a in args))  # else unknown on the host
        for eq in rule.equations:
            _visit(eq.expr, env, seen, t)
        # a host state that follows a reduction is not known on the host from here on
        host = {hs.symbol: env[hs.new] for hs in rule.host_states.values() if hs.new in env}
    return max(seen.values(), default=0)


def steps_for(rule: Rule, hp: dict[str, Any]) -> int:
    """How many steps an equation test runs ``hp`` for: ``STEPS``, or more where a branch the
    host decides is first taken later (RAdam's rectification, a warmup's end)."""
    return max(STEPS, host_branch_steps(rule, hp))


# ---------------------------------------------------------------------------------- settings
def variants(rule: Rule) -> list[tuple[str, dict[str, Any], int]]:
    """(label, hyperparameters, steps) beyond the random and default settings: one random setting
    per other value of each flag and choice, then the spec's own ``RULE.test_case`` settings."""
    out = []
    for h in rule.hypers.values():
        if h.legal.flag:
            others = [not h.default]
        elif h.legal.choices:
            others = [c for c in h.legal.choices if c != h.default]
        else:
            continue
        for value in others:
            hp = sample_hyperparams(rule, np.random.default_rng(100 + len(out)))
            hp[h.name] = value
            out.append((f"{h.name}={value}", hp, steps_for(rule, hp)))
    for i, case in enumerate(rule.test_cases):
        hp = dict(case.hyperparams)
        steps = case.steps or steps_for(rule, hp)
        out.append((f"test_case{i}@line{case.line}", hp, steps))
    return out


def variant_data(steps: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The data a variant runs on: 5 elements, ``steps`` standard normal gradients."""
    rng = np.random.default_rng(7)
    w0 = rng.standard_normal(5)
    return w0, [rng.standard_normal(5) for _ in range(steps)]


def zeros_in_gradients(rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """Two elements see a zero gradient at every step, and step 2 is all zeros (a zero norm)."""
    w0 = rng.standard_normal(6)
    grads = [rng.standard_normal(6) for _ in range(STEPS)]
    for g in grads:
        g[:2] = 0.0
    grads[1][:] = 0.0
    return w0, grads


def zero_weight(rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """A zero weight and a zero first gradient (a zero weight norm, then a zero update)."""
    return np.zeros(6), [np.zeros(6)] + [rng.standard_normal(6) for _ in range(STEPS - 1)]


def stacked_matrices(rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """A 2 x 3 x 4 weight: the other settings' weights are vectors (one row), where per-row and
    per-column values, ``rows``, ``cols`` and ``ndim`` cannot show a mistake."""
    return rng.standard_normal((2, 3, 4)), [rng.standard_normal((2, 3, 4)) for _ in range(STEPS)]


# Data that reaches branches random normal vectors cannot (exact zeros, more than one axis), run
# for every rule at its defaults (MXNet's wd is 0 by default: a zero gradient leaves a momentum
# at exactly 0).
SPECIAL_DATA = (zeros_in_gradients, zero_weight, stacked_matrices)


# ------------------------------------------------------------------------------ frozen states
@functools.cache
def _inlined(rule: Rule) -> dict[sp.Symbol, sp.Expr]:
    """Every equation's target as an expression of step-i values (lets and new values inlined)."""
    out: dict[sp.Symbol, sp.Expr] = {}
    for eq in rule.ordered_equations():
        out[eq.target] = eq.expr.xreplace(out)
    return out


def frozen_states(rule: Rule, hp: dict[str, Any]) -> set[str]:
    """States that ``hp`` provably leaves unchanged: with its flags and choices substituted
    (as the numbers the equations see), the state's update is the state itself."""
    values = resolved(rule, hp)
    discrete = {
        h.symbol: sp.Integer(int(values[h.name]))
        for h in rule.hypers.values()
        if h.legal.flag or h.legal.choices
    }
    inlined = _inlined(rule)
    return {s.name for s in rule.states.values() if inlined[s.new].subs(discrete) == s.symbol}


def uses_sign(rule: Rule) -> bool:
    """The rule takes a sign (SymPy's, or MXNet's, which is written with it)."""
    return any(eq.expr.has(sp.sign) for eq in rule.equations)
