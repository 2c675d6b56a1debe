"""Centered RMSProp (Graves): RMSProp on the running variance, with momentum on the step.

Graves (2013), "Generating Sequences With Recurrent Neural Networks", equations (38)-(45).
MXNet 1.9.1 ``mx.optimizer.RMSProp`` with ``centered=True`` (fused op ``rmspropalex_update``).

Seed's equations (tutorial; beta is gamma1, gamma is gamma2):
    E[g]_{i+1} = beta * E[g]_i + (1 - beta) * grad(w_i)
    E[g^2]_{i+1} = beta * E[g^2]_i + (1 - beta) * grad(w_i)^2
    v_{i+1} = gamma * v_i - lr / sqrt(E[g^2]_{i+1} - E[g]_{i+1}^2 + epsilon) * grad(w_i)
    w_{i+1} = w_i + v_{i+1}

MXNet's code (1.9.1, followed here; states ``n``, ``g`` (running mean of G) and ``delta``, all
starting at 0):
    G = clip(rescale_grad * grad + wd * w_i, clip_gradient)     # wd INSIDE the clip
    n_{i+1} = (1 - gamma1) * G^2 + gamma1 * n_i
    g_{i+1} = (1 - gamma1) * G + gamma1 * g_i
    delta_{i+1} = gamma2 * delta_i - lr * G / sqrt(n_{i+1} - g_{i+1}^2 + epsilon)
    w_{i+1} = clip(w_i + delta_{i+1}, clip_weights)

The tutorial omits rescale_grad, clip_gradient, wd and ``clip_weights`` (None: off; MXNet treats
0 as off too, optgen accepts None or a value > 0). MXNet master renamed gamma1/gamma2 to ``rho``/
``momentum`` and moved wd outside the clip; optgen follows 1.9.1. torch.optim.RMSprop(
centered=True, momentum=gamma2) puts eps outside the root and keeps its buffer as -delta / lr.

A sparse gradient (``nn.Embedding(sparse=True)``; MXNet's ``row_sparse``) steps as
``grad.to_dense()`` would, every row updated: MXNet 1.9.1 has no sparse kernel for this rule and
falls back to the dense one.
"""

import math

import sympy as sp

from codegen.mxnet import clip, common
from codegen.spec import Rule, as_is, f32, positive, unit

RULE = Rule("rmsprop_centered", __doc__, class_name="RMSpropCentered", mxnet="rmsprop")
mx = common(RULE, lr=0.001)
RULE.sparse("dense")
gamma1 = RULE.hyper("gamma1", 0.9, unit(), doc="decay of the mean and mean square")
gamma2 = RULE.hyper("gamma2", 0.9, unit(), doc="momentum of the step delta")
epsilon = RULE.hyper("epsilon", 1e-8, positive(), doc="added inside the square root")
clip_weights = RULE.hyper(
    "clip_weights",
    None,
    positive(allow_none=True),
    none=math.inf,
    doc="clip the new weight to [-c, c]; None: no clipping",
)
w = RULE.weight
n = RULE.state("n", 0, doc="running mean square of G")
g = RULE.state("g", 0, doc="running mean of G")
delta = RULE.state("delta", 0, doc="step with momentum")

G = RULE.let("G", mx.wd_inside_clip())
# torch.optim.RMSprop(centered=True, momentum=gamma2) keeps buf with delta = -lr * buf.
RULE.torch_equivalent(
    "RMSprop",
    {"lr": "lr", "gamma1": "alpha", "gamma2": "momentum", "epsilon": "eps", "wd": "weight_decay"},
    {n: ("square_avg", 1), g: ("grad_avg", 1), delta: ("momentum_buffer", -mx.lr)},
    fixed={"centered": True},
)
# MXNet's RMSPropAlexUpdateKernel: (1.f - gamma1) * grad * grad, left to right (its plain
# RMSProp squares first: specs/rmsprop.py)
# (1.f - gamma1 in float32 from the float32 gamma1); delta = gamma2 * delta - lr * grad /
# sqrt(n - g * g + epsilon), the product lr * grad first (what 1.9.1 computes: every recorded
# step to the bit; the quotient first differs in about a third of the elements)
# (f32(gamma1) too, the kernel's number: the 40-digit reference's n - g**2 is then >= 0, as
# with decay + gamma == 1 exactly)
gamma = f32(gamma1)
decay = f32(1 - gamma)
n_new = RULE.update(n, as_is(decay * G) * G + gamma * n)
g_new = RULE.update(g, decay * G + gamma * g)
spread = as_is(n_new - g_new**2) + epsilon
delta_new = RULE.update(delta, gamma2 * delta - as_is(mx.lr * G) / sp.sqrt(spread))
RULE.update(w, clip(w + delta_new, clip_weights))
