"""Host work that does not grow per step: the multi-tensor step's chunk table and checks are
cached while no buffer changes but the gradients' addresses (``prepared_table``, the torch
classes' ``_checked_key``), host scalars computed once per distinct step count (``step_rows``,
``computed_each``). What changes per step must still reach the kernels (an lr schedule, bias
corrections, Philox keys, new gradients), and a buffer that changes must be checked again."""

from __future__ import annotations

import copy
import gc
import inspect
import math
import weakref

import numpy as np
import pytest
import torch
from conftest import DEVICE
from test_torch_classes import TORCH_DIFFERS, network, torch_peer

from generated.torch import RULES as CLASSES
from generated.triton import adam, sgld, torch_nadam
from optgen_runtime.philox import tensor_seed
from optgen_runtime.triton_cache import TABLES, prepared_table, spans_overlap
from optgen_runtime.triton_chunks import ChunkTable
from optgen_runtime.triton_rows import ScalarRows, host_rows


def test_an_lr_schedule_and_bias_corrections_reach_cached_tables() -> None:
    """AdamW on the Triton backend (cached tables from step 2 on) with the learning rate
    changed every step by a scheduler follows torch.optim.AdamW with the same scheduler."""
    hp = dict(lr=0.01, wd=0.05)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=gen)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    ours, theirs = network(0).to(DEVICE), network(0)  # the kernels' device; torch's on CPU
    opt_ours = CLASSES["adamw"](ours.parameters(), backend="triton", **hp)
    opt_theirs = torch_peer("adamw", theirs.parameters(), hp, TORCH_DIFFERS)
    scheds = [torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.7) for o in (opt_ours, opt_theirs)]
    for _ in range(8):
        for model, opt, device in ((ours, opt_ours, DEVICE), (theirs, opt_theirs, "cpu")):
            opt.zero_grad(set_to_none=False)  # same gradient buffers every step: cache hits
            (model(x.to(device)) - y.to(device)).pow(2).mean().backward()
            opt.step()
        for sched in scheds:
            sched.step()
    assert opt_ours.param_groups[0]["lr"] == pytest.approx(0.01 * 0.7**8)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-5)


def _prepared(weights, grads, states, prechecked: bool = False) -> ChunkTable:
    return prepared_table(
        "adam", weights, grads, states, adam.STATES, (), None, 1024, None, prechecked
    )


def test_the_chunk_table_is_reused_until_a_buffer_changes() -> None:
    """The same buffers: the same table; gradients at new addresses: the same table with the
    gradient pointer row rewritten (and uploaded again); a weight that moved or shrank: a new
    table."""
    torch.manual_seed(0)
    weights = [torch.randn(n, device=DEVICE) for n in (16, 48)]  # one group: both vectorisable
    grads = [torch.randn_like(w) for w in weights]
    states = [adam.init_state(w) for w in weights]
    first = _prepared(weights, grads, states)
    assert _prepared(weights, grads, states) is first
    (group,) = first.groups
    rows = ScalarRows.of([[1.0], [2.0]])
    uploaded, _ = first._tables(group, rows)
    moved = [torch.randn_like(g) for g in grads]
    assert _prepared(weights, moved, states) is first
    assert group.meta[2:4].tolist() == [g.data_ptr() for g in moved]  # row 1: the gradients
    assert group.meta[0:2].tolist() == [w.data_ptr() for w in weights]
    assert group.stale == (2, 4)  # only that row goes to the device, into the same table
    meta, scalars = first._tables(group, rows)
    assert meta is uploaded and meta.tolist() == group.meta.tolist() and group.stale is None
    assert scalars[:2].tolist() == [1.0, 2.0] and scalars.data_ptr() % 16 == 0
    assert _prepared([weights[0], torch.randn(48, device=DEVICE)], moved, states) is not first
    shrunk = [weights[0], weights[1][:-16]]  # same addresses, fewer elements
    shrunk_states = [states[0], {k: v[:-16] for k, v in states[1].items()}]
    assert _prepared(shrunk, [moved[0], moved[1][:-16]], shrunk_states) is not first


def test_the_written_spans_are_kept_until_their_rows_are_rewritten() -> None:
    """The byte spans a group's launch writes (``written_spans``: GradScaler's flags are checked
    against them every step) are computed once and kept while only the gradients' row is
    rewritten (new gradients each step); a rewrite of a written row or of the sizes makes them
    anew, from the table."""
    torch.manual_seed(0)
    weights = [torch.randn(n, device=DEVICE) for n in (16, 48)]
    grads = [torch.randn_like(w) for w in weights]
    states = [adam.init_state(w) for w in weights]
    table = _prepared(weights, grads, states)
    (group,) = table.groups
    low, high = group.written_spans()
    buffers = [*weights, *(s[k] for k in adam.STATES for s in states)]
    expected = sorted((b.data_ptr(), b.data_ptr() + 4 * b.numel()) for b in buffers)
    assert sorted(zip(low.tolist(), high.tolist(), strict=True)) == expected
    assert _prepared(weights, [torch.randn_like(g) for g in grads], states) is table
    assert group.written_spans()[0] is low  # the gradients' row rewritten: kept
    group.rewrite(0, 2, [16, 32])  # row 0, the weights' pointers (a made-up move)
    assert group.written_spans()[0][:2].tolist() == [16, 32]
    group.rewrite(group.sizes_at, group.sizes_at + 2, [1, 2])
    assert group.written_spans()[1][:2].tolist() == [20, 40]


def test_written_over_finds_every_overlap_a_full_scan_finds() -> None:
    """``written_over`` (GradScaler's flags against the written spans, one bisect) agrees with
    a scan of every span, on random spans that overlap, nest, touch or are empty."""
    torch.manual_seed(0)
    weights = [torch.randn(16, device=DEVICE)]
    table = _prepared(weights, [torch.randn(16, device=DEVICE)], [adam.init_state(weights[0])])
    (group,) = table.groups
    rng = np.random.default_rng(0)
    for _ in range(200):
        low = rng.integers(0, 200, size=int(rng.integers(1, 8)))
        high = low + rng.integers(0, 40, size=low.size)  # some empty
        group.spans, group.reach = (low, high), None
        for start in range(0, 250, 3):
            end = start + int(rng.integers(1, 9))
            scan = bool(np.any((low < end) & (start < high) & (low < high)))
            assert group.written_over(start, end) == scan, (low, high, start, end)


def test_a_moved_gradient_is_read_at_its_new_address() -> None:
    """New gradient tensors every step (``zero_grad()`` and a backward pass), the old ones still
    alive with other values: step_multi (both with its own checks and prechecked) gives the bits
    of one ``step`` per tensor, step after step, and launches once: the cached table read the
    new addresses. A gradient moved off a 16-byte boundary puts its tensor in the scalar
    variant's launch (the table rebuilt), still with the same bits."""
    torch.manual_seed(4)
    for prechecked in (False, True):
        TABLES.clear()
        weights = [torch.randn(n, device=DEVICE) for n in (32, 1040, 64)]
        singles = [w.clone() for w in weights]
        states = [adam.init_state(w) for w in weights]
        single_states = copy.deepcopy(states)
        kept = []
        for t in range(1, 5):
            grads = [torch.randn_like(w) for w in weights]
            if t == 4:  # 4 bytes past a 16-byte boundary: not vectorisable
                grads[2] = torch.randn(65, device=DEVICE)[1:]
            kept.append(grads)
            launches = adam.step_multi(weights, grads, states, t, lr=0.1, prechecked=prechecked)
            assert launches == (2 if t == 4 else 1)
            for w, g, s in zip(singles, grads, single_states, strict=True):
                adam.step(w, g, s, t, lr=0.1)
            assert all(torch.equal(a, b) for a, b in zip(weights, singles, strict=True)), t


def _bad_grads(weights, states) -> list[tuple[list[torch.Tensor], type, str]]:
    """Gradient lists, each with one bad gradient, the error and the words that name it."""
    good = [torch.randn_like(w) for w in weights]

    def but(j: int, g: torch.Tensor) -> list[torch.Tensor]:
        return [g if k == j else x for k, x in enumerate(good)]

    return [
        (but(1, torch.randn(4, 3, device=DEVICE)), ValueError, "grad shape is \\(4, 3\\)"),
        (but(0, good[0].double()), TypeError, "grad dtype must be"),
        (but(1, torch.empty(4, 4, device="meta")), ValueError, "grad is on meta"),
        (but(1, states[1]["mean"]), ValueError, "grad and state\\['mean'\\] share memory"),
        (
            but(0, states[1]["var"]),
            ValueError,
            "tensor 0's grad and tensor 1's state\\['var'\\] share memory"
            "|tensor 1's state\\['var'\\] and tensor 0's grad share memory",
        ),
        (
            but(2, weights[0].view(-1)[4:].view(4, 3)),  # the tail of another weight
            ValueError,
            "tensor 0's weight and tensor 2's grad share memory",
        ),
    ]


def test_a_replaced_gradient_is_checked_again() -> None:
    """Between two steps whose buffers were cached, a gradient replaced by one of another shape,
    dtype or device, or one that overlaps a buffer the step writes (a state of its own tensor or
    of another, another tensor's weight), is refused as on a first step, naming it, with nothing
    written; then a good list of new gradients steps again."""
    torch.manual_seed(5)
    weights = [torch.randn(4, 4, device=DEVICE), torch.randn(4, 4, device=DEVICE)]
    weights.append(torch.randn(4, 3, device=DEVICE))
    states = [adam.init_state(w) for w in weights]
    for t in (1, 2):
        adam.step_multi(weights, [torch.randn_like(w) for w in weights], states, t)
    for grads, error, words in _bad_grads(weights, states):
        before = [w.clone() for w in weights], copy.deepcopy(states)
        with pytest.raises(error, match=words):
            adam.step_multi(weights, grads, states, 3)
        assert all(torch.equal(a, b) for a, b in zip(weights, before[0], strict=True))
        for s, b in zip(states, before[1], strict=True):
            assert all(torch.equal(s[k], b[k]) for k in s)
    adam.step_multi(weights, [torch.randn_like(w) for w in weights], states, 3)


def test_a_fresh_table_is_checked_even_when_prechecked() -> None:
    """``prechecked=True`` skips checks only on a table built from checked buffers: a call whose
    buffers are new is checked in full and refused, naming the culprit."""
    torch.manual_seed(6)
    weights = [torch.randn(8, device=DEVICE) for _ in range(2)]
    states = [adam.init_state(w) for w in weights]
    grads = [torch.randn_like(weights[0]), weights[0]]
    with pytest.raises(ValueError, match="share memory"):
        adam.step_multi(weights, grads, states, 1, prechecked=True)
    adam.step_multi(weights, [torch.randn_like(w) for w in weights], states, 1, prechecked=True)
    with pytest.raises(ValueError, match="grad shape"):
        adam.step_multi(
            weights, [grads[0], torch.randn(7, device=DEVICE)], states, 2, prechecked=True
        )


def test_a_cached_table_keeps_no_tensor_alive() -> None:
    """The cache holds addresses, not tensors: a step's gradients are freed once the caller
    drops them (set_to_none), so the cache costs no device memory."""
    weights = [torch.randn(16, device=DEVICE) for _ in range(3)]
    states = [adam.init_state(w) for w in weights]
    for t in (1, 2):
        grads = [torch.randn_like(w) for w in weights]
        refs = [weakref.ref(g) for g in grads]
        adam.step_multi(weights, grads, states, t)
        del grads
        gc.collect()
        assert all(r() is None for r in refs), t


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


@pytest.mark.skipif(
    DEVICE == "cuda", reason="tools.bench --host times CPU tensors (interpreter run)"
)
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
    from optgen_runtime import triton_chunks, triton_reduce

    combine = triton_chunks.combine_on_device
    sums = host_bench.bench_reductions([(4, 4)] * 5, steps=2)
    assert sums["lamb_ms"] > 0 and sums["adam_ms"] > 0
    assert triton_chunks.combine_on_device is combine and ChunkTable._launch is launch
    assert "cpu" not in triton_reduce.DEVICE_COMBINE


def test_the_host_bench_variants_take_turns() -> None:
    """The compared steps alternate in blocks (a change of load falls on all alike), each
    after its own setup, with launches counted per variant."""
    from tools import host_bench

    order: list[str] = []
    counts = {"ours": 0, "torch": 0}

    def variant(label: str) -> host_bench.Variant:
        def step() -> None:
            assert order[-1] == f"setup {label}"
            order.append(label)
            counts[label] += 2 if label == "ours" else 3

        return step, lambda: order.append(f"setup {label}")

    timed = host_bench.taking_turns({"ours": variant("ours"), "torch": variant("torch")}, 7, counts)
    steps = [x for x in order if not x.startswith("setup")]
    warm = host_bench.WARMUP
    assert steps[:2] == ["ours", "torch"]  # the first steps
    assert steps[2 : 2 + 2 * warm] == ["ours"] * warm + ["torch"] * warm
    timed_part = steps[2 + 2 * warm :]
    assert timed_part == ["ours"] * 5 + ["torch"] * 5 + ["ours"] * 2 + ["torch"] * 2
    assert timed["ours"][2] == {"ours": 2, "torch": 0} and timed["torch"][2]["torch"] == 3
    assert all(first >= 0 and median >= 0 for first, median, _ in timed.values())


def test_host_states_are_read_once_and_checked_as_before() -> None:
    """A rule whose host scalars take the host states (NAdam's ``mu_product``) reads them as one
    column per state: a NaN, a bool or a missing one is refused naming it, before anything is
    written; the values that differ per tensor give each tensor its own row and new state."""
    weights = [torch.randn(8, device=DEVICE) for _ in range(3)]
    grads = [torch.randn_like(w) for w in weights]
    states = [torch_nadam.init_state(w) for w in weights]
    before = [w.clone() for w in weights]
    for bad, error, words in (
        (math.nan, ValueError, "host state mu_product must be a finite float, got nan"),
        (True, ValueError, "host state mu_product must be a finite float, got True"),
        (None, ValueError, "state has no host state 'mu_product'"),
    ):
        broken = [dict(s) for s in states]
        if bad is None:
            del broken[2]["mu_product"]
        else:
            broken[2]["mu_product"] = bad
        with pytest.raises(error, match=words):
            torch_nadam.step_multi(weights, grads, broken, 1)
        assert all(torch.equal(a, b) for a, b in zip(weights, before, strict=True))
    states[1]["mu_product"] = 0.5
    singles, single_states = [w.clone() for w in weights], copy.deepcopy(states)
    torch_nadam.step_multi(weights, grads, states, 2)
    for w, g, s in zip(singles, grads, single_states, strict=True):
        torch_nadam.step(w, g, s, 2)
    assert all(torch.equal(a, b) for a, b in zip(weights, singles, strict=True))
    assert [s["mu_product"] for s in states] == [s["mu_product"] for s in single_states]
    assert states[0]["mu_product"] != states[1]["mu_product"]


def test_host_rows_tell_zero_from_minus_zero() -> None:
    """0.0 and -0.0 are one dict key; host code may tell them apart (``copysign``): each gets
    its own row, and a state's new value is its own."""

    def host_code(t: int, h: float) -> tuple[tuple[float, ...], dict[str, float]]:
        return (math.copysign(1.0, h) * t,), {"h": h}

    rows, new = host_rows("r", host_code, [1, 1, 1], ["h"], [[0.0, -0.0, 0.0]], {"s": "s"})
    assert rows.table()[:3].tolist() == [1.0, -1.0, 1.0]
    assert [math.copysign(1.0, n["h"]) for n in new] == [1.0, -1.0, 1.0]
    rows, new = host_rows("r", host_code, [1, 2, 1], ["h"], [[3.0, 3.0, 3.0]], {"s": "s"})
    assert rows.table()[:3].tolist() == [1.0, 2.0, 1.0] and len(rows.rows) == 2


def test_spans_overlap_agrees_with_a_pairwise_test() -> None:
    """The vectorised interval test of moved gradients against the written buffers, on random
    spans (touching ones do not overlap, empty ones never do), against the pairwise test."""
    rng = np.random.default_rng(7)
    for _ in range(300):
        cuts = np.sort(rng.choice(200, size=2 * rng.integers(0, 6), replace=False))
        low, high = cuts[0::2], cuts[1::2]  # disjoint, sorted: as written buffers are
        starts = rng.integers(0, 210, size=rng.integers(1, 4))
        ends = starts + rng.integers(0, 12, size=len(starts))
        pairwise = any(
            s < hi and lo < e
            for s, e in zip(starts, ends, strict=True)
            if e > s
            for lo, hi in zip(low, high, strict=True)
        )
        assert spans_overlap(low, high, starts, ends) == pairwise


def test_every_triton_step_multi_takes_prechecked() -> None:
    """The torch classes may pass ``prechecked=True`` to any rule's Triton ``step_multi``
    (the rules with row or column vectors and the matrix rules take it and check anyway)."""
    for name, cls in CLASSES.items():
        assert "prechecked" in inspect.signature(cls.TRITON.step_multi).parameters, name
