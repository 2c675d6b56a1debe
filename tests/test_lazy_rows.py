"""MXNet 1.9.1's lazy sparse updates through the classes of ``generated.torch``: SGD, SGD with
momentum and Adam (``lazy_update=True``, MXNet's default) and AdaGrad at wd = 0 (its sparse
kernel) given a sparse COO gradient (torch's form of MXNet's row_sparse) update only the rows it
holds, weight decay included. Replayed against ``tests/goldens/mxnet/lazy_rows.json``, recorded
from the real package by ``tools/record_mxnet_goldens.py`` (``record_lazy``), on every backend.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import tolerance

import generated.torch as gt

GOLDEN = json.loads((Path(__file__).parent / "goldens" / "mxnet" / "lazy_rows.json").read_text())
CASES = {case["rule"]: case for case in GOLDEN["cases"]}
BACKENDS = ["auto", "numpy", "triton"]  # auto: the compiled numba loops
CLASSES = {  # MXNet's rules (the goldens' names) and the classes of generated.torch here
    "sgd": gt.SGD,
    "sgd_mom": gt.SGDMomentum,
    "adam": gt.Adam,
    "adagrad": gt.Adagrad,
    "rmsprop": gt.RMSprop,
}


def _arr(values: list[Any], shape: Any) -> torch.Tensor:
    return torch.tensor(np.array([float(v) for v in values], dtype=np.float32)).reshape(shape)


def _grad(case: dict[str, Any], t: int) -> torch.Tensor:
    shape = case["shape"]
    rows = torch.tensor(case["rows"][t], dtype=torch.int64)
    values = _arr(case["values"][t], (len(rows), shape[1]))
    return torch.sparse_coo_tensor(rows[None], values, shape, check_invariants=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", sorted(CASES))
def test_matches_mxnet(rule: str, backend: str) -> None:
    """Weight and states after every step within the goldens' tolerance of MXNet's; the rows a
    step's gradient does not hold exactly as before it (an empty gradient at step 3)."""
    case = CASES[rule]
    assert GOLDEN["mxnet_version"] == "1.9.1"
    shape = case["shape"]
    w = torch.nn.Parameter(_arr(case["weight0"], shape))
    opt = CLASSES[rule]([w], backend=backend, **case["hyperparams"])
    for t in range(len(case["rows"])):
        before = w.detach().clone()
        w.grad = _grad(case, t)
        opt.step()
        tol = tolerance(np.float32, t + 1)
        np.testing.assert_allclose(w.detach(), _arr(case["weights"][t], shape), **tol)
        for key, values in case["states"].items():
            got = opt.state[w][key]
            np.testing.assert_allclose(got, _arr(values[t], shape), **tol, err_msg=key)
        untouched = [r for r in range(shape[0]) if r not in case["rows"][t]]
        assert torch.equal(w.detach()[untouched], before[untouched])
        assert int(opt.state[w]["step"]) == t + 1  # the empty gradient counted too (MXNet's)


def test_dense_and_sparse_gradients_in_one_step() -> None:
    """A dense gradient beside a sparse one steps every element of its parameter, as it would
    alone; the sparse one only its rows: each to the bit its own optimizer's step."""
    torch.manual_seed(0)
    dense, table = torch.randn(5), torch.randn(6, 4)
    grads = [torch.randn(5), _grad(CASES["adam"], 0)]
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


@pytest.mark.parametrize(
    ("rule", "options", "message"),
    [
        ("adagrad", {"wd": 0.01}, r"Adagrad: parameter 1's grad is sparse and wd=0.01 \(MXNet"),
        ("rmsprop", {}, r"RMSprop: parameter 1's grad is sparse"),
    ],
)
def test_refused_where_mxnet_updates_every_row(rule: str, options: dict, message: str) -> None:
    """AdaGrad with weight decay (MXNet's sparse kernel takes wd = 0 only and updates every row
    otherwise) and the rules without a lazy kernel refuse a sparse gradient, naming it, before
    anything is written (a dense parameter before it included)."""
    params = [torch.nn.Parameter(torch.ones(5)), torch.nn.Parameter(torch.ones(6, 4))]
    opt = CLASSES[rule](params, **options)
    params[0].grad, params[1].grad = torch.ones(5), _grad(CASES["adam"], 0)
    with pytest.raises((ValueError, TypeError), match=message):
        opt.step()
    assert all(torch.equal(p, torch.ones_like(p)) for p in params) and not opt.state
