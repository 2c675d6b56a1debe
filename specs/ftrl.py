"""FTRL-Proximal: follow the regularized leader with per-element rates and L1/L2 regularization.

McMahan et al. (2013), "Ad Click Prediction: a View from the Trenches". MXNet 1.9.1
``mx.optimizer.Ftrl`` (fused op ``ftrl_update``).

Seed's equations (tutorial; eta is the accumulated squared gradient, lambda is lamda1):
    z_{i+1} = z_i + (sqrt(eta_i + grad(w_i)^2) - sqrt(eta_i)) * w_i / lr
    eta_{i+1} = eta_i + grad(w_i)^2
    w_{i+1} = [|z_{i+1}| > lambda] * (-lr / (beta + sqrt(eta_{i+1})))
              * (z_{i+1} - lambda * sign(z_{i+1}))

MXNet's code (1.9.1, followed here; states ``z`` and ``n`` = eta, starting at 0):
    G = clip(rescale_grad * g, clip_gradient)                 # no wd here
    z_{i+1} = z_i + G - (sqrt(n_i + G^2) - sqrt(n_i)) * w_i / lr
    n_{i+1} = n_i + G^2
    w_{i+1} = (sign(z_{i+1}) * lamda1 - z_{i+1}) / ((beta + sqrt(n_{i+1})) / lr + wd)
              * [|z_{i+1}| > lamda1]

The tutorial drops the + G term of z (and the sign of the correction); wd is the L2 strength and
enters only the denominator. In 1.9.1's float32 order: ``z + (G - (sqrt(n + G*G) - sqrt(n)) * w
/ lr)`` and ``((beta + sqrt(n)) / lr + wd)``, each quotient by lr a division (``as_is(x / lr)``):
every recorded MXNet step to the bit. optgen follows 1.9.1's form, the indicator a factor of 1 or 0:
where |z| <= lamda1 the weight is a zero signed as (sign(z) * lamda1 - z) / denominator is
(-0.0 for a z in (-lamda1, 0)), and a NaN z gives NaN (NaN * 0). MXNet master's closed form
-sign(z) * max(|z| - lamda1, 0) / denominator is the same number but for that sign of zero.

A sparse gradient (``nn.Embedding(sparse=True)``; MXNet's ``row_sparse``) steps as
``grad.to_dense()`` would, every row updated: MXNet 1.9.1 updates lazily only a ``row_sparse``
weight, and falls back to the dense update for a dense one, as torch's parameters are.
"""

import sympy as sp

from codegen.mxnet import common
from codegen.spec import Rule, as_is, nonnegative, positive

RULE = Rule("ftrl", __doc__, class_name="Ftrl", mxnet="ftrl")
# lr > 0: z and the weight divide by lr (the weight is recomputed from z, so lr=0 cannot be a
# step that moves nothing); the only MXNet rules refusing lr=0 are this one and FTML.
mx = common(RULE, lr=0.1, lr_legal=positive())
RULE.sparse("dense")
lamda1 = RULE.hyper("lamda1", 0.01, nonnegative(), doc="L1 regularization strength")
beta = RULE.hyper("beta", 1.0, nonnegative(), doc="added to sqrt(n) in the per-element rate")
w = RULE.weight
z = RULE.state("z", 0, doc="accumulated gradient minus the proximal correction")
n = RULE.state("n", 0, doc="sum of squared clipped gradients")

G = RULE.let("G", mx.clipped())
# 1.9.1's kernel in float32: z + (G - (sqrt(n + G*G) - sqrt(n)) * w / lr), each quotient by lr a
# division, the weight (sign(z) * lamda1 - z) / ((beta + sqrt(n)) / lr + wd) * gt(|z|, lamda1)
correction = as_is(as_is((sp.sqrt(n + G**2) - sp.sqrt(n)) * w) / mx.lr)
z_new = RULE.update(z, z + as_is(G - correction))
n_new = RULE.update(n, n + G**2)
denominator = RULE.let("denominator", as_is((beta + sp.sqrt(n_new)) / mx.lr) + mx.wd)
outside = sp.Piecewise((1, sp.Abs(z_new) > lamda1), (0, True))  # 1.9.1's gt(|z|, lamda1)
# as_is: z_{i+1} as stored (SymPy would fold z + G - ... into the numerator's sum)
RULE.update(w, as_is((sp.sign(z_new) * lamda1 - as_is(z_new)) / denominator) * outside)
