"""Host work that does not grow per step: the multi-tensor step's chunk table and checks are
cached while no buffer changes (``ChunkTable.cached``, ``check_tensors_each``, the torch classes'
``_checked_key``), host scalars computed once per distinct step count (``computed_each``). What
changes per step must still reach the kernels (an lr schedule, bias corrections, Philox keys),
and a buffer that changes must be checked again."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import DEVICE
from test_torch_classes import TORCH_DIFFERS, network, torch_peer

from generated.torch import RULES as CLASSES
from generated.triton import adam, sgld
from optgen_runtime.philox import tensor_seed
from optgen_runtime.triton_support import ChunkTable, check_tensors


def test_an_lr_schedule_and_bias_corrections_reach_cached_tables() -> None:
    """AdamW on the Triton backend (cached tables from step 2 on) with the learning rate
    changed every step by a scheduler follows torch.optim.AdamW with the same scheduler."""
    hp = dict(lr=0.01, wd=0.05)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=gen)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    ours, theirs = network(0), network(0)
    opt_ours = CLASSES["adamw"](ours.parameters(), backend="triton", **hp)
    opt_theirs = torch_peer("adamw", theirs.parameters(), hp, TORCH_DIFFERS)
    scheds = [torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.7) for o in (opt_ours, opt_theirs)]
    for _ in range(8):
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad(set_to_none=False)  # same gradient buffers every step: cache hits
            (model(x) - y).pow(2).mean().backward()
            opt.step()
        for sched in scheds:
            sched.step()
    assert opt_ours.param_groups[0]["lr"] == pytest.approx(0.01 * 0.7**8)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_chunk_table_is_reused_until_a_buffer_changes() -> None:
    torch.manual_seed(0)
    weights = [torch.randn(n, device=DEVICE) for n in (16, 40)]
    grads = [torch.randn_like(w) for w in weights]
    states = [adam.init_state(w) for w in weights]
    tables = [
        check_tensors("adam", w, g, s, adam.STATES)
        for w, g, s in zip(weights, grads, states, strict=True)
    ]
    first = ChunkTable.cached(tables, 1024, [() for _ in tables])
    assert ChunkTable.cached(tables, 1024, [() for _ in tables]) is first
    moved = [torch.randn(40, device=DEVICE), tables[1][1], *tables[1][2:]]
    assert ChunkTable.cached([tables[0], moved], 1024, [(), ()]) is not first
    reshaped = [t[:-16] for t in tables[1]]  # same addresses, fewer elements
    assert ChunkTable.cached([tables[0], reshaped], 1024, [(), ()]) is not first


def test_philox_keys_change_in_a_cached_table() -> None:
    """SGLD's per-tensor keys (stream seed of the step) live in the cached meta table: rewritten
    every step, so step_multi draws what one step per tensor draws, step after step."""
    torch.manual_seed(1)
    weights = [torch.randn(n, device=DEVICE) for n in (32, 1030)]
    grads = [torch.randn_like(w) for w in weights]
    states = [sgld.init_state(w) for w in weights]
    singles, single_states = [w.clone() for w in weights], copy.deepcopy(states)
    for t in (1, 2, 3):
        sgld.step_multi(weights, grads, states, t, lr=0.01, seed=7)
        for j, (w, g, s) in enumerate(zip(singles, grads, single_states, strict=True)):
            sgld.step(w, g, s, t, lr=0.01, seed=tensor_seed(7, j))
        assert all(torch.equal(a, b) for a, b in zip(weights, singles, strict=True)), t


def test_a_changed_buffer_is_checked_again() -> None:
    """Once a step passed with these buffers its checks are skipped; a gradient replaced by a
    strided view (module) or another parameter (class), a state tensor by a float64 one, is refused
    as on the first step, by the module's step_multi and by the torch class, before anything is
    written."""
    torch.manual_seed(2)
    weights = [torch.randn(4, 4, device=DEVICE) for _ in range(2)]
    grads = [torch.randn_like(w) for w in weights]
    states = [adam.init_state(w) for w in weights]
    adam.step_multi(weights, grads, states, 1)
    adam.step_multi(weights, grads, states, 2)
    before = [w.clone() for w in weights]
    with pytest.raises(ValueError, match="grad must be contiguous"):
        adam.step_multi(weights, [grads[0], grads[1].t()], states, 3)
    states[0]["mean"] = states[0]["mean"].double()
    with pytest.raises(TypeError, match="mean"):
        adam.step_multi(weights, grads, states, 3)
    assert all(torch.equal(a, b) for a, b in zip(weights, before, strict=True))

    params = [torch.nn.Parameter(torch.randn(4, 4, device=DEVICE)) for _ in range(2)]
    opt = CLASSES["adam"](params, backend="triton")
    for _ in range(3):
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
    params[1].grad = params[0].detach()  # another parameter's memory: updated and read
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match="share memory"):
        opt.step()
    params[1].grad = torch.ones_like(params[1])
    opt.state[params[0]]["var"] = opt.state[params[0]]["var"].double()
    with pytest.raises(TypeError, match="var"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))


def test_host_bench_runs_and_restores_the_stubs() -> None:
    """``python -m tools.bench --host``'s measurement on a small list: both optimizers step
    with their device work stubbed (nothing written), and the stubs are gone afterwards."""
    from tools import host_bench

    real = torch._foreach_mul_
    launch = ChunkTable._launch
    row = host_bench.bench_list([(4, 4)] * 5, steps=2)
    assert row["tensors"] == 5 and row["parameters"] == 80
    assert row["ours_launches"] == 1 and row["torch_foreach_calls"] > 0
    assert row["ours_ms"] > 0 and row["torch_ms"] > 0 and row["ratio"] > 0
    assert torch._foreach_mul_ is real and ChunkTable._launch is launch
    assert len(host_bench.gpt2_small_shapes()) == 148
