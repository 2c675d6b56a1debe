"""Determinism: the same inputs twice give the same bits (NumPy on worker threads with many
chunks, Triton with many blocks and reductions, step_multi, the torch classes); and a numeric
property of the issue-9 fix: rmsprop_centered with gamma1=0 stays finite."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.conftest import COUNTS, examples
from fuzz.harness import (
    EQUAL,
    META,
    RULE_NAMES,
    WRONG,
    canonical_hyperparams,
    numpy_module,
    snap,
    torch_class,
    triton_module,
)
from optgen_runtime.numpy_support import THREADS

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def legal_hyperparams(draw: st.DrawFn, rule: str) -> dict:
    """A legal setting: each hyperparameter its default or a value inside its interval."""
    out = {}
    for name, legal in META[rule].LEGAL.items():
        if legal.choices or legal.flag or not draw(st.booleans()):
            continue
        lo = legal.lo if np.isfinite(legal.lo) else -2.0
        hi = min(legal.hi, lo + 4.0) if np.isfinite(legal.hi) else lo + 4.0
        value = draw(st.floats(lo, hi, exclude_min=legal.lo_open, exclude_max=True))
        if legal.integer:
            value = float(int(value))
        if legal.contains(value) and (value == 0 or abs(value) >= 1e-6):
            out[name] = value
    return canonical_hyperparams(rule, out)


def same(category: str, a, b) -> None:
    outcome = EQUAL if snap(a) == snap(b) else WRONG
    COUNTS[category][outcome] += 1
    COUNTS[category]["drawn"] += 1
    assert outcome == EQUAL, f"{category}: two runs on the same inputs gave different bits"


def refusal(rule: str, steps: Callable[[], object]) -> str | None:
    """Run ``steps``: None, or the ValueError it raised. Legal hyperparameters the data can
    still make uncomputable (LARS at rescale_grad = wd = eps = 0: a zero trust-ratio
    denominator, refused naming the rule) must give the same refusal, at the same point, in
    both runs (``same`` compares it with the bits)."""
    try:
        steps()
    except ValueError as error:
        assert str(error).startswith(f"{rule}: "), error
        return str(error)
    return None


@settings(max_examples=examples(12))
@given(st.data())
def test_numpy_repeats_on_threads(data):
    rule = data.draw(st.sampled_from(RULE_NAMES))
    # enough chunks for every worker thread (optgen_runtime.numpy_support.for_chunks)
    n = data.draw(st.sampled_from([1, 65537, 4 * 65536 * max(THREADS, 2) + 3]))
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    hp = legal_hyperparams(data.draw, rule)
    w0 = rng.standard_normal(n).astype(dtype)
    g0 = rng.standard_normal(n).astype(dtype)
    runs = []
    for _ in range(2):
        w, g = w0.copy(), g0.copy()
        s = numpy_module(rule).init_state(w.copy())

        def steps(w=w, g=g, s=s) -> None:
            for t in (1, 2):
                numpy_module(rule).step(w, g, s, t, **hp)

        runs.append((w, s, refusal(rule, steps)))
    same("determinism: numpy", runs[0], runs[1])


@settings(max_examples=examples(12))
@given(st.data())
def test_triton_repeats(data):
    rule = data.draw(st.sampled_from(RULE_NAMES))
    sizes = data.draw(st.lists(st.sampled_from([1, 1025, 4099]), min_size=1, max_size=3))
    dtypes = [data.draw(st.sampled_from([torch.float32, torch.float16])) for _ in sizes]
    hp = legal_hyperparams(data.draw, rule)
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    w0 = [torch.randn(n, generator=gen).to(d) for n, d in zip(sizes, dtypes, strict=True)]
    g0 = [torch.randn(n, generator=gen) for n in sizes]
    module = triton_module(rule)
    runs = []
    for _ in range(2):
        ws, gs = [w.clone() for w in w0], [g.clone() for g in g0]
        ss = [module.init_state(w) for w in ws]

        def steps(ws=ws, gs=gs, ss=ss) -> None:
            module.step(ws[0], gs[0], ss[0], 1, **hp)
            module.step_multi(ws, gs, ss, [2] * len(ws), **hp)

        runs.append((ws, ss, refusal(rule, steps)))
    same("determinism: triton", runs[0], runs[1])


@settings(max_examples=examples(12))
@given(st.data())
def test_torch_class_repeats(data):
    rule = data.draw(st.sampled_from(RULE_NAMES))
    backend = data.draw(st.sampled_from(["auto", "triton"]))
    hp = legal_hyperparams(data.draw, rule)
    seed = data.draw(st.integers(0, 2**31))
    runs = []
    for _ in range(2):
        gen = torch.Generator().manual_seed(seed)
        params = [torch.nn.Parameter(torch.randn(n, generator=gen)) for n in (3, 1100)]
        opt = torch_class(rule)(params, backend=backend, **hp)

        def steps(params=params, opt=opt, gen=gen) -> None:
            for _ in range(2):
                for p in params:
                    p.grad = torch.randn(p.shape, generator=gen)
                opt.step()

        refused = refusal(rule, steps)
        runs.append(([p.detach() for p in params], opt.state_dict()["state"], refused))
    same("determinism: torch classes", runs[0], runs[1])


@settings(max_examples=examples(10))
@given(st.integers(0, 2**32 - 1), st.sampled_from([np.float32, np.float64]))
def test_rmsprop_centered_gamma1_zero_stays_finite(seed, dtype):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(4096).astype(dtype)
    g = rng.standard_normal(4096).astype(dtype)
    module = numpy_module("rmsprop_centered")
    s = module.init_state(w.copy())
    for t in (1, 2, 3):
        module.step(w, g, s, t, gamma1=0.0)
    finite = bool(np.isfinite(w).all() and all(np.isfinite(v).all() for v in s.values()))
    COUNTS["rmsprop_centered gamma1=0"][EQUAL if finite else WRONG] += 1
    COUNTS["rmsprop_centered gamma1=0"]["drawn"] += 1
    assert finite
