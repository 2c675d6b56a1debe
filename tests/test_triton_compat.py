"""optgen_runtime.triton_compat's interpreter patches: under ``TRITON_INTERPRET=1`` a kernel
sees a float argument and a bfloat16 value as a compiled kernel on a GPU does (the references:
torch's own conversions and IEEE signs). On CUDA the same tests check the compiled kernels."""

from __future__ import annotations

import torch
from conftest import DEVICE

from optgen_runtime.triton_compat import tl, triton

SPECIALS = [1e-39, -2.75e-40, 9.2e-41, float("nan"), -float("nan"), float("inf"), -float("inf")]
SPECIALS += [3.4e38, -3.4e38, 3.3961776e38, 0.0, -0.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8]


@triton.jit
def _casts(x_ptr, narrowed_ptr, b_ptr, widened_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    tl.store(narrowed_ptr + offs, x.to(tl.bfloat16), mask=mask)
    b = tl.load(b_ptr + offs, mask=mask).to(tl.float32)
    tl.store(widened_ptr + offs, b, mask=mask)


@triton.jit
def _scaled(out_ptr, scale, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    scale = tl.cast(scale, tl.float32)
    tl.store(out_ptr + offs, scale * tl.full((BLOCK,), 1.0, tl.float32), mask=offs < n)


def test_bfloat16_casts_round_to_nearest_even_and_widen_exactly() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(2000, generator=g), torch.tensor(SPECIALS)]).to(DEVICE)
    b = torch.cat([torch.randn(2000, generator=g), torch.tensor(SPECIALS)]).bfloat16().to(DEVICE)
    narrowed = torch.empty(x.shape, dtype=torch.bfloat16, device=DEVICE)
    widened = torch.empty(x.shape, dtype=torch.float32, device=DEVICE)
    _casts[(1,)](x, narrowed, b, widened, x.numel(), BLOCK=4096)
    want = x.bfloat16()
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(narrowed), nan)
    assert torch.equal(narrowed.view(torch.int16)[~nan], want.view(torch.int16)[~nan])
    wide = b.float()
    nan = torch.isnan(wide)
    assert torch.equal(torch.isnan(widened), nan)
    assert torch.equal(widened.view(torch.int32)[~nan], wide.view(torch.int32)[~nan])


def test_a_negative_zero_argument_keeps_its_sign() -> None:
    for scale in (-0.0, 0.0, -1.5, 1e39):
        out = torch.empty(4, device=DEVICE)
        _scaled[(1,)](out, scale, 4, BLOCK=4)
        want = torch.tensor([scale] * 4, dtype=torch.float64).float()  # 1e39: inf, as fp32
        assert torch.equal(out.cpu().view(torch.int32), want.view(torch.int32)), (scale, out)
