"""AdaMax: Adam with the infinity norm of past gradients in place of their root mean square.

Kingma & Ba (2015), "Adam: A Method for Stochastic Optimization", section 7.1. MXNet 1.9.1
``mx.optimizer.Adamax`` (Python NDArray ops, no fused op).

Seed's equations (tutorial):
    v_{i+1} = beta1 * v_i + (1 - beta1) * grad(w_i)
    g_inf_{i+1} = max(beta2 * g_inf_i, |grad(w_i)|)
    w_{i+1} = w_i - lr / (g_inf_{i+1} + epsilon) * v_{i+1} / (1 - beta1^{i+1})

MXNet's code (1.9.1, followed here except for epsilon; states ``mean`` = m, ``u``, starting at 0):
    G = clip(rescale_grad * g + wd * w_i, clip_gradient)     # wd INSIDE the clip
    lr_t = lr / (1 - beta1^t)                                # host scalar, once per step
    m_{i+1} = beta1 * m_i + (1 - beta1) * G
    u_{i+1} = max(beta2 * u_i, |G|)
    w_{i+1} = w_i - lr_t * m_{i+1} / u_{i+1}

Difference from MXNet 1.9.1, on purpose (optgen's policy): 1.9.1 has no epsilon, so an element
whose G has been exactly 0 since the first step gets 0/0 = NaN. optgen adds ``epsilon`` (default
1e-8, as the tutorial, the paper's Adam and MXNet master) to u_{i+1} in the denominator; with
u of order |G| this changes a step by about epsilon / |G| relative. ``epsilon=0`` gives 1.9.1's
formula exactly, NaN included. MXNet master also moves wd outside the clip; optgen keeps 1.9.1's
placement. torch.optim.Adamax adds eps inside the max (u = max(beta2 * u, |g| + eps)).

A sparse gradient (``nn.Embedding(sparse=True)``; MXNet's ``row_sparse``) steps as
``grad.to_dense()`` would, every row updated: MXNet 1.9.1 has no sparse kernel for this rule and
falls back to the dense one.
"""

import sympy as sp

from codegen.mxnet import common
from codegen.spec import Rule, nonnegative, unit

RULE = Rule("adamax", __doc__, class_name="Adamax", mxnet="adamax")
mx = common(RULE, lr=0.002)
RULE.sparse("dense")
beta1 = RULE.hyper("beta1", 0.9, unit(), doc="decay of the first moment")
beta2 = RULE.hyper("beta2", 0.999, unit(), doc="decay of the infinity norm")
epsilon = RULE.hyper("epsilon", 1e-8, nonnegative(), doc="added to u (0: MXNet 1.9.1 exactly)")
w, t = RULE.weight, RULE.t
mean = RULE.state("mean", 0, doc="first moment m")
u = RULE.state("u", 0, doc="exponentially weighted infinity norm u")

G = RULE.let("G", mx.wd_inside_clip())
lr_t = RULE.let("lr_t", mx.lr / (1 - beta1**t))
RULE.torch_equivalent(
    "Adamax",
    {"lr": "lr", "beta1": "betas[0]", "beta2": "betas[1]", "epsilon": "eps", "wd": "weight_decay"},
    {mean: ("exp_avg", 1), u: ("exp_inf", 1)},
)
mean_new = RULE.update(mean, beta1 * mean + (1 - beta1) * G)
u_new = RULE.update(u, sp.Max(beta2 * u, sp.Abs(G)))
RULE.update(w, w - lr_t * mean_new / (u_new + epsilon))
