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


def _nan_max(*args: Any) -> Any:
    return mpmath.nan if any(mpmath.isnan(a) for a in args) else max(args)


def _nan_min(*args: Any) -> Any:
    return mpmath.nan if any(mpmath.isnan(a) for a in args) else min(args)


def _f32(x: Any) -> Any:
    """The spec function ``f32``: rounded to the nearest float32 (NumPy's rounding, an
    independent one of the runtime's ``host_f32``); a finite value float32 cannot hold (past its
    range, or nonzero and rounding to 0) as it is, inf and NaN as they are."""
    with np.errstate(over="ignore", under="ignore"):
        held = np.float32(float(x))
    if not mpmath.isfinite(x) or (np.isfinite(held) and (held != 0 or x == 0)):
        return mpmath.mpf(float(held)) if mpmath.isfinite(x) else x
    return x


# How the equations are evaluated: mpmath, with Max/Min NaN-propagating as in every target
# (Python's max/min answer NaN or not depending on the argument order), f32 a float32 rounding.
MODULES: list[Any] = [{"Max": _nan_max, "Min": _nan_min, "f32": _f32}, "mpmath"]


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


def resolved(rule: Rule, hp: dict[str, float | None]) -> dict[str, float]:
    """The hyperparameters as the equations see them: floats, a choice's index, a flag's 0/1,
    what None stands for; unset ones at their defaults."""
    out = {}
    for h in rule.hypers.values():
        v = hp.get(h.name, h.default)
        if h.legal.choices and v is not None:  # None: the choice it stands for (none_value)
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


def _view(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(batch, rows, cols) of a weight's shape: 0-D is one element, 1-D one row."""
    if len(shape) < 2:
        return 1, 1, (shape[0] if shape else 1)
    return math.prod(shape[:-2]), shape[-2], shape[-1]


def _state_shape(shape: tuple[int, ...], axis: int | None) -> tuple[int, ...]:
    """A state's shape: the weight's; without its last axis (one value per row); or without its
    second-to-last (one per column; a 1-D weight's columns are its elements)."""
    if axis is None or not shape:
        return shape
    return shape[:-1] if axis == -1 else shape[:-2] + shape[-1:]


def spec_trajectory(
    rule: Rule,
    weight0: np.ndarray,
    grads: list[np.ndarray],
    hp: dict[str, Any],
    on_element: Callable[[dict[sp.Symbol, Any]], None] | None = None,
    inputs: Callable[[int], dict[str, Any]] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Weight and states after each step, from the raw equations at high precision.

    ``on_element`` sees every element's values (inputs, intermediates, new values) at every step.
    The weight is viewed as (batch, rows, cols) (``codegen.spec.Rule.domain``): a value of a
    smaller domain (a row state, a reduction along an axis) is one number per row, column, matrix
    or tensor, which every element of it sees; a reduction adds each of its summand's values once.
    ``inputs(t)``: step t's per-element and scalar inputs (the rule's ``input``s and
    ``scalar``s); by default conftest's ``step_inputs``, as the tests feed the generated code.
    """
    if inputs is None:
        from conftest import step_inputs

        inputs = lambda t: step_inputs(rule, weight0, t)  # noqa: E731
    mpmath.mp.dps = DIGITS
    equations = rule.ordered_equations()
    symbols = sorted(
        set().union(*(eq.expr.free_symbols for eq in equations)) | {rule.weight}, key=str
    )
    # spec functions SymPy does not know are evaluated as their exact math (softplus as
    # log(1 + exp(x))), never as the generated code computes them
    functions = [
        (eq.target, sp.lambdify(symbols, exact(eq.expr), modules=MODULES)) for eq in equations
    ]
    values = resolved(rule, hp)
    # states the spec declares absent at these hyperparameters (absent_when: torch_sgd's
    # momentum buffer at momentum=0): computed by the equations, but not part of the result
    absent = {
        name
        for name, when in rule.absent.items()
        if all(values[h.name] == v for h, v in when.items())
    }
    n = weight0.size
    dims = dict(zip("brc", _view(weight0.shape), strict=True))
    sizes = {"numel": n, "ndim": weight0.ndim, "rows": dims["r"], "cols": dims["c"]}

    def index(i: int, domain: frozenset[str]) -> int:
        """Element i's position in a value of ``domain`` (C order over the axes it has)."""
        at = {
            "b": i // (dims["r"] * dims["c"]),
            "r": i // dims["c"] % dims["r"],
            "c": i % dims["c"],
        }
        out = 0
        for a in "brc":
            if a in domain:
                out = out * dims[a] + at[a]
        return out

    state_domain = {st.name: rule.domain(st.symbol) for st in rule.states.values()}
    w = [mpmath.mpf(float(x)) for x in weight0.ravel()]
    states = {}
    hypers = [h.symbol for h in rule.hypers.values()]
    hyper_values = [mpmath.mpf(values[h.name]) for h in rule.hypers.values()]
    for st in rule.states.values():
        f = sp.lambdify([rule.weight, *hypers], exact(st.init), modules=MODULES)
        count = math.prod(dims[a] for a in state_domain[st.name])
        # axis: a constant init
        states[st.name] = [mpmath.mpf(f(w[i], *hyper_values)) for i in range(count)]
    host = {hs.name: mpmath.mpf(hs.init) for hs in rule.host_states.values()}
    history = []
    for t, g in enumerate(grads, start=1):
        gflat = [mpmath.mpf(float(x)) for x in np.asarray(g).ravel()]
        given = inputs(t)
        extra = {
            rule.inputs[k].symbol: [mpmath.mpf(float(x)) for x in np.asarray(v).ravel()]
            for k, v in given.items()
            if k in rule.inputs
        }
        extra_scalars = {
            rule.scalars[k].symbol: mpmath.mpf(v) for k, v in given.items() if k in rule.scalars
        }
        # Random draws come from the runtime's Philox stream (the spec says which stream).
        draws = {}
        if rule.draws:
            key = stream_seed(int(values["seed"]), t)
            for k, d in enumerate(rule.draws):
                counters = np.arange(n, dtype=np.int64) * len(rule.draws) + k
                draws[d] = [mpmath.mpf(float(x)) for x in randn(key, counters)]
        new_w = []
        new_states: dict[str, list[Any]] = {s: list(v) for s, v in states.items()}

        def element_env(
            i: int,
            w=w,
            gflat=gflat,
            t=t,
            states=states,
            host=host,
            draws=draws,
            extra=extra,
            extra_scalars=extra_scalars,
        ) -> dict:
            env: dict[sp.Symbol, Any] = {rule.weight: w[i], rule.grad: gflat[i], rule.t: t}
            env.update({x: values[i] for x, values in extra.items()})
            env.update(extra_scalars)
            env.update({size: sizes[size.name] for size in rule.sizes})
            for h in rule.hypers.values():
                v = values[h.name]
                env[h.symbol] = mpmath.inf if math.isinf(v) else mpmath.mpf(v)
            for st in rule.states.values():
                env[st.symbol] = states[st.name][index(i, state_domain[st.name])]
            for hs in rule.host_states.values():
                env[hs.symbol] = host[hs.name]
            for d, vals in draws.items():
                env[d] = vals[i]
            return env

        # The reductions, phase by phase (a chained reduction's summand uses earlier ones).
        # (each reduction: one value per position of its own domain; element i sees its own).
        totals: dict[sp.Symbol, list[Any]] = {}

        def reduced(i: int, totals=totals) -> dict[sp.Symbol, Any]:
            return {r: v[index(i, rule.domain(r))] for r, v in totals.items()}

        phases = rule.reduction_phases()
        for phase in range(1, max(phases.values(), default=0) + 1):
            current = [r for r in rule.reductions if phases[r] == phase]
            # reduction -> output position -> input position -> value (each input value once)
            parts: dict[sp.Symbol, dict[int, dict[int, Any]]] = {r: {} for r in current}
            for i in range(n):
                env = element_env(i)
                env.update(reduced(i))
                for target, f in functions:
                    if target not in totals:
                        env[target] = f(*(env.get(s, mpmath.mpf(0)) for s in symbols))
                for r in current:
                    inner = rule.domain(rule.reductions[r])
                    out = parts[r].setdefault(index(i, rule.domain(r)), {})
                    out[index(i, inner)] = env[r]
            for r in current:
                count = math.prod(dims[a] for a in rule.domain(r))
                kind = rule.reduction_kinds[r]
                totals[r] = [
                    _reduce(kind, list(parts[r].get(k, {}).values())) for k in range(count)
                ]
        # Pass 2: every equation, with the reductions known.
        for i in range(n):
            env = element_env(i)
            env.update(reduced(i))
            for target, f in functions:
                if target not in totals:
                    env[target] = f(*(env.get(s, mpmath.mpf(0)) for s in symbols))
            if on_element is not None:
                on_element(env)
            new_w.append(env[rule.weight_new])
            for st in rule.states.values():  # a row/column state: every element of it agrees
                new_states[st.name][index(i, state_domain[st.name])] = env[st.new]
        host = {hs.name: env[hs.new] for hs in rule.host_states.values()}  # same for every i
        w, states = new_w, new_states
        snapshot = {"weight": np.array([float(x) for x in w]).reshape(weight0.shape)}
        for st in rule.states.values():
            if st.name in absent:  # no such state at these settings: nothing to compare
                continue
            shape = _state_shape(weight0.shape, st.axis)
            snapshot[st.name] = np.array([float(x) for x in states[st.name]]).reshape(shape)
        snapshot.update({name: np.array(float(v)) for name, v in host.items()})
        history.append(snapshot)
    return history
