"""lr=0 is a legal learning rate (a step that moves no weight), as in torch.optim, where the
rule allows it: torch.distributed.checkpoint initialises optimizer state with a step at lr=0.
The rules that divide by lr (or whose step size does not vanish with it) refuse it."""

from __future__ import annotations

import pytest
import torch
from conftest import class_inputs

from generated.torch import RULES

REFUSE_ZERO_LR = {"ftrl", "ftml", "madgrad"}  # 1/lr (ftrl, ftml); step lr + epsilon (madgrad)
# torch.optim.ASGD steps by the eta its previous step computed from lr: lr=0 acts a step later.
LAGGED = {"torch_asgd"}
# torch.optim.Rprop's lr only initialises per-element step sizes, clamped to step_size_min: at
# lr=0 it still moves by step_size_min (1e-6), as the drop-in must; checked against torch.
AS_TORCH = {"torch_rprop": torch.optim.Rprop}


def _run(cls: type, grads: list[torch.Tensor], zero_from: int) -> torch.Tensor:
    """The weight after one step per gradient, lr=0 from step ``zero_from`` on."""
    w = torch.nn.Parameter(torch.linspace(-2.0, 3.0, 24).reshape(4, 6))
    opt = cls([w])
    for t, g in enumerate(grads, 1):
        if t == zero_from:
            opt.param_groups[0]["lr"] = 0.0
        w.grad = g.clone()
        opt.step(**class_inputs(opt, t))
    return w.detach().clone()


@pytest.mark.parametrize("name", sorted(RULES))
def test_lr_zero(name: str) -> None:
    """At lr=0 a first step (torch.distributed.checkpoint's initialisation) moves nothing and a
    later one does not depend on the gradient (a rule keeping momentum in weight units, as
    MXNet's RMSprop(centered) and SGD momentum do, still coasts on it, as in MXNet)."""
    cls = RULES[name]
    if "lr" not in cls.META.HYPERPARAMS:
        pytest.skip(f"{name} has no learning rate")
    gen = torch.Generator().manual_seed(7)
    grads = [torch.randn(4, 6, generator=gen) for _ in range(5)]
    if not cls.META.LEGAL["lr"].contains(0.0):  # the spec says so: lr=0 refused
        with pytest.raises(ValueError, match=r"lr=0\.0 is outside"):
            _run(cls, grads[:1], 1)
        return
    if name in AS_TORCH:
        ours, theirs = _run(cls, grads, 1), _run(AS_TORCH[name], grads, 1)
        assert torch.allclose(ours, theirs, rtol=0, atol=1e-6)
        assert not torch.equal(ours, torch.linspace(-2.0, 3.0, 24).reshape(4, 6))
        return
    if name in LAGGED:
        other = [*grads[:4], -3.0 * grads[4]]
        assert torch.equal(_run(cls, grads, 4), _run(cls, other, 4))
        assert not torch.equal(_run(cls, grads, 5), _run(cls, other, 5))  # not vacuous
        return
    start = torch.linspace(-2.0, 3.0, 24).reshape(4, 6)
    assert torch.equal(_run(cls, grads[:1], 1), start), f"{name}: lr=0 moved the weights"
    other = [*grads[:3], -3.0 * grads[3]]
    a, b = _run(cls, grads[:4], 4), _run(cls, other, 4)
    assert torch.equal(a, b), f"{name}: at lr=0 the weights depend on the gradient"
    assert not torch.equal(_run(cls, grads[:4], 5), _run(cls, other, 5))  # not vacuous


def test_the_rules_that_divide_by_lr_refuse_it_in_their_spec() -> None:
    """test_lr_zero takes a rule's refusal of lr=0 from its spec (``positive()``): these do."""
    legal = {n: RULES[n].META.LEGAL.get("lr") for n in RULES}
    assert {
        n for n, lr in legal.items() if lr is not None and not lr.contains(0.0)
    } >= REFUSE_ZERO_LR
