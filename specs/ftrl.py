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
enters only the denominator. optgen writes the closed form as MXNet master does,
    w_{i+1} = -sign(z_{i+1}) * max(|z_{i+1}| - lamda1, 0) / ((beta + sqrt(n_{i+1})) / lr + wd),
which is the same number: where |z| > lamda1 the numerators agree to the bit, elsewhere both are
0, and a NaN z gives NaN in both (1.9.1 multiplies by the indicator, so NaN * 0 stays NaN).

A sparse gradient (``nn.Embedding(sparse=True)``; MXNet's ``row_sparse``) steps as
``grad.to_dense()`` would, every row updated: MXNet 1.9.1 updates lazily only a ``row_sparse``
weight, and falls back to the dense update for a dense one, as torch's parameters are.
"""

import sympy as sp

from codegen.mxnet import common
from codegen.spec import Rule, nonnegative, positive

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
z_new = RULE.update(z, z + G - (sp.sqrt(n + G**2) - sp.sqrt(n)) * w / mx.lr)
n_new = RULE.update(n, n + G**2)
denominator = RULE.let("denominator", (beta + sp.sqrt(n_new)) / mx.lr + mx.wd)
RULE.update(w, -sp.sign(z_new) * sp.Max(sp.Abs(z_new) - lamda1, 0) / denominator)
