"""Adamax exactly as torch.optim.Adamax computes it: the drop-in ``Adamax``.

Kingma & Ba (2015), "Adam: A Method for Stochastic Optimization", section 7.1. Follows
``torch.optim.Adamax`` (torch 2.13, single-tensor path), names and defaults included; the
MXNet-semantics rule is ``adamax``.

torch's code (followed here; states ``exp_avg`` = m, ``exp_inf`` = u):
    g = (-grad if maximize else grad) + weight_decay * w
    m <- m + (1 - beta1) * (g - m)                      # lerp
    u <- max(beta2 * u, |g| + eps)
    w <- w - lr / (1 - beta1^t) * m / u

Unlike MXNet 1.9.1's Adamax, eps is added to |g| inside the maximum.

At weight_decay = 0 (torch's default) the update runs without weight decay (the special case
``no_decay``: the value substituted exactly), which is what torch computes there, an infinite
weight included (torch skips weight decay at 0; ``0 * inf`` would be NaN).
"""

import sympy as sp

from codegen.spec import Rule, nonnegative, torch_lerp, unit

RULE = Rule("torch_adamax", __doc__)
lr = RULE.hyper("lr", 0.002, nonnegative(), doc="learning rate")
beta1 = RULE.hyper("beta1", 0.9, unit(), doc="decay of the first moment (betas[0])")
beta2 = RULE.hyper("beta2", 0.999, unit(), doc="decay of the infinity norm (betas[1])")
eps = RULE.hyper("eps", 1e-8, nonnegative(), doc="added to |g| inside the maximum")
weight_decay = RULE.hyper("weight_decay", 0.0, nonnegative(), doc="L2 penalty")
maximize = RULE.flag("maximize", False, doc="ascend: use -grad")
w, g, t = RULE.weight, RULE.grad, RULE.t
exp_avg = RULE.state("exp_avg", 0, doc="first moment m")
exp_inf = RULE.state("exp_inf", 0, doc="exponentially weighted infinity norm u")

G = RULE.let("G", (1 - 2 * maximize) * g + weight_decay * w)
m_new = RULE.update(exp_avg, torch_lerp(exp_avg, G, 1 - beta1))  # exp_avg.lerp_(g, 1 - beta1)
u_new = RULE.update(exp_inf, sp.Max(beta2 * exp_inf, sp.Abs(G) + eps))
RULE.update(w, w - lr / (1 - beta1**t) * m_new / u_new)

RULE.test_case(beta1=0.3)  # lerp weight 1 - beta1 >= 0.5: torch_lerp's other form

# torch's default: no weight decay (torch skips it at 0, so an infinite weight keeps its value
# where 0 * inf would be NaN), and one multiply-add less per element
RULE.special_case("no_decay", {weight_decay: 0}, doc="no weight decay")

RULE.torch_equivalent(
    "Adamax",
    {
        "lr": "lr",
        "beta1": "betas[0]",
        "beta2": "betas[1]",
        "eps": "eps",
        "weight_decay": "weight_decay",
        "maximize": "maximize",
    },
    {exp_avg: ("exp_avg", 1), exp_inf: ("exp_inf", 1)},
)
RULE.drop_in(
    "Adamax", "lr, betas, eps, weight_decay, foreach, *, maximize, differentiable, capturable"
)
