"""The drop-in ``SparseAdam`` against ``torch.optim.SparseAdam`` on the CPU: sparse gradients only,
the elements they hold updated (gathered into rows, the rule's generated code run on them on
every backend, written back), the others untouched; torch's state_dict (an int step count)
either way; every refusal before anything is written. In a GPU run (``TRITON_INTERPRET=0``,
tools/gpu_check.py) ``test_matches_torch`` runs on CUDA tensors: the Triton kernels against
torch's CUDA SparseAdam.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from conftest import DEVICE
from test_dropin import ULPS, ulps

import generated.torch.optim as dropin

OPTIONS = [
    {},
    {"maximize": True},
    {"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-6},
]
# auto: the compiled numba loops on the CPU, the Triton kernels on CUDA
BACKENDS = ["auto", "numpy", "triton"] if DEVICE == "cpu" else ["auto"]


def _params(seed: int = 0, device: str = "cpu") -> list[torch.nn.Parameter]:
    """A table (rows looked up, a hybrid gradient: sparse rows of dense values), a matrix of
    elementwise sparse gradients, and a transposed (not contiguous) table."""
    torch.manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(12, 3).to(device)),
        torch.nn.Parameter(torch.randn(4, 5).to(device)),
        torch.nn.Parameter(torch.randn(3, 9).t().to(device)),
    ]


def _coo(indices: Any, values: Any, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.sparse_coo_tensor(indices, values, shape, check_invariants=True)


def _grads(t: int) -> list[torch.Tensor]:
    """Step ``t``'s gradients: uncoalesced (an index repeated, summed by coalesce), rows 0 never
    held, and the matrix's empty on every third step (its count advances all the same)."""
    g = torch.Generator().manual_seed(t)
    rows = torch.tensor([1, 2, 2, 5 + t % 4])
    table = _coo(rows[None], torch.randn(4, 3, generator=g), (12, 3))
    if t % 3 == 0:
        matrix = _coo(torch.zeros(2, 0, dtype=torch.long), [], (4, 5))
    else:
        at = torch.tensor([[1, 3, 1, 2], [2, 4, 2, 1 + t % 3]])
        matrix = _coo(at, torch.randn(4, generator=g), (4, 5))
    other = _coo(torch.tensor([[3, 7, 3]]), torch.randn(3, 3, generator=g), (9, 3))
    return [table, matrix, other]


def _run(pairs: list[tuple[torch.optim.Optimizer, list[torch.Tensor]]], steps: range) -> None:
    for t in steps:
        for opt, params in pairs:
            for p, grad in zip(params, _grads(t), strict=True):
                p.grad = grad.to(p.device, p.dtype)
            opt.step()


def _state_close(ours: torch.optim.Optimizer, theirs: torch.optim.Optimizer) -> None:
    mine, reference = ours.state_dict(), theirs.state_dict()
    assert mine["param_groups"] == reference["param_groups"]
    assert mine["state"].keys() == reference["state"].keys()
    for index, state in reference["state"].items():
        assert mine["state"][index].keys() == state.keys()
        assert type(mine["state"][index]["step"]) is int
        assert mine["state"][index]["step"] == state["step"]
        for key in ("exp_avg", "exp_avg_sq"):
            assert mine["state"][index][key].stride() == state[key].stride(), key
            assert ulps(mine["state"][index][key], state[key]) <= ULPS, key


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", OPTIONS, ids=["default", "maximize", "settings"])
def test_matches_torch(options: dict[str, Any], backend: str) -> None:
    """12 steps within ULPS of torch's (weights and moments), the elements never held exactly
    as they were, with a checkpoint crossing either way at step 6."""
    start = [p.detach().clone() for p in _params(device=DEVICE)]
    theirs_p, ours_p = _params(device=DEVICE), _params(device=DEVICE)
    theirs = torch.optim.SparseAdam(theirs_p, **options)
    ours = dropin.SparseAdam(ours_p, **options, backend=backend)
    _run([(theirs, theirs_p), (ours, ours_p)], range(1, 7))
    _state_close(ours, theirs)
    theirs2_p, ours2_p = _params(device=DEVICE), _params(device=DEVICE)
    with torch.no_grad():
        for a, b, x, y in zip(theirs2_p, ours2_p, ours_p, theirs_p, strict=True):
            a.copy_(x)
            b.copy_(y)
    theirs2 = torch.optim.SparseAdam(theirs2_p, **options)
    theirs2.load_state_dict(copy.deepcopy(ours.state_dict()))
    ours2 = dropin.SparseAdam(ours2_p, **options, backend=backend)
    ours2.load_state_dict(copy.deepcopy(theirs.state_dict()))
    everyone = [(theirs, theirs_p), (ours, ours_p), (theirs2, theirs2_p), (ours2, ours2_p)]
    _run(everyone, range(7, 13))
    for params in (ours_p, theirs2_p, ours2_p):
        for a, b in zip(params, theirs_p, strict=True):
            assert ulps(a, b) <= ULPS
    _state_close(ours, theirs)
    _state_close(ours2, theirs)
    table, matrix, other = ours_p
    assert torch.equal(table[0], start[0][0]) and not torch.equal(table[1], start[0][1])
    assert torch.equal(matrix[0], start[1][0]) and not torch.equal(matrix[1, 2], start[1][1, 2])
    assert torch.equal(other[0], start[2][0]) and not torch.equal(other[3], start[2][3])
    assert ours.state[table]["exp_avg"].abs()[0].max() == 0  # no decay where nothing was held
    assert int(ours.state[matrix]["step"]) == 12  # its empty gradients counted too


def test_multi_precision_keeps_the_rows_of_its_master_copy() -> None:
    """bf16 tables with ``multi_precision=True``: the fp32 master's held rows are updated as a
    float32 table is (within ULPS of torch's), the bf16 weight is the master rounded."""
    theirs_p = _params()
    ours_p = [torch.nn.Parameter(p.detach().to(torch.bfloat16)) for p in theirs_p]
    with torch.no_grad():  # the same start: the bf16 values in float32
        for a, b in zip(theirs_p, ours_p, strict=True):
            a.copy_(b.float())
    theirs = torch.optim.SparseAdam(theirs_p)
    ours = dropin.SparseAdam(ours_p, multi_precision=True)
    for t in range(1, 6):
        for p, q, grad in zip(theirs_p, ours_p, _grads(t), strict=True):
            grad = grad.coalesce()
            values = grad.values().to(torch.bfloat16)  # representable in both
            p.grad = _coo(grad.indices(), values.float(), grad.shape)
            q.grad = _coo(grad.indices(), values, grad.shape)
        theirs.step()
        ours.step()
    for p, q in zip(theirs_p, ours_p, strict=True):
        master = ours.state[q]["master"]
        assert ulps(master, p) <= ULPS
        assert torch.equal(q, master.to(torch.bfloat16))


def _refused(opt: torch.optim.Optimizer, params: list[torch.Tensor], error: Any, message: str):
    before = [p.detach().clone() for p in params]
    state = copy.deepcopy(opt.state_dict())
    with pytest.raises(error, match=message):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    after = opt.state_dict()
    assert after["state"].keys() == state["state"].keys()
    for index, st in state["state"].items():
        for key, value in st.items():
            got = after["state"][index][key]
            assert torch.equal(got, value) if isinstance(value, torch.Tensor) else got == value
    assert [q for g in opt.param_groups for q in g["params"]] == params  # (by identity)


def test_refusals_write_nothing() -> None:
    """A dense gradient (torch's RuntimeError and message), what the row step refuses (a
    state buffer of another shape), a step count that is no count:
    each names the parameter, and the weights, the state and the param groups stay as they
    were, a parameter that came before the culprit included."""
    params = _params()
    opt = dropin.SparseAdam(params)
    _run([(opt, params)], range(1, 3))
    grads = _grads(3)
    for p, grad in zip(params, grads, strict=True):
        p.grad = grad
    params[1].grad = grads[1].to_dense()
    message = r"SparseAdam: parameter 1's grad is dense. SparseAdam does not support dense"
    _refused(opt, params, RuntimeError, message)
    params[1].grad = grads[1]
    opt.state[params[2]]["exp_avg_sq"] = torch.zeros(3, 9)
    _refused(opt, params, ValueError, r"parameter 2's state\['exp_avg_sq'\]")
    opt.state[params[2]]["exp_avg_sq"] = torch.zeros(9, 3)
    opt.state[params[0]]["step"] = torch.tensor(-1)
    _refused(opt, params, ValueError, r"parameter 0's state\['step'\] = tensor\(-1\)")
    opt.state[params[0]]["step"] = torch.tensor(2)
    opt.step()  # accepted once put right


def test_refused_parameters() -> None:
    """torch's constructor refuses complex parameters (ours in every group added too); a
    parameter listed twice is refused at the step, as every class of ours does."""
    complex_p = torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="parameter 0 of the group is complex"):
        dropin.SparseAdam([complex_p])
    p = torch.nn.Parameter(torch.zeros(3))
    opt = dropin.SparseAdam([p])
    with pytest.raises(ValueError, match="complex"):
        opt.add_param_group({"params": [complex_p]})
    assert len(opt.param_groups) == 1
    with pytest.warns(UserWarning, match="duplicate parameters"):  # torch.optim's warning
        opt = dropin.SparseAdam([p, p])
    p.grad = _coo(torch.tensor([[1]]), [1.0], (3,))
    with pytest.raises(ValueError, match="parameter 0 is listed again as parameter 1"):
        opt.step()
    assert not opt.state and torch.equal(p, torch.zeros(3))


def test_the_spec_named_class_steps_dense_gradients() -> None:
    """``TorchSparseAdam`` (the rule's own class) applies the equations to every element of a
    dense gradient: where every element is held, the drop-in's sparse step."""
    from generated.torch import TorchSparseAdam

    dense_p, sparse_p = _params()[:2], _params()[:2]
    dense, sparse = TorchSparseAdam(dense_p), dropin.SparseAdam(sparse_p)
    for t in range(1, 4):
        g = torch.Generator().manual_seed(t)
        for p, q in zip(dense_p, sparse_p, strict=True):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.to_sparse()
        dense.step()
        sparse.step()
    for p, q in zip(dense_p, sparse_p, strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_grad_scaler(backend: str) -> None:
    """``torch.amp.GradScaler`` scales the sparse gradients; a step with an infinite one is
    skipped (its count too), as torch's SparseAdam is under the same scaler. On the Triton
    kernels (``backend="triton"``: GradScaler's flags would stay on the device, the counts
    advanced speculatively) a step of gathered rows reads them on the host instead: a rolled
    back count would have been the rows', not the parameter's."""
    tables = []
    for _ in range(2):
        torch.manual_seed(0)
        tables.append(torch.nn.Embedding(20, 4, sparse=True))
    opts = [
        torch.optim.SparseAdam(tables[0].parameters()),
        dropin.SparseAdam(tables[1].parameters(), backend=backend),
    ]
    scalers = [torch.amp.GradScaler("cpu", init_scale=1024.0) for _ in range(2)]
    for t in range(5):
        rows = torch.tensor([1, 2, 2, 3 + t])
        for table, opt, scaler in zip(tables, opts, scalers, strict=True):
            opt.zero_grad()
            scaler.scale((table(rows) ** 2).sum()).backward()
            if t == 2:
                table.weight.grad = _coo([[1]], torch.full((1, 4), torch.inf), (20, 4))
            scaler.step(opt)
            scaler.update()
    assert ulps(tables[1].weight, tables[0].weight) <= ULPS
    assert opts[1].state_dict()["state"][0]["step"] == opts[0].state_dict()["state"][0]["step"] == 4


def test_distributed_checkpoint_state_dict() -> None:
    """``torch.distributed.checkpoint``'s state dict functions (one process): saved with the
    int step count; loading into an optimizer without state needs ``init_state()`` first (DCP
    would initialise it with a step on dense zero gradients, which SparseAdam refuses, torch's
    as ours: the message says so), then it resumes where the saved one stood."""
    from torch.distributed.checkpoint import state_dict as dcp

    params = _params()
    opt = dropin.SparseAdam(params)
    _run([(opt, params)], range(1, 4))
    saved = dcp.get_optimizer_state_dict(torch.nn.ParameterList(params), opt)
    assert [saved["state"][str(i)]["step"] for i in range(3)] == [3, 3, 3]
    fresh = _params()
    with torch.no_grad():
        for a, b in zip(fresh, params, strict=True):
            a.copy_(b)
    resumed = dropin.SparseAdam(fresh)
    with pytest.raises(RuntimeError, match=r"grad is dense.*call init_state\(\) before it"):
        dcp.set_optimizer_state_dict(torch.nn.ParameterList(fresh), resumed, copy.deepcopy(saved))
    for p in fresh:
        p.grad = None
    resumed.init_state()
    dcp.set_optimizer_state_dict(torch.nn.ParameterList(fresh), resumed, copy.deepcopy(saved))
    _run([(opt, params), (resumed, fresh)], range(4, 7))
    assert all(torch.equal(a, b) for a, b in zip(fresh, params, strict=True))
