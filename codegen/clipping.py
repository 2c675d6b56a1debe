"""Gradient clipping by the global norm, for any spec: ``torch.nn.utils.clip_grad_norm_`` as
equations, over every tensor updated together (a parameter group; a ``step_multi`` call)."""

from __future__ import annotations

import sympy as sp

from codegen.spec import Rule


def global_norm_clip(
    rule: Rule, grad: sp.Expr, max_norm: sp.Expr, name: str = "grad_sq"
) -> sp.Expr:
    """``grad * min(1, max_norm / (||grad||_group + 1e-6))``, torch's ``clip_grad_norm_``.

    Declares the group reduction ``name`` (the sum of ``grad**2`` over the group): one more
    reduction phase per step, and one host synchronisation on the GPU path. A NaN or inf in any
    gradient of the group makes every gradient NaN (torch's default ``error_if_nonfinite=False``).
    """
    total = rule.norm(name, grad, group=True)
    return grad * sp.Min(1, max_norm / (total + sp.Float("1e-6")))
