"""Host scalars of many tensors at once: a rule's ``host_scalars_rows`` (generated where every
sum enters only IEEE-exact operations) and ``triton_rows.sum_rows``, which takes it when it
can and goes tensor by tensor through ``host_scalars`` otherwise.

The reference is ``host_scalars`` called row by row (plain Python floats, the code every other
path uses) and the single-tensor ``step``: the rows must be the same bits, and a step taking the
columns must write what one ``step`` per tensor writes.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from conftest import DEVICE, RULES, triton_module
from reference import sample_hyperparams

from optgen_runtime import scalars
from optgen_runtime.columns import rows_max, rows_min, rows_where
from optgen_runtime.common import host_max, host_min
from optgen_runtime.hyperparams import resolve_hyperparams
from optgen_runtime.numpy_support import combine, combine_rows
from optgen_runtime.triton_rows import ScalarRows, float32_rows, sum_rows

COLUMNWISE = sorted(r for r in RULES if hasattr(triton_module(r), "host_scalars_rows"))


def test_columnwise_rules_are_the_per_tensor_sum_rules() -> None:
    """LAMB, LARS and LBSGD (per-tensor norms in exact operations) get the columns; the rules
    whose sums are group sums (AdamClip, Prodigy) or feed host states do not (a new spec of
    per-tensor sums may join them: every test here then checks it too)."""
    assert {"lamb", "lars", "lbsgd"} <= set(COLUMNWISE)
    assert not {"adam_clip", "prodigy"} & set(COLUMNWISE)
    for name in COLUMNWISE:
        assert RULES[name].scalar_reductions and not RULES[name].group_reductions


def test_rows_where_runs_each_branch_on_the_rows_that_take_it_alone() -> None:
    """Python's ``a if c1 else (b if c2 else d)`` row by row: c2 only where c1 is false, each
    value only where its condition took the row (first true condition), nested branches on
    their enclosing branch's rows; a condition may be one bool for all rows."""
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    seen: dict[str, list[int]] = {}

    def ran(name, value):
        def f(r):
            seen.setdefault(name, []).extend(r.tolist())
            return value(r)

        return f

    got = rows_where(
        len(x),
        ran("c1", lambda r: x[r] < 2),
        ran("v1", lambda r: -x[r]),
        ran("c2", lambda r: x[r] < 4),
        ran(
            "v2",
            lambda r: rows_where(
                r, ran("c3", lambda q: x[q] == 2), ran("v3", lambda q: 7), ran("v4", lambda q: x[q])
            ),
        ),
        ran("otherwise", lambda r: x[r] * 10),
    )
    assert got.tolist() == [-0.0, -1.0, 7.0, 3.0, 40.0, 50.0]
    assert np.signbit(got[0])  # -x of 0.0: the value's own bits
    assert seen == {
        "c1": [0, 1, 2, 3, 4, 5],
        "v1": [0, 1],
        "c2": [2, 3, 4, 5],
        "v2": [2, 3],
        "c3": [2, 3],
        "v3": [2],
        "v4": [3],
        "otherwise": [4, 5],
    }
    seen.clear()
    assert (
        rows_where(
            3, ran("c", lambda r: True), ran("v", lambda r: 1), ran("o", lambda r: 1 / 0)
        ).tolist()
        == [1.0] * 3
    )
    assert seen == {"c": [0, 1, 2], "v": [0, 1, 2]}  # the otherwise branch never called


def sums_for(rule_name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sums over 60 orders of magnitude, with exact zeros and equal pairs among them."""
    names = list(triton_module(rule_name).REDUCTIONS)
    sums = np.exp(rng.uniform(-70, 70, (n, len(names))))
    sums[rng.random((n, len(names))) < 0.15] = 0.0
    sums[-1] = sums[0]
    return sums


@pytest.mark.parametrize("rule_name", COLUMNWISE)
@pytest.mark.parametrize("seed", range(6))
def test_host_scalars_rows_are_host_scalars_row_by_row(rule_name: str, seed: int) -> None:
    """Over the rows where ``host_scalars`` computes (it raises on none of them), the columns
    flag nothing under ``np.errstate`` raising (no branch a row does not take is computed: a
    zero norm, LBSGD's warmup branches at warmup_epochs = 0) and are its bits row by row."""
    trm = triton_module(rule_name)
    rng = np.random.default_rng(seed)
    hp = sample_hyperparams(RULES[rule_name], rng)
    hp = resolve_hyperparams(rule_name, trm.HYPERPARAMS, trm.LEGAL, trm.NONE_MEANS, hp)
    if seed % 2:
        hp.update({k: 0.0 for k in ("lower_bound", "wd", "warmup_epochs") if k in hp})
    sums = sums_for(rule_name, 64, rng)
    names = list(trm.REDUCTIONS)
    t = int(rng.integers(1, 50))
    want = []
    for values in sums.tolist():
        try:
            want.append(trm.host_scalars(t, **hp, **dict(zip(names, values, strict=True)))[0])
        except (ArithmeticError, ValueError):
            want.append(None)
    ok = np.array([w is not None for w in want])
    assert ok.sum() >= len(sums) // 2
    with np.errstate(divide="raise", over="raise", invalid="raise", under="ignore"):
        got = trm.host_scalars_rows(t, **hp, **{n: sums[ok, k] for k, n in enumerate(names)})
    assert got.dtype == np.float64 and got.shape == (ok.sum(), len(trm.SCALARS))
    expected = np.array([w for w in want if w is not None], dtype=np.float64)
    assert expected.tobytes() == got.tobytes()


def _weights(n: int, rng: np.random.Generator) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(int(rng.integers(1 << 30)))
    sizes = [int(rng.integers(1, 3000)) for _ in range(n)]
    weights = [torch.randn(k, device=DEVICE) * float(rng.uniform(0.1, 10)) for k in sizes]
    return weights, [torch.randn_like(w) for w in weights]


def _both(rule_name: str, weights, grads, ts, **hp):
    """step_multi, and one step per tensor on copies: their weights and states."""
    trm = triton_module(rule_name)
    singles = [w.clone() for w in weights]
    states = [trm.init_state(w) for w in weights]
    single_states = [trm.init_state(w) for w in singles]
    trm.step_multi(weights, grads, states, ts, **hp)
    for j, (w, g, st) in enumerate(zip(singles, grads, single_states, strict=True)):
        trm.step(w, g, st, ts[j] if isinstance(ts, list) else ts, **hp)
    return (weights, states), (singles, single_states)


def _equal(ours, theirs, names) -> None:
    for w, v in zip(ours[0], theirs[0], strict=True):
        assert torch.equal(w, v)
    for a_, b_ in zip(ours[1], theirs[1], strict=True):
        for name in names:
            assert torch.equal(a_[name], b_[name])


@pytest.mark.parametrize("rule_name", COLUMNWISE)
@pytest.mark.parametrize("case", ["nonzero", "zero tensor", "zero update"])
def test_a_step_multi_takes_the_columns_and_writes_what_steps_write(rule_name, case, monkeypatch):
    """One step count, finite sums (a zero weight and gradient at wd = 0, or a zero gradient
    alone: a zero norm, whose ratio Python takes from its other branch): no row is computed
    tensor by tensor, and the weights and states are those of one ``step`` per tensor."""
    trm = triton_module(rule_name)
    rng = np.random.default_rng(1)
    weights, grads = _weights(12, rng)
    hp = sample_hyperparams(RULES[rule_name], rng)
    if case != "nonzero":
        hp["wd"] = 0.0
        grads[4].zero_()
        grads[9].zero_()
    if case == "zero tensor":
        weights[4].zero_()

    def refuse(*args, **kwargs):
        raise AssertionError("computed tensor by tensor")

    with monkeypatch.context() as patch:
        patch.setattr(scalars, "computed_each", refuse)
        ours, theirs = _both(rule_name, weights, grads, 3, **hp)
    _equal(ours, theirs, trm.STATES)


def tensor_by_tensor(monkeypatch) -> list[int]:  # a MonkeyPatch, or one's context
    """A list that grows by one with every step computing its rows tensor by tensor."""
    calls: list[int] = []
    real = scalars.computed_each

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(scalars, "computed_each", counted)
    return calls


@pytest.mark.parametrize("rule_name", COLUMNWISE)
@pytest.mark.parametrize("case", ["step counts", "nan grad"])
def test_what_the_columns_cannot_take_goes_tensor_by_tensor(rule_name, case, monkeypatch):
    """Tensors at different step counts, a NaN sum: computed tensor by tensor, the same bits
    as one ``step`` per tensor."""
    rng = np.random.default_rng(2)
    weights, grads = _weights(6, rng)
    ts: int | list[int] = 4
    if case == "step counts":
        ts = [1, 2, 3, 4, 5, 6]
    else:
        grads[3][5] = math.nan
    calls = tensor_by_tensor(monkeypatch)
    ours, theirs = _both(rule_name, weights, grads, ts)
    assert calls
    for w, v in zip(ours[0], theirs[0], strict=True):
        assert torch.equal(w, v) or (w.isnan().any() and torch.equal(w.isnan(), v.isnan()))


def test_a_raising_branch_no_tensor_takes_keeps_the_columns(monkeypatch) -> None:
    """LBSGD at warmup_epochs = 0: its warmup branches divide by zero; ``host_scalars`` never
    computes them (k >= 0 takes the plain branch), nor does ``rows_where``: no row tensor by
    tensor, the same bits as one ``step`` per tensor."""
    weights, grads = _weights(5, np.random.default_rng(5))
    calls = tensor_by_tensor(monkeypatch)
    hp = {"warmup_epochs": 0, "warmup_strategy": "linear", "batch_scale": 1}
    ours, theirs = _both("lbsgd", weights, grads, 2, **hp)
    assert not calls
    _equal(ours, theirs, triton_module("lbsgd").STATES)


def test_a_raising_branch_a_tensor_takes_is_refused_as_step_refuses() -> None:
    """LARS at rescale_grad = wd = eps = 0: the trust ratio's branch (both norms nonzero)
    divides by zero. The columns flag it, the tensor-by-tensor path raises the error ``step``
    raises; nothing written."""
    trm = triton_module("lars")
    weights, grads = _weights(4, np.random.default_rng(4))
    before = [w.clone() for w in weights]
    states = [trm.init_state(w) for w in weights]
    hp = {"rescale_grad": 0.0, "wd": 0.0, "eps": 0.0}
    with pytest.raises(ValueError, match=r"^lars: .* float division by zero") as multi:
        trm.step_multi(weights, grads, states, 1, **hp)
    with pytest.raises(ValueError) as single:
        trm.step(weights[0], grads[0], trm.init_state(weights[0]), 1, **hp)
    assert str(multi.value) == str(single.value)
    for w, b in zip(weights, before, strict=True):
        assert torch.equal(w, b)


@pytest.mark.parametrize("rule_name", COLUMNWISE)
def test_a_scalar_float32_cannot_hold_is_refused_naming_it(rule_name: str) -> None:
    """lr = 1e300: the columns fail the range check, and the tensor-by-tensor check names the
    scalar, as ``step`` does; nothing written."""
    trm = triton_module(rule_name)
    weights, grads = _weights(4, np.random.default_rng(3))
    before = [w.clone() for w in weights]
    states = [trm.init_state(w) for w in weights]
    with pytest.raises(ValueError, match=r"kernel scalar _h\d .* float32 cannot hold") as multi:
        trm.step_multi(weights, grads, states, 1, lr=1e300)
    with pytest.raises(ValueError) as single:
        trm.step(weights[0], grads[0], trm.init_state(weights[0]), 1, lr=1e300)
    assert str(multi.value) == str(single.value)
    for w, b in zip(weights, before, strict=True):
        assert torch.equal(w, b)


def test_sum_rows_with_and_without_the_columns_are_the_same_rows() -> None:
    """The same ScalarRows bits from the columns and tensor by tensor (rows_code None)."""
    trm = triton_module("lamb")
    sums = sums_for("lamb", 40, np.random.default_rng(4))
    sums[sums == 0] = 1.0
    names = list(trm.REDUCTIONS)
    hp = resolve_hyperparams("lamb", trm.HYPERPARAMS, trm.LEGAL, trm.NONE_MEANS, {"lr": 0.01})
    args = ("lamb", trm.host_scalars)
    ts = [5] * len(sums)
    fast = sum_rows(*args, trm.host_scalars_rows, ts, names, sums, trm.SCALARS, **hp)
    slow = sum_rows(*args, None, ts, names, sums, trm.SCALARS, **hp)
    assert isinstance(fast, ScalarRows)
    assert fast.padded().tobytes() == slow.padded().tobytes()
    assert float32_rows([list(r) for r in fast.rows]).tobytes() == fast.rows.tobytes()


def _partials(rng: np.random.Generator, counts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Chunk rows of tensors with ``counts`` chunks each, interleaved across tensors (each
    tensor's in order), with NaN, infinities, -0.0 and ties among the values."""
    owners = np.concatenate([np.full(c, j) for j, c in enumerate(counts)]).astype(np.int64)
    owners = owners[np.argsort(rng.random(len(owners)), kind="stable")]
    values = rng.standard_normal((len(owners), 3)) * np.exp(rng.uniform(-20, 20, (len(owners), 3)))
    special = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1.0]
    pick = rng.random(values.shape) < 0.1
    values[pick] = rng.choice(special, int(pick.sum()))
    return values, owners


@pytest.mark.parametrize("seed", range(4))
def test_combine_rows_is_combine_tensor_by_tensor(seed: int) -> None:
    """Every tensor's partials, combined at once, are ``combine``'s bits tensor by tensor: a
    sum, a max and a min, tensors of no chunk, one, a few and more than the vectorised run."""
    rng = np.random.default_rng(seed)
    counts = [0, 1, 1, 2, 5, 16, 17, 40, *rng.integers(0, 20, 30).tolist()]
    values, owners = _partials(rng, counts)
    # ties of 0.0 and -0.0 each way, in three more tensors: the earlier value is kept
    ties = np.array([[0.0] * 3, [-0.0] * 3, [-0.0] * 3, [0.0] * 3, [np.nan] * 3, [1.0] * 3])
    values = np.concatenate([values, ties])
    owners = np.concatenate([owners, np.repeat(np.arange(len(counts), len(counts) + 3), 2)])
    counts += [2, 2, 2]
    kinds = {"a": "sum", "b": "max", "c": "min"}
    got = combine_rows(kinds, ["a", "b", "c"], values, owners, len(counts))
    for j in range(len(counts)):
        rows = [tuple(r) for r in values[owners == j].tolist()]
        want = combine(kinds, ["a", "b", "c"], rows)
        assert np.array([want[n] for n in "abc"]).tobytes() == got[j].tobytes(), j


@pytest.mark.parametrize("rule_name", COLUMNWISE)
def test_the_numba_step_takes_the_columns_with_the_same_bits(rule_name, monkeypatch) -> None:
    """The compiled CPU step (numba) of many tensors at one step count: no row computed tensor
    by tensor, and the weights and states of the same step with ``host_scalars_rows`` taken away
    (every row through ``host_scalars``, as before the columns)."""
    pytest.importorskip("numba")  # absent from a lent GPU machine's Python (tools/gpu_check.py)
    module = importlib.import_module(f"generated.numba.{rule_name}")
    rng = np.random.default_rng(6)
    weights = [rng.standard_normal(int(rng.integers(1, 5000))).astype(np.float32) for _ in range(9)]
    grads = [rng.standard_normal(w.shape).astype(np.float32) for w in weights]
    hp = sample_hyperparams(RULES[rule_name], rng)
    runs = []
    for columns in (True, False):
        ws = [w.copy() for w in weights]
        states = [module.init_state(w) for w in ws]
        with monkeypatch.context() as patch:
            calls = tensor_by_tensor(patch)
            if not columns:
                patch.setattr(module, "host_scalars_rows", None)
            for t in (1, 2):
                module.step_multi(ws, grads, states, t, **hp)
        assert bool(calls) != columns
        runs.append((ws, states))
    for (wa, sa), (wb, sb) in zip(*[zip(*run, strict=True) for run in runs], strict=True):
        assert wa.tobytes() == wb.tobytes()
        for name in module.STATES:
            assert sa[name].tobytes() == sb[name].tobytes()


@pytest.mark.parametrize("arity", [2, 3])
def test_rows_max_and_min_choose_as_host_max_and_min(arity: int) -> None:
    """NaN anywhere gives NaN; otherwise the first extreme value (0.0 against -0.0: the first
    given), entry by entry, with Python floats among the columns."""
    rng = np.random.default_rng(arity)
    pool = np.array([np.nan, 0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, 2.5])
    columns = [rng.choice(pool, 400) for _ in range(arity)]
    columns[-1] = float(columns[-1][0])  # a hyperparameter: one Python float for every row
    for rows_fn, host_fn in ((rows_max, host_max), (rows_min, host_min)):
        got = rows_fn(*columns)
        for j in range(400):
            args = [c if isinstance(c, float) else float(c[j]) for c in columns]
            assert np.float64(host_fn(*args)).tobytes() == np.float64(got[j]).tobytes(), args
