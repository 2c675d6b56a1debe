"""Hutchinson's estimate of the Hessian diagonal, the ``hessian`` input of AdaHessian.

``D = E[z * (H z)]`` over random vectors z with independent +-1 entries (Rademacher; or
standard normal): for each sample, H z comes from one more backward pass through the gradients'
own graph (``loss.backward(create_graph=True)``), never from the Hessian itself. Computed as
pytorch-optimizer 4.1.0's ``AdaHessian`` computes it inside its step
(``BaseOptimizer.compute_hutchinson_hessian``): the same draws (``torch.randint_like(p, 0, 2)
* 2 - 1``, or ``torch.randn_like``, from torch's global generator, parameter after parameter),
the same ``torch.autograd.grad`` call, each sample's ``z * Hz`` added with weight 1 / samples.
Like that reference, and unlike the paper (Yao et al. 2021, D^(s)), it does no spatial
averaging over convolution kernels: average the estimates yourself for that variant.

Usage with ``generated.torch.AdaHessian`` (``step`` takes one estimate per parameter, in
param_groups order; a callable is called after the closure)::

    loss = criterion(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward(create_graph=True)
    opt.step(hessian=hessian_diagonal(opt))

Hand-written runtime: imports torch only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def _params(source: Any) -> list[torch.Tensor]:
    if hasattr(source, "param_groups"):  # an optimizer: its parameters in param_groups order
        return [p for group in source.param_groups for p in group["params"]]
    return list(source)


@torch.no_grad()
def hessian_diagonal(
    params: Iterable[torch.Tensor] | Any,
    *,
    samples: int = 1,
    distribution: str = "rademacher",
) -> list[torch.Tensor | None]:
    """One Hutchinson estimate of the Hessian diagonal per parameter of ``params`` (tensors, or
    an optimizer: its param_groups in order), from gradients built with ``create_graph=True``;
    None for a parameter without a gradient (or one that does not require it), which a step
    skips anyway. ``samples`` random vectors are averaged."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"hessian_diagonal: samples must be an int >= 1, got {samples!r}")
    if distribution not in ("rademacher", "gaussian"):
        raise ValueError(
            f"hessian_diagonal: distribution must be 'rademacher' or 'gaussian', "
            f"got {distribution!r}"
        )
    everything = _params(params)
    used = [
        p for p in everything if p.requires_grad and p.grad is not None and not p.grad.is_sparse
    ]
    for p in used:
        if p.grad.grad_fn is None:
            raise ValueError(
                "hessian_diagonal: a gradient has no graph; call loss.backward(create_graph=True)"
            )
    estimates = {id(p): torch.zeros_like(p) for p in used}
    grads = [p.grad for p in used]
    for i in range(samples if used else 0):
        if distribution == "rademacher":
            zs = [torch.randint_like(p, 0, 2) * 2.0 - 1.0 for p in used]
        else:
            zs = [torch.randn_like(p) for p in used]
        hzs = torch.autograd.grad(grads, used, grad_outputs=zs, retain_graph=i < samples - 1)
        for hz, z, p in zip(hzs, zs, used, strict=True):
            estimates[id(p)].addcmul_(hz, z, value=1.0 / samples)
    return [estimates.get(id(p)) for p in everything]
