"""MXNet's gradient preprocessing (and its sign) as equations, shared by every spec.

MXNet 1.9.1 hands every rule ``rescale_grad`` (rho), ``clip_gradient`` (c, off unless set) and
``wd`` (lambda), and each rule combines them in its own order (``shared/reference/mxnet_rules.md``,
section 3). The three forms it uses are written here once, in SymPy:

- ``clipped()``        = clip_c(rho*g)                (wd added elsewhere by the rule)
- ``wd_outside_clip()`` = clip_c(rho*g) + lambda*w     (sgd, nag, signum, lbsgd, lars)
- ``wd_inside_clip()``  = clip_c(rho*g + lambda*w)     (adam, adamax, nadam, ftml, rmsprop)

and, for the rules run by MXNet's SGD-family kernels, their float32 scalars: ``times_clipped(s)``
(s times clip_c(rho*g), ``(s*rho)*g`` with clipping off), ``lr_clipped()``, ``times_wd(s)``,
``lr_wd()``.

``mxnet_sign(x)`` is the sign MXNet's signsgd/signum kernels compute, (x > 0) - (x < 0): 0 at 0 and
at NaN. SymPy's ``sp.sign`` stays available for rules with torch's semantics (NaN stays NaN).

``clip_gradient=None`` means "off" and is lowered to +inf, for which clip_c is the identity
(NaN still propagates: max/min are NaN-propagating in every target). optgen accepts ``None`` or a
value > 0; MXNet's treatment of 0 differs between its fused and Python optimizers, so 0 is refused.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import sympy as sp

from codegen.spec import Legal, Rule, f32, nonnegative, positive

# clip_gradient = None is lowered to +inf: the one value past the largest double, which a legal
# finite clip_gradient is at most. ``clip_gradient > UNCLIPPED_ABOVE`` is "clipping off".
UNCLIPPED_ABOVE = sp.Float(sys.float_info.max)


def clip(x: sp.Expr, c: sp.Expr) -> sp.Expr:
    """clip_c(x) = min(max(x, -c), c), as MXNet's kernels compute it."""
    return sp.Min(sp.Max(x, -c), c)


def mxnet_sign(x: sp.Expr) -> sp.Expr:
    """MXNet's sign, ``(x > 0) - (x < 0)``: 1, -1, and 0 at +-0 and at NaN (NaN compares false).

    Written as ``sign(x) where |x| > 0, else 0``, which takes the same value everywhere (sign of
    +-inf is +-1, NaN fails the test), lowered to one select whose mask is almost always true:
    per NumPy chunk abs, greater, sign and where instead of two selects on data-dependent masks
    (about 4x faster on 10 M float32 values); in Triton a few register ops, no extra load/store.
    """
    return sp.Piecewise((sp.sign(x), sp.Abs(x) > 0), (0, True))


@dataclass(frozen=True)
class Common:
    """The hyperparameters every MXNet optimizer takes, as symbols of one rule."""

    rule: Rule
    lr: sp.Symbol | None  # None for a rule without a learning rate (adadelta)
    wd: sp.Symbol
    rescale_grad: sp.Symbol
    clip_gradient: sp.Symbol

    def clipped(self, extra: sp.Expr = sp.S.Zero) -> sp.Expr:
        """clip_c(rho*g + extra)."""
        return clip(self.rescale_grad * self.rule.grad + extra, self.clip_gradient)

    def wd_outside_clip(self) -> sp.Expr:
        """clip_c(rho*g) + lambda*w."""
        return self.clipped() + self.wd * self.rule.weight

    def wd_inside_clip(self) -> sp.Expr:
        """clip_c(rho*g + lambda*w)."""
        return self.clipped(self.wd * self.rule.weight)

    def clipping_off(self) -> sp.Boolean:
        """A host condition, true where clip_gradient is None (``UNCLIPPED_ABOVE``)."""
        return self.clip_gradient > UNCLIPPED_ABOVE

    def times_clipped(self, scale: sp.Expr) -> sp.Expr:
        """scale * clip_c(rho*g) as MXNet 1.9.1's SGD-family kernels compute it, with float32
        scalars (``multi_sgd_update``, ``multi_sgd_mom_update``, ``signum_update``): ``scale *
        clip(rho * g)``, and with clipping off ``(scale * rho) * g`` (two host scalars chosen
        per step: one multiply per element either way). ``scale``: a float32 value (``f32``).
        The product of two float32 values is exact in double: a float32 kernel's scalar rounds
        it as the float32 multiply does, a float64 one keeps it (MXNet's double kernels)."""
        rho, off = f32(self.rescale_grad), self.clipping_off()
        outer = sp.Piecewise((scale * rho, off), (scale, True))
        inner = sp.Piecewise((1, off), (rho, True))
        return outer * clip(inner * self.rule.grad, self.clip_gradient)

    def lr_clipped(self) -> sp.Expr:
        """lr * clip_c(rho*g) as MXNet's SGD kernels compute it (:meth:`times_clipped`)."""
        return self.times_clipped(f32(self.lr))

    def lr_wd(self) -> sp.Expr:
        """lr * lambda as MXNet's SGD kernels take it: a product of two float32 scalars."""
        return self.times_wd(f32(self.lr))

    def times_wd(self, scale: sp.Expr) -> sp.Expr:
        """scale * lambda, a product of two float32 scalars (``scale``: a float32 value), exact
        in double: rounded as the float32 multiply by a float32 kernel's scalar."""
        return scale * f32(self.wd)


def common(rule: Rule, lr: float | None = 0.01, lr_legal: Legal | None = None) -> Common:
    """Declare ``lr``, ``wd``, ``rescale_grad``, ``clip_gradient`` with MXNet's defaults.

    MXNet's base ``Optimizer`` uses lr = 0.01 unless the subclass sets its own default.
    ``lr=None`` declares no learning rate, for a rule that has none (AdaDelta ignores it).
    ``lr`` is legal at 0 (a step that moves no weight, as torch.optim allows, and as
    torch.distributed.checkpoint's state initialisation needs); a rule that divides by lr
    declares ``lr_legal=positive()``.
    """
    legal = lr_legal or nonnegative()
    return Common(
        rule,
        None if lr is None else rule.hyper("lr", lr, legal, doc="learning rate"),
        rule.hyper("wd", 0.0, nonnegative(), doc="weight decay (L2) coefficient"),
        rule.hyper("rescale_grad", 1.0, doc="gradient multiplier (Gluon: 1/batch_size)"),
        rule.hyper(
            "clip_gradient",
            None,
            positive(allow_none=True),
            none=math.inf,
            doc="clip the rescaled gradient to [-c, c]; None: no clipping",
        ),
    )
