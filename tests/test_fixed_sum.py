"""``fixed_sum``: the per-block sum every reduction phase stores, the same bits in any order.

On a GPU ``tl.sum`` adds in an order set by the register layout Triton picks, which differs
between a multi-tensor kernel's vectorised variant (4 or 8 elements per thread) and its scalar
one: an H200 run of tools/gpu_check.py found LAMB's and LARS's block sums, hence their weights,
differing in the last bits between the two. ``fixed_sum`` adds in int64 fixed point, exactly.
Checked here against ``math.fsum`` (exact, independent), under permutations, with the
vectorisation hints on and off (a no-op under the interpreter; compiled on CUDA, where
tools/gpu_check.py runs this file), and on inf, NaN, subnormals and overflow.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import DEVICE

from optgen_runtime.triton_compat import tl, triton
from optgen_runtime.triton_reduce import fixed_sum

BLOCK = 1024


@triton.jit
def _block_sums(x_ptr, out_ptr, n, BLOCK_SIZE: tl.constexpr, ALIGNED: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    start = pid * BLOCK_SIZE
    if ALIGNED:
        start = tl.multiple_of(start, BLOCK_SIZE)
        x_ptr = tl.multiple_of(x_ptr, 16)
        n = tl.multiple_of(n, 16)
    offs = start + tl.arange(0, BLOCK_SIZE)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + pid, fixed_sum(tl.where(mask, x, 0.0)))


def block_sums(x: torch.Tensor, aligned: bool = False) -> np.ndarray:
    """``fixed_sum`` of each 1024-element block of ``x`` (float32, on the kernels' device)."""
    x = x.to(DEVICE).contiguous()
    blocks = max(1, triton.cdiv(x.numel(), BLOCK))
    out = torch.empty(blocks, dtype=torch.float32, device=DEVICE)
    _block_sums[(blocks,)](x, out, x.numel(), BLOCK_SIZE=BLOCK, ALIGNED=aligned)
    return out.cpu().numpy()


def test_a_block_sum_is_the_exact_sum_rounded() -> None:
    """Each term truncated to a multiple of 2**-40 times the largest, then one float32
    rounding: at most one float32 ulp of ``math.fsum`` plus that truncation, on
    data spanning 60 binades, with cancellation, and on squares as LAMB sums them."""
    rng = np.random.default_rng(0)
    cases = [
        rng.standard_normal(BLOCK),
        rng.standard_normal(BLOCK) ** 2,
        rng.standard_normal(BLOCK) * np.exp2(rng.integers(-30, 30, BLOCK)),
        np.concatenate([rng.standard_normal(BLOCK // 2)] * 2) * np.repeat([1, -1], BLOCK // 2),
        rng.standard_normal(37) * 1e-3,
    ]
    for data in cases:
        x = data.astype(np.float32)
        got = float(block_sums(torch.from_numpy(x))[0])
        exact = math.fsum(x.astype(np.float64))
        bound = np.spacing(np.float32(abs(exact))) + x.size * 2.0**-40 * np.abs(x).max()
        assert abs(got - exact) <= bound, (got, exact)


def test_any_order_and_either_variant_give_the_same_bits() -> None:
    """A block's elements permuted, and the same data through the vectorised variant (16-byte
    hints compiled in on CUDA): the same float32 bits every time. tl.sum's float32 adds would
    differ in the last bits here (checked: some permutation changes NumPy's pairwise float32
    sum, so the data can tell)."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(BLOCK) * np.exp2(rng.integers(-12, 12, BLOCK))).astype(np.float32)
    first = block_sums(torch.from_numpy(x)).view(np.uint32)
    pairwise = set()
    for k in range(8):
        perm = x[rng.permutation(BLOCK)]
        pairwise.add(np.sum(perm, dtype=np.float32).view(np.uint32).item())
        for aligned in (False, True):
            got = block_sums(torch.from_numpy(perm), aligned).view(np.uint32)
            assert np.array_equal(got, first), (k, aligned)
    assert len(pairwise) > 1  # float32 addition in another order does change these bits


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1.0, math.inf], math.inf),
        ([-math.inf, 2.0], -math.inf),
        ([math.inf, -math.inf], math.nan),
        ([math.nan, 1.0], math.nan),
        ([-math.inf, math.nan], math.nan),
        ([3e38, 3e38, 3e38], math.inf),  # finite terms, a sum past float32's range
        ([2.0**-149, 2.0**-149, 2.0**-148], 2.0**-147),  # subnormals, exactly
        ([0.0, -0.0], 0.0),
        ([], 0.0),  # a block of masked lanes only
    ],
)
def test_special_values(values: list[float], expected: float) -> None:
    """inf and NaN as IEEE addition gives them in any order; overflow to inf; subnormals
    exact; no terms: 0."""
    got = float(block_sums(torch.tensor(values, dtype=torch.float32))[0])
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == np.float32(expected)


def test_several_blocks_and_a_masked_tail() -> None:
    """Each 1024-element block summed alone, the last one partial (masked lanes add 0)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal(3 * BLOCK + 5).astype(np.float32)
    got = block_sums(torch.from_numpy(x))
    assert got.shape == (4,)
    for k, value in enumerate(got):
        exact = math.fsum(x[k * BLOCK : (k + 1) * BLOCK].astype(np.float64))
        assert abs(value - exact) <= 2 * np.spacing(np.float32(abs(exact)))
