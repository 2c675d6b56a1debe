"""Group reductions (issue 10): a reduction over every tensor updated together. Proven by
``adam_clip`` (global-norm clipping, ``codegen.clipping``) against torch.nn.utils.clip_grad_norm_
followed by torch.optim.Adam, through the torch class, the NumPy module's step_multi and the
Triton module's step_multi, over 20 steps on 1-D and 2-D weights in float32 and float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import triton_module

from generated.numpy import adam_clip
from generated.torch import AdamClip

SHAPES = [(7,), (5, 6), (40,), (3, 2, 4)]
STEPS = 20
# float64: equal up to rounding; float32: torch adds the norm in float32 (a norm of norms),
# optgen in float64: the clip factors differ by a few ulps, the weights by ~ulp(lr) per step.
BOUNDS = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-5, 2e-6)}


def data(dtype: torch.dtype, scale: float) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    gen = torch.Generator().manual_seed(7)
    weights = [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]
    grads = [
        [torch.randn(s, generator=gen, dtype=dtype) * scale for s in SHAPES] for _ in range(STEPS)
    ]
    return weights, grads


def reference(weights, grads, max_norm: float, wd: float) -> list[list[torch.Tensor]]:
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    opt = torch.optim.Adam(params, lr=0.01, weight_decay=wd)
    out = []
    for step in grads:
        for p, g in zip(params, step, strict=True):
            p.grad = g.clone()
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        opt.step()
        out.append([p.detach().clone() for p in params])
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    ("max_norm", "scale", "wd"), [(1.0, 1.0, 0.0), (0.5, 0.1, 0.01), (100.0, 1.0, 0.1)]
)
def test_torch_class_clips_by_the_groups_norm(
    dtype, max_norm: float, scale: float, wd: float
) -> None:
    """max_norm 1 with unit gradients clips every step; 0.5 with small gradients sometimes;
    100 never (the factor is exactly 1)."""
    weights, grads = data(dtype, scale)
    want = reference(weights, grads, max_norm, wd)
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    opt = AdamClip(params, lr=0.01, max_norm=max_norm, wd=wd)
    rtol, atol = BOUNDS[dtype]
    for step, expected in zip(grads, want, strict=True):
        for p, g in zip(params, step, strict=True):
            p.grad = g.clone()
        opt.step()
        for p, e in zip(params, expected, strict=True):
            torch.testing.assert_close(p.detach(), e, rtol=rtol, atol=atol)
    # not vacuous: clipping each tensor by its own norm gives other weights (after step 1,
    # which Adam makes scale-free)
    alone = torch.nn.Parameter(weights[0].clone())
    single = AdamClip([alone], lr=0.01, max_norm=max_norm, wd=wd)
    for step in grads[:5]:
        alone.grad = step[0].clone()
        single.step()
    if max_norm < 100:
        assert not torch.allclose(alone.detach(), want[4][0], rtol=0, atol=atol * 10)


def test_numpy_step_multi_is_the_group_and_step_is_one_tensor() -> None:
    weights, grads = data(torch.float64, 1.0)
    want = reference(weights, grads[:1], 1.0, 0.0)[0]
    ws = [w.numpy().copy() for w in weights]
    states = [adam_clip.init_state(w) for w in ws]
    adam_clip.step_multi(ws, [g.numpy() for g in grads[0]], states, 1, lr=0.01)
    for w, e in zip(ws, want, strict=True):
        np.testing.assert_allclose(w, e.numpy(), rtol=1e-12, atol=1e-14)
    alone = weights[0].numpy().copy()
    adam_clip.step(alone, grads[0][0].numpy(), adam_clip.init_state(alone), 1, lr=0.01)
    one = reference(weights[:1], [grads[0][:1]], 1.0, 0.0)[0][0]
    np.testing.assert_allclose(alone, one.numpy(), rtol=1e-12, atol=1e-14)


def test_triton_step_multi_equals_numpy_step_multi() -> None:
    module = triton_module("adam_clip")
    weights, grads = data(torch.float32, 1.0)
    ws = [w.numpy().copy() for w in weights]
    states = [adam_clip.init_state(w) for w in ws]
    tws = [w.clone() for w in weights]
    tstates = [module.init_state(w) for w in tws]
    for t, step in enumerate(grads[:3], start=1):
        adam_clip.step_multi(ws, [g.numpy() for g in step], states, t, lr=0.01)
        module.step_multi(tws, [g.clone() for g in step], tstates, t, lr=0.01)
    for w, tw in zip(ws, tws, strict=True):
        np.testing.assert_allclose(tw.numpy(), w, rtol=1e-6, atol=1e-7)


def test_a_refusal_in_any_tensor_writes_nothing_in_any() -> None:
    weights, grads = data(torch.float64, 1.0)
    ws = [w.numpy().copy() for w in weights]
    states = [adam_clip.init_state(w) for w in ws]
    bad = [g.numpy() for g in grads[0]]
    bad[2] = bad[2][:3]  # a wrong shape in the third tensor
    with pytest.raises(ValueError, match="shape"):
        adam_clip.step_multi(ws, bad, states, 1)
    for w, w0 in zip(ws, weights, strict=True):
        assert np.array_equal(w, w0.numpy())
    with pytest.raises(ValueError, match="share memory"):
        adam_clip.step_multi([ws[0], ws[0]], [bad[0], bad[0]], states[:2], 1)
