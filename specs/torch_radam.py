"""RAdam (and RAdamW) exactly as torch.optim.RAdam computes it: the drop-in ``RAdam``.

Liu et al. (2020), "On the Variance of the Adaptive Learning Rate and Beyond". Follows
``torch.optim.RAdam`` (torch 2.13, single-tensor path), names and defaults included; the
MXNet-semantics rule is ``radam``.

torch's code (followed here; states ``exp_avg`` = m, ``exp_avg_sq`` = v):
    g = -grad if maximize else grad
    decoupled_weight_decay: w <- w * (1 - lr * weight_decay);  else g <- g + weight_decay * w
    m <- m + (1 - beta1) * (g - m);  v <- beta2 * v + (1 - beta2) * g^2
    mhat = m / (1 - beta1^t)
    rho_inf = 2 / (1 - beta2) - 1;  rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)
    rho_t > 5: r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
               w <- w - mhat * lr * sqrt(1 - beta2^t) / (sqrt(v) + eps) * r_t
    else:      w <- w - mhat * lr

At weight_decay = 0 (torch's default) the update runs without weight decay, coupled or decoupled
(the special case ``no_decay``: the value substituted exactly, both forms vanish), which is what
torch computes there, an infinite weight included (torch skips weight decay at 0; ``0 * inf``
would be NaN).
"""

import sympy as sp

from codegen.spec import Rule, as_is, nonnegative, torch_lerp, unit

RULE = Rule("torch_radam", __doc__, class_name="TorchRAdam")
lr = RULE.hyper("lr", 0.001, nonnegative(), doc="learning rate")
beta1 = RULE.hyper("beta1", 0.9, unit(), doc="decay of the first moment (betas[0])")
beta2 = RULE.hyper("beta2", 0.999, unit(), doc="decay of the second moment (betas[1])")
eps = RULE.hyper("eps", 1e-8, nonnegative(), doc="added to sqrt(v)")
weight_decay = RULE.hyper("weight_decay", 0.0, nonnegative(), doc="L2 penalty (or decoupled)")
decoupled = RULE.flag("decoupled_weight_decay", False, doc="decay the weight (RAdamW)")
maximize = RULE.flag("maximize", False, doc="ascend: use -grad")
w, g, t = RULE.weight, RULE.grad, RULE.t
exp_avg = RULE.state("exp_avg", 0, doc="first moment m")
exp_avg_sq = RULE.state("exp_avg_sq", 0, doc="second moment v")

# decoupled: the weight never enters G (0 * an infinite weight would be NaN), as torch's
G = RULE.let(
    "G",
    sp.Piecewise(
        ((1 - 2 * maximize) * g, decoupled > 0),
        ((1 - 2 * maximize) * g + weight_decay * w, True),
    ),
)
decay = RULE.let("decay", sp.Piecewise((1 - lr * weight_decay, decoupled > 0), (1, True)))
m_new = RULE.update(exp_avg, torch_lerp(exp_avg, G, 1 - beta1))  # exp_avg.lerp_(g, 1 - beta1)
# torch's addcmul_(g, g, value=1 - beta2): ((1 - beta2) * g) * g, never g**2 (overflows first)
v_new = RULE.update(exp_avg_sq, beta2 * exp_avg_sq + as_is((1 - beta2) * G) * G)
mhat = RULE.let("mhat", m_new / (1 - beta1**t))
rho_inf = RULE.let("rho_inf", 2 / (1 - beta2) - 1)
rho_t = RULE.let("rho_t", rho_inf - 2 * t * beta2**t / (1 - beta2**t))
rectified = rho_t > 5
r_t = RULE.let(
    "r_t",
    sp.Piecewise(
        (
            sp.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)),
            rectified,
        ),
        (0, True),
    ),
)
adaptive = sp.sqrt(1 - beta2**t) / (sp.sqrt(v_new) + eps)
RULE.update(w, w * decay - mhat * lr * sp.Piecewise((adaptive * r_t, rectified), (1, True)))

RULE.test_case(beta1=0.3)  # lerp weight 1 - beta1 >= 0.5: torch_lerp's other form

# torch's default: no weight decay (torch skips it at 0, so an infinite weight keeps its value
# where 0 * inf would be NaN), and one multiply-add less per element
RULE.special_case("no_decay", {weight_decay: 0}, doc="no weight decay")

RULE.torch_equivalent(
    "RAdam",
    {
        "lr": "lr",
        "beta1": "betas[0]",
        "beta2": "betas[1]",
        "eps": "eps",
        "weight_decay": "weight_decay",
        "decoupled_weight_decay": "decoupled_weight_decay",
        "maximize": "maximize",
    },
    {exp_avg: ("exp_avg", 1), exp_avg_sq: ("exp_avg_sq", 1)},
)
RULE.drop_in(
    "RAdam",
    "lr, betas, eps, weight_decay, decoupled_weight_decay, *, foreach, maximize, capturable, "
    "differentiable",
)
# A faster beta2 (rho_t > 5 from step 6 on): many rectified steps, besides the derived settings.
RULE.test_case(steps=10, beta2=0.9, lr=0.01)
