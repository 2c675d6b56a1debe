"""Shared by the tests of rules with row/column states (Adafactor, SM3, CAME): row-scaled
gradient data, a torch optimizer's trajectory, and the torch class checked step by step."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

STEPS = 20


def row_scaled_case(
    shape: tuple[int, ...], dtype: type, steps: int = STEPS
) -> tuple[np.ndarray, list[np.ndarray]]:
    """A weight and ``steps`` gradients whose scale varies from row to row (so that the row and
    column factors differ), seeded by the shape."""
    rng = np.random.default_rng(len(shape) * 100 + int(np.prod(shape)))
    w0 = np.asarray(rng.standard_normal(shape), dtype=dtype)
    scale = np.exp(rng.standard_normal(shape[:-1] + (1,) if shape else ()))
    grads = [np.asarray(rng.standard_normal(shape) * scale, dtype=dtype) for _ in range(steps)]
    return w0, grads


def trajectory(
    make: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
    w0: np.ndarray,
    grads: list[np.ndarray],
) -> list[np.ndarray]:
    """The weight after each step of the optimizer ``make([p])`` builds."""
    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = make([p])
    out = []
    for g in grads:
        p.grad = torch.from_numpy(g.copy())
        opt.step()
        out.append(p.detach().numpy().copy())
    return out


def check_torch_class(
    cls: type,
    hp: dict,
    w0: np.ndarray,
    grads: list[np.ndarray],
    want: list[np.ndarray],
    close: Callable[[np.ndarray, np.ndarray], None],
    state_key: str,
) -> None:
    """``cls(params, **hp)`` follows ``want`` step by step; its factored state ``state_key``
    survives a checkpoint round trip."""
    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = cls([p], **hp)
    for g, theirs in zip(grads, want, strict=True):
        p.grad = torch.from_numpy(g.copy())
        opt.step()
        close(p.detach().numpy(), theirs)
    saved = opt.state_dict()
    again = cls([torch.nn.Parameter(p.detach().clone())], **hp)
    again.load_state_dict(saved)
    assert torch.equal(again.state_dict()["state"][0][state_key], saved["state"][0][state_key])
