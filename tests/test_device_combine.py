"""The combination of a reduction's per-chunk partials: one pairwise tree in float64
(``triton_reduce.add_partials`` on the host, ``combine_on_device`` on CUDA), the same bits
either way, so a step's sums do not depend on where they were added.

The references are independent of the runtime's code: the tree written out recursively here,
``math.fsum`` (exact, then rounded) for how close the tree comes, and the host path itself for
the device kernel (run by the interpreter on CPU tensors, as on a GPU run it runs on CUDA).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import DEVICE

from optgen_runtime import triton_cache, triton_chunks, triton_reduce
from optgen_runtime.triton_reduce import (
    COMBINE_GROUP,
    add_partials,
    combine_on_device,
    combine_partials,
    combine_plan,
    device_plan,
)


def tree(values: list[float]) -> float:
    """The pairwise tree of ``values`` padded with zeros to a power of two, recursively."""
    if len(values) == 1:
        return values[0]
    size = 1 << (len(values) - 1).bit_length()
    padded = values + [0.0] * (size - len(values))
    return tree(padded[: size // 2]) + tree(padded[size // 2 :])


def partials(rows: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    spread = np.exp(rng.uniform(-30, 30, (rows, width)))
    return (rng.standard_normal((rows, width)) * spread).astype(np.float32)


def bits(x: float) -> bytes:
    return np.float64(x).tobytes()


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 1000, 1025])
def test_add_partials_is_the_pairwise_tree(rows: int) -> None:
    p = partials(rows, 2, seed=rows)
    got = add_partials(p)
    for k in range(2):
        column = [float(v) for v in p[:, k]]
        assert bits(got[k]) == bits(tree(column) + 0.0)
        exact = math.fsum(column)
        scale = math.fsum(abs(v) for v in column)
        assert abs(got[k] - exact) <= max(1, math.ceil(math.log2(rows))) * 2**-52 * scale


def test_a_zero_total_is_positive_zero_and_nan_and_inf_propagate() -> None:
    zeros = np.array([[-0.0], [-0.0], [-0.0]], dtype=np.float32)
    assert bits(add_partials(zeros)[0]) == bits(0.0)
    kinds = {"s": "sum", "hi": "max", "lo": "min"}
    found = combine_partials(np.full((2, 3), -0.0, np.float32), kinds, list(kinds))
    assert [bits(found[name]) for name in kinds] == [bits(0.0)] * 3
    p = np.array([[1.0], [np.inf], [-np.inf], [2.0]], dtype=np.float32)
    assert math.isnan(add_partials(p)[0])
    p = np.array([[1.0], [np.inf], [5.0]], dtype=np.float32)
    assert add_partials(p)[0] == math.inf
    p = np.array([[1.0, 1.0], [np.nan, 3.0]], dtype=np.float32)
    found = combine_partials(p, {"a": "max", "b": "min"}, ["a", "b"])
    assert math.isnan(found["a"]) and found["b"] == 1.0


@pytest.mark.parametrize(
    ("counts", "levels"),
    [([1], 1), ([1024], 1), ([1025], 2), ([3, 1024 * 1024], 2), ([1, 1024 * 1024 + 1], 3)],
)
def test_the_plan_covers_every_segment_once_per_level(counts: list[int], levels: int) -> None:
    counts_array = np.array(counts, dtype=np.int64)
    starts = np.cumsum(counts_array) - counts_array + 7  # segments need not start at row 0
    plan = combine_plan(starts, counts_array)
    assert len(plan) == levels
    for first, count in plan:
        assert (count >= 1).all() and (count <= COMBINE_GROUP).all()
        covered = np.concatenate([np.arange(f, f + c) for f, c in zip(first, count, strict=True)])
        assert len(np.unique(covered)) == len(covered) == int(counts_array.sum())
        counts_array = -(-counts_array // COMBINE_GROUP)
        starts = np.cumsum(counts_array) - counts_array
    assert (counts_array == 1).all()


def test_the_device_combine_gives_the_host_bits() -> None:
    """Segments of 1 to 2,049 chunks (two levels), starting anywhere, with inf and NaN; sums,
    maxima and minima: every result the host's, to the bit."""
    counts = np.array([1, 3, 1024, 1025, 2049, 7], dtype=np.int64)
    starts = np.cumsum(counts) - counts + 5
    p = partials(int(starts[-1] + counts[-1] + 2), 3)
    p[starts[4] + 7, 1] = np.nan
    p[starts[3] + 1000, 0] = np.inf
    p[starts[5] : starts[5] + 7] = -0.0  # a zero total, and a max and min of zeros
    kinds, names = {"a": "sum", "b": "max", "c": "min"}, ["a", "b", "c"]
    device = torch.device(DEVICE)
    plan = device_plan(starts, counts, device)
    found = combine_on_device(torch.from_numpy(p.ravel().copy()).to(device), plan, kinds, names)
    assert found.shape == (len(counts), 3)
    for j, (start, count) in enumerate(zip(starts, counts, strict=True)):
        host = combine_partials(p[start : start + count], kinds, names)
        for k, name in enumerate(names):
            assert bits(found[j, k]) == bits(host[name]), (j, name)


def test_lamb_steps_the_same_bits_with_the_sums_added_on_the_device(monkeypatch) -> None:
    """LAMB's step_multi and step (the chunk table's and the single-tensor reductions) with
    the partials combined by the kernel (as on CUDA) and on the host: the same weights and
    states, over tensors of one chunk to 1,025 (two levels)."""
    from generated.triton import lamb

    torch.manual_seed(0)
    sizes = [5, 4096, lamb.BLOCK_SIZE * 1025 - 3]
    weights = [torch.randn(n, device=DEVICE) for n in sizes]
    grads = [torch.randn(n, device=DEVICE) * 1e-2 for n in sizes]
    runs, calls = [], []
    kernel_combine = triton_reduce.combine_on_device

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return kernel_combine(*args, **kwargs)

    for module in (triton_reduce, triton_chunks):  # step's reduce_sums, step_multi's table
        monkeypatch.setattr(module, "combine_on_device", counted)
    for where in (set(), {"cuda", "cpu"}):  # on the host, then by the kernel
        monkeypatch.setattr(triton_reduce, "DEVICE_COMBINE", where)
        triton_cache.TABLES.clear()
        ws = [w.clone() for w in weights]
        states = [lamb.init_state(w) for w in ws]
        lamb.step_multi(ws, grads, states, 1, lr=1e-2)
        single = weights[0].clone()
        lamb.step(single, grads[0], lamb.init_state(single), 1, lr=1e-2)
        runs.append((ws, states, single))
    assert len(calls) == 2  # step_multi's and step's, in the second run
    (a, sa, one_a), (b, sb, one_b) = runs
    assert torch.equal(one_a, one_b)
    for wa, wb, xa, xb in zip(a, b, sa, sb, strict=True):
        assert torch.equal(wa, wb)
        assert all(torch.equal(xa[k], xb[k]) for k in lamb.STATES)
    assert not torch.equal(a[2], weights[2])
