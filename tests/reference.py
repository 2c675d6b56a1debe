"""Independent oracle: a spec's own equations evaluated element by element with mpmath.

Nothing here uses the lowering or the generated code: the raw equations, in dependency order,
are turned into mpmath functions and evaluated at 40 significant digits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import mpmath
import numpy as np
import sympy as sp

from codegen.ops import exact
from codegen.spec import Rule
from optgen_runtime.philox import randn, stream_seed

DIGITS = 40


def sample_hyperparams(rule: Rule, rng: np.random.Generator) -> dict[str, float | None]:
    """A random legal setting near the defaults, with wd, rescaling and clipping active.

    Counts (integer hyperparameters) are drawn small, from lo..lo+2 (a macro-batch of 1-3 calls,
    1-3 updates per epoch, warmup of 0-2 epochs), so that what they count completes within the
    few steps the tests run: a setting whose weights never move would test nothing.
    """
    values: dict[str, float | None] = {}
    for h in rule.hypers.values():
        legal, d = h.legal, h.default
        if legal.choices or legal.flag:
            values[h.name] = d
            continue
        if legal.integer:
            lo = legal.lo if math.isfinite(legal.lo) else (d or 0.0) - 1
            lo = math.floor(lo) + 1 if legal.lo_open and float(lo).is_integer() else math.ceil(lo)
            value = float(rng.integers(lo, lo + 3))
            values[h.name] = value if legal.contains(value) else d
            continue
        if d is None:  # optional (clip_gradient, clip_weights): pick a value that bites
            value = float(rng.uniform(0.6, 1.0))
        elif d == 0.0 and legal.hi == 1.0:  # a factor that is off by default (momentum)
            value = float(rng.uniform(0.5, 0.95))
        elif d == 0.0 and legal.lo == 0.0:
            value = float(rng.uniform(0.01, 0.1))
        elif legal.hi == 1.0 and 0 < d < 1:
            value = float(d + (1 - d) * rng.uniform(-0.5, 0.5))
        elif h.name == "rescale_grad":
            value = float(rng.uniform(0.5, 1.5))
        else:
            value = float(d * rng.uniform(0.5, 2.0))
        if not legal.contains(value):
            value = d
        values[h.name] = value
    return values


def _resolved(rule: Rule, hp: dict[str, float | None]) -> dict[str, float]:
    out = {}
    for h in rule.hypers.values():
        v = hp.get(h.name, h.default)
        if h.legal.choices:
            v = h.legal.choices.index(v)
        out[h.name] = h.none_value if v is None else float(v)
    return out


def _reduce(kind: str, values: list[Any]) -> Any:
    """A reduction of exact values: a sum, or a max/min that is NaN if any value is."""
    if kind == "sum":
        return mpmath.fsum(values)
    if any(mpmath.isnan(v) for v in values):
        return mpmath.nan
    if not values:
        return -mpmath.inf if kind == "max" else mpmath.inf
    return max(values) if kind == "max" else min(values)


def spec_trajectory(
    rule: Rule,
    weight0: np.ndarray,
    grads: list[np.ndarray],
    hp: dict[str, Any],
    on_element: Callable[[dict[sp.Symbol, Any]], None] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Weight and states after each step, from the raw equations at high precision.

    ``on_element`` sees every element's values (inputs, intermediates, new values) at every step.
    """
    mpmath.mp.dps = DIGITS
    equations = rule.ordered_equations()
    symbols = sorted(
        set().union(*(eq.expr.free_symbols for eq in equations)) | {rule.weight}, key=str
    )
    # spec functions SymPy does not know are evaluated as their exact math (softplus as
    # log(1 + exp(x))), never as the generated code computes them
    functions = [
        (eq.target, sp.lambdify(symbols, exact(eq.expr), modules="mpmath")) for eq in equations
    ]
    values = _resolved(rule, hp)
    n = weight0.size
    w = [mpmath.mpf(float(x)) for x in weight0.ravel()]
    states = {}
    hypers = [h.symbol for h in rule.hypers.values()]
    hyper_values = [mpmath.mpf(values[h.name]) for h in rule.hypers.values()]
    for st in rule.states.values():
        f = sp.lambdify([rule.weight, *hypers], exact(st.init), modules="mpmath")
        states[st.name] = [mpmath.mpf(f(w[i], *hyper_values)) for i in range(n)]
    host = {hs.name: mpmath.mpf(hs.init) for hs in rule.host_states.values()}
    history = []
    for t, g in enumerate(grads, start=1):
        gflat = [mpmath.mpf(float(x)) for x in np.asarray(g).ravel()]
        # Random draws come from the runtime's Philox stream (the spec says which stream).
        draws = {}
        if rule.draws:
            key = stream_seed(int(values["seed"]), t)
            for k, d in enumerate(rule.draws):
                counters = np.arange(n, dtype=np.int64) * len(rule.draws) + k
                draws[d] = [mpmath.mpf(float(x)) for x in randn(key, counters)]
        new_w = []
        new_states: dict[str, list[Any]] = {s: [] for s in states}

        def element_env(
            i: int, w=w, gflat=gflat, t=t, states=states, host=host, draws=draws
        ) -> dict:
            env: dict[sp.Symbol, Any] = {rule.weight: w[i], rule.grad: gflat[i], rule.t: t}
            env.update({size: n for size in rule.sizes})
            for h in rule.hypers.values():
                v = values[h.name]
                env[h.symbol] = mpmath.inf if math.isinf(v) else mpmath.mpf(v)
            for st in rule.states.values():
                env[st.symbol] = states[st.name][i]
            for hs in rule.host_states.values():
                env[hs.symbol] = host[hs.name]
            for d, vals in draws.items():
                env[d] = vals[i]
            return env

        # The reductions, phase by phase (a chained reduction's summand uses earlier ones).
        totals: dict[sp.Symbol, Any] = {}
        phases = rule.reduction_phases()
        for phase in range(1, max(phases.values(), default=0) + 1):
            current = [r for r in rule.reductions if phases[r] == phase]
            parts: dict[sp.Symbol, list[Any]] = {r: [] for r in current}
            for i in range(n):
                env = element_env(i)
                env.update(totals)
                for target, f in functions:
                    if target not in totals:
                        env[target] = f(*(env.get(s, mpmath.mpf(0)) for s in symbols))
                for r in current:
                    parts[r].append(env[r])
            for r in current:
                totals[r] = _reduce(rule.reduction_kinds[r], parts[r])
        # Pass 2: every equation, with the reductions known.
        for i in range(n):
            env = element_env(i)
            env.update(totals)
            for target, f in functions:
                if target not in totals:
                    env[target] = f(*(env.get(s, mpmath.mpf(0)) for s in symbols))
            if on_element is not None:
                on_element(env)
            new_w.append(env[rule.weight_new])
            for st in rule.states.values():
                new_states[st.name].append(env[st.new])
        host = {hs.name: env[hs.new] for hs in rule.host_states.values()}  # same for every i
        w, states = new_w, new_states
        snapshot = {"weight": np.array([float(x) for x in w]).reshape(weight0.shape)}
        for name, vals in states.items():
            snapshot[name] = np.array([float(x) for x in vals]).reshape(weight0.shape)
        snapshot.update({name: np.array(float(v)) for name, v in host.items()})
        history.append(snapshot)
    return history
