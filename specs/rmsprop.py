"""RMSProp: divide the gradient by a running root mean square of recent gradients.

Tieleman & Hinton (2012), "Lecture 6.5 - rmsprop", COURSERA: Neural Networks for Machine Learning.
MXNet 1.9.1 ``mx.optimizer.RMSProp`` with ``centered=False`` (fused op ``rmsprop_update``); the
centered variant is ``rmsprop_centered``.

Seed's equations (tutorial; beta is gamma1):
    E[g^2]_{i+1} = beta * E[g^2]_i + (1 - beta) * grad(w_i)^2
    w_{i+1} = w_i - lr / sqrt(E[g^2]_{i+1} + epsilon) * grad(w_i)

MXNet's code (1.9.1, followed here; the state ``n`` starts at 0):
    G = clip(rescale_grad * g + wd * w_i, clip_gradient)     # wd INSIDE the clip
    n_{i+1} = (1 - gamma1) * G^2 + gamma1 * n_i
    w_{i+1} = clip(w_i - lr * G / sqrt(n_{i+1} + epsilon), clip_weights)

epsilon sits inside the square root. ``clip_weights`` (None: off) clips the new weight to
[-clip_weights, clip_weights]; MXNet treats 0 as off too, optgen accepts None or a value > 0.
MXNet's ``gamma2`` is used only by the centered variant, so this rule does not take it. MXNet
master renamed gamma1 to ``rho``, moved wd outside the clip and epsilon outside the root; optgen
follows 1.9.1. torch.optim.RMSprop(alpha=gamma1) puts eps outside the root.

A sparse gradient (``nn.Embedding(sparse=True)``; MXNet's ``row_sparse``) steps as
``grad.to_dense()`` would, every row updated: MXNet 1.9.1 has no sparse kernel for this rule and
falls back to the dense one.
"""

import math

import sympy as sp

from codegen.mxnet import clip, common
from codegen.spec import Rule, as_is, f32, positive, unit

RULE = Rule("rmsprop", __doc__, class_name="RMSprop", mxnet="rmsprop")
mx = common(RULE, lr=0.001)
RULE.sparse("dense")
gamma1 = RULE.hyper("gamma1", 0.9, unit(), doc="decay of the mean square")
epsilon = RULE.hyper("epsilon", 1e-8, positive(), doc="added to n inside the square root")
clip_weights = RULE.hyper(
    "clip_weights",
    None,
    positive(allow_none=True),
    none=math.inf,
    doc="clip the new weight to [-c, c]; None: no clipping",
)
w = RULE.weight
n = RULE.state("n", 0, doc="running mean square of G")

G = RULE.let("G", mx.wd_inside_clip())
RULE.torch_equivalent(
    "RMSprop",
    {"lr": "lr", "gamma1": "alpha", "epsilon": "eps", "wd": "weight_decay"},
    {n: ("square_avg", 1)},
)
# MXNet's RMSPropUpdateKernel: (1.f - gamma1) * (grad * grad) + gamma1 * n, 1.f - gamma1 in
# float32 from the float32 gamma1; then weight - lr * (grad / sqrt(n + epsilon))
# (f32(gamma1) too, the kernel's number: see specs/adam.py)
n_new = RULE.update(n, f32(1 - f32(gamma1)) * G**2 + f32(gamma1) * n)
RULE.update(w, clip(w - mx.lr * as_is(G / sp.sqrt(n_new + epsilon)), clip_weights))
