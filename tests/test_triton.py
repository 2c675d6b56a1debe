"""Triton kernels (interpreter on CPU tensors) against the generated NumPy reference."""

from __future__ import annotations

import copy
import importlib
import math

import numpy as np
import pytest
import torch
from conftest import (
    DEVICE,
    RULES,
    assert_matches_float32,
    numpy_module,
    states_present,
    step_inputs,
    triton_module,
)
from reference import sample_hyperparams
from test_symbolic import VARIANT_IDS, VARIANTS

from optgen_runtime.philox import tensor_seed
from optgen_runtime.triton_launch import LAUNCHES
from optgen_runtime.triton_rows import scalar_table

STEPS = 5
SIZES = [1, 7, 1000, 1025]  # 1025: just above a multiple of the 1024-element block


def lockstep(rule_name, size, dtype=torch.float32, seed=0, hp=None, steps=STEPS):
    """Run the Triton kernel for ``steps`` steps; check every step against one NumPy step.

    Before each step NumPy (float32) gets the kernel's current weight (upcast from ``dtype``),
    state and gradient; after it, the kernel's outputs must be NumPy's up to float32 rounding,
    and a fp16/bf16 weight must be NumPy's float32 weight rounded to ``dtype`` (one ulp:
    ``conftest.assert_matches_float32``). Errors cannot accumulate and hide in a loose
    multi-step tolerance. Yields ``t, numpy_result, triton_result`` after the checks.
    """
    rng = np.random.default_rng(seed)
    hp = sample_hyperparams(RULES[rule_name], rng) if hp is None else hp
    npm, trm = numpy_module(rule_name), triton_module(rule_name)
    # Magnitudes spread over four decades: whatever a rule's step size, some elements move by
    # many ulps of a fp16/bf16 weight in one step, so a wrong update cannot hide in the rounding.
    w0 = rng.standard_normal(size) * 10.0 ** rng.uniform(-4, 0, size)
    tw = torch.tensor(w0.astype(np.float32), dtype=dtype, device=DEVICE)
    tstate = trm.init_state(tw)
    for t in range(1, steps + 1):
        g = rng.standard_normal(size).astype(np.float32) * 1.5
        tg = torch.tensor(g, dtype=dtype, device=DEVICE)
        w0, state0 = _host(tw), {name: _host(v) for name, v in tstate.items()}
        w, nstate = w0.copy(), {name: _host(v) for name, v in tstate.items()}
        # the rule's other inputs (INPUTS, STEP_SCALARS in its metadata), NumPy's upcast as g's
        extra = step_inputs(trm, tw, t, seed)
        npm.step(w, _host(tg), nstate, t, **hp, **{k: _host(v) for k, v in extra.items()})
        trm.step(tw, tg, tstate, t, **hp, **extra)
        assert tw.dtype == dtype
        assert_matches_float32(_host(tw), w, dtype, w0, f"{rule_name} weight, step {t}")
        assert set(tstate) == set(nstate)
        for name in nstate:  # buffers (float32 whatever the weight) and host states alike
            assert not isinstance(tstate[name], torch.Tensor) or tstate[name].dtype == STATE
            if name in npm.HOST_STATES and npm.REDUCTIONS:
                # fed by the step's sums: Triton adds float32 partials per block, NumPy float64
                # per chunk; a sum whose terms cancel (Prodigy's <g, p0 - w>) keeps ~1e-5 of it
                np.testing.assert_allclose(
                    tstate[name], nstate[name], rtol=1e-4, err_msg=f"{rule_name} {name}, step {t}"
                )
                continue
            scale = np.max(np.abs(np.concatenate([np.ravel(state0[name]), np.ravel(nstate[name])])))
            assert_matches_float32(
                _host(tstate[name]), nstate[name], STATE, scale, f"{rule_name} {name}, step {t}"
            )
        yield t, (w, nstate), (tw, tstate)


STATE = torch.float32


@pytest.mark.parametrize("size", SIZES)
def test_triton_matches_numpy_float32(rule_name: str, size: int) -> None:
    assert list(lockstep(rule_name, size))


@pytest.mark.parametrize(("rule_name", "label", "hp", "steps"), VARIANTS, ids=VARIANT_IDS)
def test_triton_matches_numpy_on_variant_settings(
    rule_name: str, label: str, hp: dict, steps: int
) -> None:
    """Every other value of every flag and choice, and each spec's RULE.test_case settings."""
    assert list(lockstep(rule_name, 1025, hp=hp, steps=steps))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_weights_with_fp32_state(rule_name: str, dtype: torch.dtype) -> None:
    assert list(lockstep(rule_name, 1025, dtype))


def _weight_not_written(trm, monkeypatch: pytest.MonkeyPatch) -> None:
    launch = trm.launch
    monkeypatch.setattr(
        trm, "launch", lambda k, b, *a, **kw: launch(k, [b[0].clone(), *b[1:]], *a, **kw)
    )


def _first_state_not_written(trm, monkeypatch: pytest.MonkeyPatch) -> None:
    launch = trm.launch
    k = 2 + len(trm.INPUTS)  # buffers: weight, grad, inputs, states
    monkeypatch.setattr(
        trm,
        "launch",
        lambda f, b, *a, **kw: launch(f, [*b[:k], b[k].clone(), *b[k + 1 :]], *a, **kw),
    )


def _lr_one_percent_high(trm, monkeypatch: pytest.MonkeyPatch) -> None:
    host_scalars = trm.host_scalars
    monkeypatch.setattr(
        trm, "host_scalars", lambda *a, **hp: host_scalars(*a, **{**hp, "lr": hp["lr"] * 1.01})
    )


MUTANTS = {
    "weight not written": (_weight_not_written, "weight, step 1"),
    "first state not written": (_first_state_not_written, r"(mean|mom), step 1"),
    "lr x 1.01": (_lr_one_percent_high, "weight, step 1"),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mutant", sorted(MUTANTS))
@pytest.mark.parametrize("rule_name", ["adahessian", "adam", "lamb", "lion", "sgd_mom"])
def test_lockstep_catches_a_wrong_kernel(
    rule_name: str, mutant: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Test the tester: a kernel that skips a store or is 1% off fails at the first step,
    fp16/bf16 weights included (their one-ulp allowance does not hide it)."""
    make, message = MUTANTS[mutant]
    trm = triton_module(rule_name)
    # the rule's module and its variants' (a step at the defaults may run one: AdaHessian's
    # special case ``sqrt`` at hessian_power = 1)
    rules = importlib.import_module(f"generated.rules.{rule_name}")
    for name in [*rules.SPECIAL, *rules.WITHOUT.values()]:
        make(importlib.import_module(f"{trm.__package__}.{name}"), monkeypatch)
    make(trm, monkeypatch)
    with pytest.raises(AssertionError, match=message):
        list(lockstep(rule_name, 1025, dtype))


@pytest.mark.parametrize("rule_name", [r for r in sorted(RULES) if RULES[r].reductions])
def test_reductions_are_deterministic(rule_name: str) -> None:
    """Per-tensor reductions are summed in a fixed order: two runs agree to the last bit."""
    runs = [[tw.clone() for _, _, (tw, _) in lockstep(rule_name, 5000)] for _ in range(2)]
    for w1, w2 in zip(*runs, strict=True):
        assert torch.equal(w1, w2)


def test_float32_is_bit_identical_for_adam() -> None:
    """Both targets round every op the same way (IEEE div/sqrt in the kernel)."""
    for _, (w, nstate), (tw, tstate) in lockstep("adam", 1025):
        np.testing.assert_array_equal(tw.cpu().numpy(), w)
        np.testing.assert_array_equal(tstate["var"].cpu().numpy(), nstate["var"])


def _inputs(rule_name, dtype=torch.float32, size=10):
    trm = triton_module(rule_name)
    w = torch.randn(size, dtype=dtype, device=DEVICE)
    return trm, w, torch.randn(size, dtype=dtype, device=DEVICE), trm.init_state(w)


BAD_INPUTS = {
    "grad shape": (lambda w, g, s: (w, g[:-1], s), ValueError, r"grad shape is \(9,\)"),
    "grad dtype": (lambda w, g, s: (w, g.double(), s), TypeError, "grad dtype must be"),
    "weight dtype": (lambda w, g, s: (w.double(), g, s), TypeError, "weight dtype must be"),
    "state dtype": (
        lambda w, g, s: (w, g, {k: getattr(v, "half", lambda v=v: v)() for k, v in s.items()}),
        TypeError,
        "dtype must be float32",
    ),
    "non-contiguous": (
        lambda w, g, s: (w, torch.randn(20, device=DEVICE)[::2], s),
        ValueError,
        "grad must be contiguous",
    ),
    "aliasing": (
        lambda w, g, s: (w, w, s),
        ValueError,
        "(weight and grad|grad and weight) share memory",
    ),
    "device": (lambda w, g, s: (w, g.to("meta"), s), ValueError, "grad is on meta"),
    "missing state": (
        lambda w, g, s: (w, g, {}),
        ValueError,
        "state (must have exactly|has no host state)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_raise_before_any_write(rule_name: str, case: str) -> None:
    make, error, message = BAD_INPUTS[case]
    trm, w, g, state = _inputs(rule_name)
    if case in ("missing state", "state dtype") and not trm.STATES:
        pytest.skip("rule has no state")
    extra = step_inputs(trm, w, 1)
    extra |= states_present(trm)
    w, g, state = make(w, g, state)
    buffers = [v for v in state.values() if isinstance(v, torch.Tensor)]
    before = [w.clone()] + [v.clone() for v in buffers]
    with pytest.raises(error, match=message):
        trm.step(w, g, state, 1, **extra)
    after = [w, *buffers]
    for x, y in zip(before, after, strict=True):
        assert torch.equal(x, y)


def test_unknown_and_illegal_hyperparameters(rule_name: str) -> None:
    trm, w, g, state = _inputs(rule_name)
    extra = step_inputs(trm, w, 1)
    with pytest.raises(TypeError, match=f"{rule_name}: unknown hyperparameter\\(s\\) bogus"):
        trm.step(w, g, state, 1, bogus=1.0, **extra)
    first = next(iter(trm.HYPERPARAMS))
    with pytest.raises(ValueError, match=f"{first}=nan is outside its legal values"):
        trm.step(w, g, state, 1, **{first: float("nan")}, **extra)
    with pytest.raises(ValueError, match="step count t must be >= 1"):
        trm.step(w, g, state, 0, **extra)


def test_empty_tensor_is_a_no_op(rule_name: str) -> None:
    trm = triton_module(rule_name)
    w = torch.empty(0, device=DEVICE)
    trm.step(w, torch.empty(0, device=DEVICE), trm.init_state(w), 1, **step_inputs(trm, w, 1))


def _many(rule_name: str):
    torch.manual_seed(0)
    weights = [torch.randn(n, device=DEVICE) for n in (1, 7, 1025)]
    weights.append(torch.randn(33, dtype=torch.bfloat16, device=DEVICE))
    grads = [torch.randn_like(w) for w in weights]
    return weights, grads


def _multi_inputs(trm, weights: list[torch.Tensor], t: int) -> dict[str, object]:
    """step_multi's other inputs: a list per per-element input (tensor j's is what ``step``
    gets for weight j), one number per scalar input."""
    each = [step_inputs(trm, w, t, seed=j) for j, w in enumerate(weights)]
    return {
        k: [e[k] for e in each] if k in trm.INPUTS else step_inputs(trm, weights[0], t)[k]
        for k in (*trm.INPUTS, *trm.STEP_SCALARS)
    }


def _carried(rule_name: str, name: str) -> bool:
    """Whether the rule's host state ``name``'s new value depends on its old one."""
    rule = RULES[rule_name]
    first = rule.host_states[name]
    defined = {eq.target: eq.expr for eq in rule.equations}
    todo, seen = [first.new], set()
    while todo:
        symbol = todo.pop()
        if symbol == first.symbol:
            return True
        if symbol not in seen and symbol in defined:
            seen.add(symbol)
            todo.extend(defined[symbol].free_symbols)
    return False


def test_step_multi_matches_per_tensor_steps(rule_name: str) -> None:
    """One launch per dtype combination (one more for a reduction phase) covers tensors at
    different step counts, with different host states, noise streams and an empty tensor, and
    new gradients on the second step; the results are bit-identical to one ``step`` per tensor
    (with ``tensor_seed(seed, stream id)`` as its seed for a rule with random draws)."""
    trm = triton_module(rule_name)
    if RULES[rule_name].group_reductions:
        pytest.skip("group reductions: step_multi is one group (tests/test_group_reductions.py)")
    weights, grads = _many(rule_name)
    weights.insert(2, torch.empty(0, device=DEVICE))
    grads.insert(2, torch.empty(0, device=DEVICE))
    singles = [w.clone() for w in weights]
    states = [trm.init_state(w) for w in weights]
    for j, state in enumerate(states):  # a different host state for every tensor
        for name in trm.HOST_STATES:
            state[name] = state[name] * 0.75**j + 0.01 * j
    single_states = [copy.deepcopy(s) for s in states]
    hp = sample_hyperparams(RULES[rule_name], np.random.default_rng(2))
    starts = [1, 4, 2, 1, 7]  # each tensor's first step count
    stream_ids = [5, 0, 9, 3, 1]
    seed = hp.get("seed", trm.HYPERPARAMS.get("seed"))
    for step in range(3):
        if step == 1:  # new gradients (zero_grad, backward): the cached table reads them
            grads = [torch.randn_like(g) for g in grads]
        ts = [start + step for start in starts]
        LAUNCHES["count"] = 0
        extra = _multi_inputs(trm, weights, step + 1)
        launches = trm.step_multi(weights, grads, states, ts, stream_ids=stream_ids, **hp, **extra)
        assert launches == LAUNCHES["count"]
        if not RULES[rule_name].vector_values:  # those loop over step: launches per sweep
            phases = sum(name.startswith("reduction_scalars") for name in vars(trm))
            assert launches == (1 + phases) * 2  # fp32 and bf16 groups
        for j, (w, g, s) in enumerate(zip(singles, grads, single_states, strict=True)):
            own = {"seed": tensor_seed(seed, stream_ids[j])} if trm.DRAWS else {}
            mine = {k: v[j] if k in trm.INPUTS else v for k, v in extra.items()}
            trm.step(w, g, s, ts[j], **{**hp, **own}, **mine)
    for a, b, sa, sb in zip(weights, singles, states, single_states, strict=True):
        assert torch.equal(a, b)
        for name in trm.STATES:
            assert torch.equal(sa[name], sb[name])
        for name in trm.HOST_STATES:
            assert sa[name] == sb[name]
    if trm.HOST_STATES:
        # distinct per tensor in some host state carried from its old value (one may converge:
        # a running max from -1); one that depends on t alone (ASGD's eta) per step count
        distinct = max(len({s[name] for s in states}) for name in trm.HOST_STATES)
        carried = any(_carried(rule_name, name) for name in trm.HOST_STATES)
        assert distinct == (len(states) if carried else len(set(starts)))


def test_step_multi_takes_one_step_count_as_before(rule_name: str) -> None:
    """``t`` as one int and no ``stream_ids`` (tensor j: stream j) is the old call."""
    trm = triton_module(rule_name)
    weights, grads = _many(rule_name)
    states = [trm.init_state(w) for w in weights]
    twins = [w.clone() for w in weights]
    twin_states = [trm.init_state(w) for w in twins]
    extra = _multi_inputs(trm, weights, 3)
    trm.step_multi(weights, grads, states, 3, **extra)
    trm.step_multi(
        twins, grads, twin_states, [3] * len(twins), stream_ids=range(len(twins)), **extra
    )
    assert all(torch.equal(a, b) for a, b in zip(weights, twins, strict=True))
    with pytest.raises(ValueError, match="3 step counts for 4 tensors"):
        trm.step_multi(weights, grads, states, [1, 2, 3], **extra)
    with pytest.raises(ValueError, match="step count t must be >= 1"):
        trm.step_multi(weights, grads, states, [1, 2, 0, 1], **extra)
    with pytest.raises(ValueError, match="stream id -1 is not an int >= 0"):
        trm.step_multi(weights, grads, states, 1, stream_ids=[0, 1, 2, -1], **extra)


def test_scalar_table_rounds_like_a_kernel_argument() -> None:
    """The fp32 table rounds each double to nearest (ties to even, overflow to inf), as
    Triton's launcher casts a Python float argument and as NumPy does."""
    values = [0.1, 1 / 3, 1 + 2**-24, 1 + 3 * 2**-24, -(2**-149) * 0.75, 1e-40, 1e-46]
    values += [3.4028235677973366e38, 3.4028236e38, 1e39, -0.0, math.inf, -math.inf, math.nan]
    table = scalar_table([values[:7], values[7:]])
    with np.errstate(over="ignore"):
        expected = np.array(values, dtype=np.float64).astype(np.float32)
    assert table.dtype == torch.float32 and len(table) == 16
    np.testing.assert_array_equal(table[:14].numpy().view(np.uint32), expected.view(np.uint32))


def test_step_multi_checks_every_tensor_before_writing(rule_name: str) -> None:
    trm = triton_module(rule_name)
    weights, grads = _many(rule_name)
    grads[-1] = grads[-1][:-1]  # the last tensor's gradient has the wrong shape
    states = [trm.init_state(w) for w in weights]
    before = [w.clone() for w in weights]
    with pytest.raises(ValueError, match="grad shape"):
        trm.step_multi(weights, grads, states, 1, **_multi_inputs(trm, weights, 1))
    assert all(torch.equal(a, b) for a, b in zip(weights, before, strict=True))


def _host(value: object) -> np.ndarray | float:
    """A state entry as NumPy float32 (a copy: NumPy must not write the tensor) or a float."""
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy().copy()
    return value


@pytest.mark.parametrize("rule_name", ["adam", "sgld", "lamb", "adahessian", "adam_clip"])
def test_vectorised_and_scalar_variants_give_the_same_bits(rule_name, monkeypatch) -> None:
    """step_multi sends tensors whose buffers are 16-byte aligned and whose sizes are multiples
    of 16 to the multi-tensor kernels' ALIGNED variant (128-bit accesses on a GPU), the rest
    (a view one element off, sizes 7 and 1025) to the scalar variant: one launch per (dtypes,
    alignment class) and phase. Every tensor's result is bit-identical to the one every tensor
    gets with the vectorised variant turned off, and (without group reductions) to one ``step``
    per tensor. (Under the
    interpreter the hints are no-ops: this proves the routing; on CUDA, tools/gpu_check.py
    runs it with the hints compiled.)"""
    from optgen_runtime import triton_chunks
    from optgen_runtime.triton_cache import TABLES

    trm = triton_module(rule_name)
    torch.manual_seed(3)
    base = torch.randn(80, device=DEVICE)
    weights = [torch.randn(n, device=DEVICE) for n in (16, 1024 + 48, 7, 1025)]
    weights.insert(2, base[1:33])  # contiguous, 4 bytes past a 16-byte boundary
    weights.append(torch.randn(32, dtype=torch.bfloat16, device=DEVICE))
    grads = [torch.randn(w.shape, dtype=w.dtype, device=DEVICE) for w in weights]
    hp = sample_hyperparams(RULES[rule_name], np.random.default_rng(4))
    runs = {}
    for mode in ("routed", "scalar", "single"):
        ws = [w.clone() for w in weights]
        ws[2] = base.clone()[1:33]  # keep the offset view misaligned
        states = [trm.init_state(w) for w in ws]
        TABLES.clear()
        if mode == "scalar":
            monkeypatch.setattr(triton_chunks, "vectorisable", lambda buffers: False)
        for t in (1, 2):
            extra = _multi_inputs(trm, ws, t)
            if mode == "single":
                for j, (w, g, s) in enumerate(zip(ws, grads, states, strict=True)):
                    seed = hp.get("seed", trm.HYPERPARAMS.get("seed"))
                    own = {"seed": tensor_seed(seed, j)} if trm.DRAWS else {}
                    mine = {k: v[j] if k in trm.INPUTS else v for k, v in extra.items()}
                    trm.step(w, g, s, t, **{**hp, **own}, **mine)
                continue
            LAUNCHES["count"] = 0
            launches = trm.step_multi(ws, grads, states, t, **hp, **extra)
            phases = sum(name.startswith("reduction_scalars") for name in vars(trm))
            groups = 3 if mode == "routed" else 2  # fp32 aligned and not; bf16 (aligned)
            assert launches == LAUNCHES["count"] == (1 + phases) * groups
        monkeypatch.undo()
        runs[mode] = (ws, states)
    tables = [[w, g] for w, g in zip(weights, grads, strict=True)]
    assert [triton_chunks.vectorisable(t) for t in tables] == [
        True,
        True,
        False,
        False,
        False,
        True,
    ]
    # a group reduction (adam_clip's global norm) covers every tensor of a step_multi call
    for mode in ("scalar",) if RULES[rule_name].group_reductions else ("scalar", "single"):
        (wa, sa_), (wb, sb_) = runs["routed"], runs[mode]
        for a, b, sa, sb in zip(wa, wb, sa_, sb_, strict=True):
            assert torch.equal(a, b), (mode, (a - b).abs().max())
            for name in trm.STATES:
                assert torch.equal(sa[name], sb[name]), (mode, name)
