"""MXNet 1.9.1's updates of sparse gradients through the classes of ``generated.torch``.

Lazy: SGD, SGD with momentum and Adam (``lazy_update=True``, MXNet's default) and AdaGrad at
wd = 0 (its sparse kernel) given a sparse COO gradient (torch's form of MXNet's row_sparse)
update only the rows it holds, weight decay included. Dense: SGD's and Adam's
``lazy_update=False`` (MXNet's standard update) and the rules MXNet has no sparse kernel for
(its storage fallback) update every row, as ``grad.to_dense()`` would. Replayed against
``tests/goldens/mxnet/lazy_rows.json``, recorded from the real package by
``tools/record_mxnet_goldens.py`` (``record_lazy``), on every backend.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import tolerance

import generated.torch as gt

GOLDEN = json.loads((Path(__file__).parent / "goldens" / "mxnet" / "lazy_rows.json").read_text())
CASES = {f"{case['rule']}/{case['name']}": case for case in GOLDEN["cases"]}
BACKENDS = ["auto", "numpy", "triton"]  # auto: the compiled numba loops
CLASSES = {  # MXNet's rules (the goldens' names) and the classes of generated.torch here
    "sgd": gt.SGD,
    "sgd_mom": gt.SGDMomentum,
    "adam": gt.Adam,
    "adagrad": gt.Adagrad,
    "nag": gt.NAG,
    "rmsprop": gt.RMSprop,
    "rmsprop_centered": gt.RMSpropCentered,
    "adadelta": gt.Adadelta,
    "adamax": gt.Adamax,
    "nadam": gt.NAdam,
    "signum": gt.Signum,
    "signsgd": gt.SignSGD,
    "ftrl": gt.Ftrl,
    "ftml": gt.FTML,
    "lamb": gt.LAMB,
    "lars": gt.LARS,
    "lbsgd": gt.LBSGD,
    "dcasgd": gt.DCASGD,
}


def _arr(values: list[Any], shape: Any) -> torch.Tensor:
    return torch.tensor(np.array([float(v) for v in values], dtype=np.float32)).reshape(shape)


def _grad(case: dict[str, Any], t: int) -> torch.Tensor:
    shape = case["shape"]
    rows = torch.tensor(case["rows"][t], dtype=torch.int64)
    values = _arr(case["values"][t], (len(rows), shape[1]))
    return torch.sparse_coo_tensor(rows[None], values, shape, check_invariants=True)


# MXNet's storage fallback, warned once per optimizer (test_dense_fallback_warns_once)
DENSE_WARNING = r"stepped as grad.to_dense\(\) \(every row updated, as MXNet 1.9.1's storage"
quiet = pytest.mark.filterwarnings(f"ignore:.*{DENSE_WARNING}:UserWarning")


@quiet
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_mxnet(name: str, backend: str) -> None:
    """Weight and states after every step within the goldens' tolerance of MXNet's; a lazy
    case's rows that a step's gradient does not hold exactly as before it (an empty gradient at
    step 3); the caller's sparse gradient left as it was given."""
    case = CASES[name]
    assert GOLDEN["mxnet_version"] == "1.9.1"
    shape = case["shape"]
    w = torch.nn.Parameter(_arr(case["weight0"], shape))
    opt = CLASSES[case["rule"]]([w], backend=backend, **case["hyperparams"], **case["options"])
    changed = torch.zeros(shape[0], dtype=torch.bool)
    for t in range(len(case["rows"])):
        before = w.detach().clone()
        w.grad = grad = _grad(case, t)
        opt.step()
        assert w.grad is grad and grad.is_sparse
        tol = tolerance(np.float32, t + 1)
        np.testing.assert_allclose(w.detach(), _arr(case["weights"][t], shape), **tol)
        for key, values in case["states"].items():
            got = opt.state[w][key]
            np.testing.assert_allclose(got, _arr(values[t], shape), **tol, err_msg=key)
        untouched = [r for r in range(shape[0]) if r not in case["rows"][t]]
        changed[untouched] |= (w.detach()[untouched] != before[untouched]).any(1)
        if case["mode"] == "lazy":
            assert torch.equal(w.detach()[untouched], before[untouched])
        assert int(opt.state[w]["step"]) == t + 1  # the empty gradient counted too (MXNet's)
    assert changed.any() == (case["mode"] == "dense")  # (MXNet's dense rows: a live check)


def test_every_mxnet_rule_has_a_case_or_refuses() -> None:
    """Each class of an MXNet 1.9.1 rule with sparse gradients (``META.SPARSE``) is replayed
    against MXNet in that mode, with lazy_update=False where it takes it; the others are
    replayed in test_refused_where_mxnet_differs."""
    modes = {(c["rule"], c["mode"]) for c in CASES.values()}
    for rule, cls in CLASSES.items():
        mode = cls.META.SPARSE
        if mode is not None:
            assert (rule, mode) in modes, rule
        if cls.META.LAZY_UPDATE:
            assert (rule, "dense") in modes, rule
        if mode is None:
            assert rule in REFUSED, rule


def test_dense_and_sparse_gradients_in_one_step() -> None:
    """A dense gradient beside a sparse one steps every element of its parameter, as it would
    alone; the sparse one only its rows: each to the bit its own optimizer's step."""
    torch.manual_seed(0)
    dense, table = torch.randn(5), torch.randn(6, 4)
    grads = [torch.randn(5), _grad(CASES["adam/lazy"], 0)]
    both = [torch.nn.Parameter(dense.clone()), torch.nn.Parameter(table.clone())]
    alone = [torch.nn.Parameter(dense.clone()), torch.nn.Parameter(table.clone())]
    opt = CLASSES["adam"](both, lr=0.1, wd=0.01)
    opts = [CLASSES["adam"]([p], lr=0.1, wd=0.01) for p in alone]
    for _ in range(3):
        for ps in (both, alone):
            for p, g in zip(ps, grads, strict=True):
                p.grad = g
        opt.step()
        for o in opts:
            o.step()
    for a, b in zip(both, alone, strict=True):
        assert torch.equal(a, b)
    assert opt._plan is None  # no fast step was built on the rows


REFUSED = {  # rule: (settings, the refusal's message)
    "adagrad": ({"wd": 0.01}, r"Adagrad: parameter 1's grad is sparse and wd=0.01 \(MXNet"),
    "nag": ({}, r"NAG: parameter 1's grad is sparse and momentum=0.0 \(at momentum 0 MXNet"),
    "lars": ({}, r"LARS: parameter 1's grad is sparse \(torch.sparse_coo\) and LARS's rule"),
    "lbsgd": ({}, r"LBSGD: parameter 1's grad is sparse"),
    "dcasgd": ({}, r"DCASGD: parameter 1's grad is sparse"),
}


@pytest.mark.parametrize("rule", sorted(REFUSED))
def test_refused_where_mxnet_differs(rule: str) -> None:
    """AdaGrad with weight decay (MXNet's sparse kernel takes wd = 0 only, and fails
    otherwise), NAG at momentum 0 (MXNet's runs the lazy sgd_update there), and the rules whose
    sparse update is MXNet's own (LARS, LBSGD: lazy with whole-tensor norms) or fails in MXNet
    (DCASGD) refuse a sparse gradient, naming it, before anything is written (a dense parameter
    before it included)."""
    options, message = REFUSED[rule]
    params = [torch.nn.Parameter(torch.ones(5)), torch.nn.Parameter(torch.ones(6, 4))]
    opt = CLASSES[rule](params, **options)
    params[0].grad, params[1].grad = torch.ones(5), _grad(CASES["adam/lazy"], 0)
    with pytest.raises((ValueError, TypeError), match=message):
        opt.step()
    assert all(torch.equal(p, torch.ones_like(p)) for p in params) and not opt.state
    assert params[1].grad.is_sparse


def test_refusal_names_the_classes_that_take_sparse_gradients() -> None:
    params = [torch.nn.Parameter(torch.ones(6, 4))]
    opt = gt.LARS(params)
    params[0].grad = _grad(CASES["adam/lazy"], 0)
    with pytest.raises(TypeError) as error:
        opt.step()
    named = str(error.value).split("are taken by generated.torch's ")[1].split(" (as MXNet")[0]
    classes = [c for c in vars(gt).values() if isinstance(c, type) and hasattr(c, "META")]
    takers = {cls.__name__ for cls in classes if cls.META.SPARSE is not None}
    assert set(named.split(", ")) == takers and {"SGD", "Adam", "RMSprop"} <= takers


@quiet
@pytest.mark.parametrize("backend", BACKENDS)
def test_sgld_steps_a_sparse_gradient_as_its_dense_form(backend: str) -> None:
    """SGLD (noise: no MXNet golden) steps a sparse gradient exactly as ``grad.to_dense()``,
    noise on every element, the same draws."""
    table = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    ps = [torch.nn.Parameter(table.clone()) for _ in range(2)]
    opts = [gt.SGLD([p], lr=0.1, wd=0.01, backend=backend) for p in ps]
    for t in range(3):
        grad = _grad(CASES["adam/lazy"], t)
        ps[0].grad, ps[1].grad = grad, grad.to_dense()
        for opt in opts:
            opt.step()
    assert torch.equal(ps[0], ps[1]) and (ps[0] != table).all()


def test_lazy_update_is_a_bool_and_is_pickled() -> None:
    """``lazy_update`` (MXNet's keyword) takes True or False, and a copy keeps it."""
    import copy

    with pytest.raises(TypeError, match=r"Adam: lazy_update must be True or False, not 0"):
        gt.Adam([torch.nn.Parameter(torch.ones(2))], lazy_update=0)
    opt = gt.Adam([torch.nn.Parameter(torch.ones(2))], lazy_update=False)
    assert copy.deepcopy(opt).lazy_update is False
    with pytest.raises(TypeError, match="lazy_update"):
        gt.RMSprop([torch.nn.Parameter(torch.ones(2))], lazy_update=False)  # not MXNet's keyword


@quiet
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("cls", "options"),
    [(gt.RMSprop, {"wd": 0.1}), (gt.Adam, {"wd": 0.1, "lazy_update": False}), (gt.LAMB, {})],
    ids=["RMSprop", "Adam-standard", "LAMB"],
)
def test_dense_steps_of_sparse_gradients_are_those_of_their_dense_form(
    cls: type, options: dict[str, Any], backend: str
) -> None:
    """Sparse and dense gradients in turn (the fast step built on the dense ones, then given a
    sparse one): every step to the bit that of ``grad.to_dense()``, a dense parameter beside it
    unchanged by the other's layout; the caller's sparse gradient kept."""
    gen = torch.Generator().manual_seed(0)
    table, vector = torch.randn(6, 4, generator=gen), torch.randn(5, generator=gen)
    ps, qs = ([torch.nn.Parameter(x.clone()) for x in (table, vector)] for _ in range(2))
    opts = [cls(params, backend=backend, **options) for params in (ps, qs)]
    for t, kind in enumerate(["dense", "dense", "dense", "sparse", "sparse", "dense", "sparse"]):
        rows = torch.randperm(6, generator=gen)[:3].sort().values
        values = torch.randn(3, 4, generator=gen)
        grad = torch.sparse_coo_tensor(rows[None], values, (6, 4), check_invariants=True)
        ps[0].grad = grad if kind == "sparse" else grad.to_dense()
        qs[0].grad = grad.to_dense()
        ps[1].grad, qs[1].grad = (torch.randn(5, generator=gen),) * 2
        for opt in opts:
            opt.step()
        assert all(torch.equal(p, q) for p, q in zip(ps, qs, strict=True)), t
        assert ps[0].grad.is_sparse == (kind == "sparse")


@quiet
@pytest.mark.parametrize("backend", BACKENDS)
def test_dense_steps_of_sparse_gradients_under_grad_scaler(backend: str) -> None:
    """``torch.amp.GradScaler`` with sparse gradients stepped densely (RMSprop): unscaled, and
    the step with an infinite one skipped, to the bit as the same steps of dense gradients."""
    tables = []
    for _ in range(2):
        torch.manual_seed(0)
        tables.append(torch.nn.Embedding(20, 4, sparse=True))
    opts = [gt.RMSprop(t.parameters(), lr=0.01, wd=0.1, backend=backend) for t in tables]
    scalers = [torch.amp.GradScaler("cpu", init_scale=1024.0) for _ in range(2)]
    for t in range(5):
        rows = torch.tensor([1, 2, 2, 3 + t])
        for i, (table, opt, scaler) in enumerate(zip(tables, opts, scalers, strict=True)):
            opt.zero_grad()
            scaler.scale((table(rows) ** 2).sum()).backward()
            if t == 2:
                inf = torch.full((1, 4), torch.inf)
                table.weight.grad = torch.sparse_coo_tensor(
                    [[1]], inf, (20, 4), check_invariants=True
                )
            if i == 1:
                table.weight.grad = table.weight.grad.to_dense()
            before = table.weight.detach().clone()
            scaler.step(opt)
            scaler.update()
            assert torch.equal(table.weight, before) == (t == 2)
    assert torch.equal(tables[0].weight, tables[1].weight)
    assert int(opts[0].state[tables[0].weight]["step"]) == 4


def test_dense_fallback_warns_once() -> None:
    """A rule without a sparse kernel warns, once per optimizer and at the caller's line, that
    it steps the whole table (MXNet logs its storage fallback); ``lazy_update=False``, asked
    for, does not warn."""
    import warnings

    def step(opt: Any, p: torch.nn.Parameter) -> list[warnings.WarningMessage]:
        p.grad = _grad(CASES["adam/lazy"], 0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt.step()
        return caught

    p = torch.nn.Parameter(torch.ones(6, 4))
    opt = gt.RMSprop([p])
    first = step(opt, p)
    assert [str(w.message) for w in first] and re.search(DENSE_WARNING, str(first[0].message))
    assert first[0].filename == __file__ and "Adam, SGD" in str(first[0].message)
    assert step(opt, p) == []
    assert step(gt.RMSprop([p]), p) != []  # another optimizer: once more
    assert step(gt.Adam([p], lazy_update=False), p) == []


@quiet
def test_dense_fallback_reuses_a_zero_buffer() -> None:
    """The dense step of a sparse gradient with repeated indices is that of its coalesced
    form (summed as the lazy step sums them), through a buffer of the parameter's kept across
    steps and zero again after each, a refused step's too."""
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(50, 8, generator=gen)
    p, q = torch.nn.Parameter(table.clone()), torch.nn.Parameter(table.clone())
    opt, ref = gt.RMSprop([p], wd=0.01), gt.RMSprop([q], wd=0.01)
    for _ in range(3):
        index = torch.randint(0, 50, (1, 400), generator=gen)
        values = torch.randn(400, 8, generator=gen)
        grad = torch.sparse_coo_tensor(index, values, (50, 8), check_invariants=True)
        p.grad, q.grad = grad, grad.coalesce().to_dense()
        opt.step()
        ref.step()
        assert torch.equal(p, q) and p.grad is grad
        (buffer,) = opt._dense_grads.values()
        assert not buffer.any()
    opt.param_groups[0]["gamma1"] = -1.0  # refused after the gradient is densified
    with pytest.raises(ValueError, match="gamma1"):
        opt.step()
    assert p.grad is grad and not buffer.any() and torch.equal(p, q)


@quiet
def test_dense_fallback_of_an_elementwise_sparse_gradient() -> None:
    """A gradient sparse in both dims (``Tensor.to_sparse()``: an index per element) steps as
    its dense form, and its elements are zeroed in the kept buffer after the step."""
    gen = torch.Generator().manual_seed(2)
    table = torch.randn(7, 5, generator=gen)
    p, q = torch.nn.Parameter(table.clone()), torch.nn.Parameter(table.clone())
    opt, ref = gt.Ftrl([p], wd=0.01), gt.Ftrl([q], wd=0.01)
    for _ in range(3):
        dense = torch.randn(7, 5, generator=gen) * (torch.rand(7, 5, generator=gen) < 0.3)
        p.grad, q.grad = dense.to_sparse(), dense
        assert p.grad.sparse_dim() == 2
        opt.step()
        ref.step()
        assert torch.equal(p, q) and not next(iter(opt._dense_grads.values())).any()
