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


def _matrix(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The weight as (batch, rows, cols), as the spec language defines it: the last two dims are
    the matrix, the others the batch; a 1-D weight is one row, a 0-D weight one element."""
    dims = (1, 1, *shape)
    return math.prod(dims[:-2]), dims[-2], dims[-1]


def _vector_shape(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    """The array shape of a state of one value per row (axis -1) or column (axis -2)."""
    if len(shape) < 2:
        return (1,) if axis == -1 or not shape else shape
    return shape[:-1] if axis == -1 else shape[:-2] + shape[-1:]


def spec_trajectory(
    rule: Rule,
    weight0: np.ndarray,
    grads: list[np.ndarray],
    hp: dict[str, Any],
    on_element: Callable[[dict[sp.Symbol, Any]], None] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Weight and states after each step, from the raw equations at high precision.

    Every value is evaluated at every element (b, r, c) of the weight viewed as (batch, rows,
    cols); a value of one per row (column, matrix) is the same at each element of its row and is
    kept once, keyed by (b, r) ((b, c), (b,)). A reduction gathers its summand once per key of
    the summand's own domain and groups the values by the key of its result's.
    ``on_element`` sees every element's values (inputs, intermediates, new values) at every step.
    """
    mpmath.mp.dps = DIGITS
    equations = rule.ordered_equations()
    symbols = sorted(
        set().union(*(eq.expr.free_symbols for eq in equations)) | {rule.weight}, key=str
    )
    functions = [(eq.target, sp.lambdify(symbols, eq.expr, modules="mpmath")) for eq in equations]
    uses = {eq.target: eq.expr.free_symbols for eq in equations}
    values = _resolved(rule, hp)
    shape = tuple(weight0.shape)
    n = weight0.size
    _, rows, cols = _matrix(shape)
    coords = [(i // (rows * cols), i // cols % rows, i % cols) for i in range(n)]

    def key(i: int, domain: frozenset[str]) -> tuple[int, ...]:
        return tuple(x for a, x in zip("brc", coords[i], strict=True) if a in domain)

    def first(i: int, domain: frozenset[str]) -> bool:
        """Whether element i is the first of its key (the one that stands for a vector value)."""
        return all(x == 0 for a, x in zip("brc", coords[i], strict=True) if a not in domain)

    sizes = {"numel": n, "ndim": len(shape), "rows": rows, "cols": cols}
    domains = {st.name: rule.domain(st.symbol) for st in rule.states.values()}
    w = [mpmath.mpf(float(x)) for x in weight0.ravel()]
    states: dict[str, dict[tuple[int, ...], Any]] = {}
    for st in rule.states.values():
        f = sp.lambdify([rule.weight], st.init, modules="mpmath")
        states[st.name] = {
            key(i, domains[st.name]): mpmath.mpf(f(w[i]))
            for i in range(n)
            if first(i, domains[st.name])
        }
    host = {hs.name: mpmath.mpf(hs.init) for hs in rule.host_states.values()}
    history = []
    for t, g in enumerate(grads, start=1):
        gflat = [mpmath.mpf(float(x)) for x in np.asarray(g).ravel()]
        # Random draws come from the runtime's Philox stream (the spec says which stream).
        draws = {}
        if rule.draws:
            key_ = stream_seed(int(values["seed"]), t)
            for k, d in enumerate(rule.draws):
                counters = np.arange(n, dtype=np.int64) * len(rule.draws) + k
                draws[d] = [mpmath.mpf(float(x)) for x in randn(key_, counters)]

        def element_env(
            i: int, w=w, gflat=gflat, t=t, states=states, host=host, draws=draws
        ) -> dict:
            env: dict[sp.Symbol, Any] = {rule.weight: w[i], rule.grad: gflat[i], rule.t: t}
            env.update({size: sizes[size.name] for size in rule.sizes})
            for h in rule.hypers.values():
                v = values[h.name]
                env[h.symbol] = mpmath.inf if math.isinf(v) else mpmath.mpf(v)
            for st in rule.states.values():
                env[st.symbol] = states[st.name][key(i, domains[st.name])]
            for hs in rule.host_states.values():
                env[hs.symbol] = host[hs.name]
            for d, vals in draws.items():
                env[d] = vals[i]
            return env

        def evaluate(i: int, totals: dict, wanted: set[sp.Symbol] | None = None) -> dict:
            env = element_env(i)
            env.update({r: by_key[key(i, rule.domain(r))] for r, by_key in totals.items()})
            for target, f in functions:
                if target not in totals and (wanted is None or target in wanted):
                    env[target] = f(*(env.get(s, mpmath.mpf(0)) for s in symbols))
            return env

        # The reductions, phase by phase (a chained reduction's summand uses earlier ones);
        # in each phase only what the phase's summands need (later values may divide by them).
        totals: dict[sp.Symbol, dict[tuple[int, ...], Any]] = {}
        phases = rule.reduction_phases()
        for phase in range(1, max(phases.values(), default=0) + 1):
            current = [r for r in rule.reductions if phases[r] == phase]
            wanted, todo = set(), list(current)
            while todo:
                s = todo.pop()
                if s not in wanted and s in uses and s not in totals:
                    wanted.add(s)
                    todo += list(uses[s])
            parts: dict[sp.Symbol, dict[tuple[int, ...], list[Any]]] = {r: {} for r in current}
            for i in range(n):
                env = evaluate(i, totals, wanted)
                for r in current:
                    if first(i, rule.domain(rule.reductions[r])):
                        parts[r].setdefault(key(i, rule.domain(r)), []).append(env[r])
            for r in current:
                totals[r] = {k: _reduce(rule.reduction_kinds[r], v) for k, v in parts[r].items()}
        # Pass 2: every equation, with the reductions known.
        new_w = []
        new_states: dict[str, dict[tuple[int, ...], Any]] = {s: {} for s in states}
        for i in range(n):
            env = evaluate(i, totals)
            if on_element is not None:
                on_element(env)
            new_w.append(env[rule.weight_new])
            for st in rule.states.values():
                if first(i, domains[st.name]):
                    new_states[st.name][key(i, domains[st.name])] = env[st.new]
        host = {hs.name: env[hs.new] for hs in rule.host_states.values()}  # same for every i
        w, states = new_w, new_states
        snapshot = {"weight": np.array([float(x) for x in w]).reshape(shape)}
        for st in rule.states.values():
            vals = [float(states[st.name][k]) for k in sorted(states[st.name])]
            axis = st.axis
            snapshot[st.name] = np.array(vals).reshape(
                shape if axis is None else _vector_shape(shape, axis)
            )
        snapshot.update({name: np.array(float(v)) for name, v in host.items()})
        history.append(snapshot)
    return history
