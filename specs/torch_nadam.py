"""NAdam (and NAdamW) exactly as torch.optim.NAdam computes it: the drop-in ``NAdam``.

Dozat (2016), "Incorporating Nesterov Momentum into Adam". Follows ``torch.optim.NAdam`` (torch
2.13, single-tensor path), names and defaults included; the MXNet-semantics rule is ``nadam``.

torch's code (followed here; states ``exp_avg`` = m, ``exp_avg_sq`` = v, host state
``mu_product`` = M, the running product of the momentum schedule, starting at 1):
    g = -grad if maximize else grad
    decoupled_weight_decay: w <- w * (1 - lr * weight_decay);  else g <- g + weight_decay * w
    mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay)); mu_t1 likewise at t + 1
    M <- M * mu_t
    m <- m + (1 - beta1) * (g - m);  v <- beta2 * v + (1 - beta2) * g^2
    denom = sqrt(v / (1 - beta2^t)) + eps
    w <- w - lr (1 - mu_t) / (1 - M) * g / denom - lr mu_t1 / (1 - M mu_t1) * m / denom

torch keeps M as a float32 tensor (its default scalar dtype) and multiplies it in float32 by
mu_t rounded to float32 (``mu_product *= mu``), then reads it as a double (``.item()``); so does
this spec (``f32``), at every weight dtype: float64 weights step with torch's M too.

At weight_decay = 0 (torch's default) the update runs without weight decay, coupled or decoupled
(the special case ``no_decay``: the value substituted exactly, both forms vanish), which is what
torch computes there, an infinite weight included (torch skips weight decay at 0; ``0 * inf``
would be NaN).
"""

import sympy as sp

from codegen.spec import Rule, as_is, f32, nonnegative, torch_lerp, unit

RULE = Rule("torch_nadam", __doc__, class_name="TorchNAdam")
lr = RULE.hyper("lr", 0.002, nonnegative(), doc="learning rate")
beta1 = RULE.hyper("beta1", 0.9, unit(), doc="decay of the first moment (betas[0])")
beta2 = RULE.hyper("beta2", 0.999, unit(), doc="decay of the second moment (betas[1])")
eps = RULE.hyper("eps", 1e-8, nonnegative(), doc="added to the corrected sqrt(v)")
weight_decay = RULE.hyper("weight_decay", 0.0, nonnegative(), doc="L2 penalty (or decoupled)")
momentum_decay = RULE.hyper("momentum_decay", 0.004, nonnegative(), doc="momentum schedule decay")
decoupled = RULE.flag("decoupled_weight_decay", False, doc="decay the weight (NAdamW)")
maximize = RULE.flag("maximize", False, doc="ascend: use -grad")
w, g, t = RULE.weight, RULE.grad, RULE.t
exp_avg = RULE.state("exp_avg", 0, doc="first moment m")
exp_avg_sq = RULE.state("exp_avg_sq", 0, doc="second moment v")
mu_product = RULE.host_state("mu_product", 1.0, doc="running product of the momentum schedule M")

# decoupled: the weight never enters G (0 * an infinite weight would be NaN), as torch's
G = RULE.let(
    "G",
    sp.Piecewise(
        ((1 - 2 * maximize) * g, decoupled > 0),
        ((1 - 2 * maximize) * g + weight_decay * w, True),
    ),
)
decay = RULE.let("decay", sp.Piecewise((1 - lr * weight_decay, decoupled > 0), (1, True)))
mu_t = RULE.let("mu_t", beta1 * (1 - sp.Rational(1, 2) * sp.Float("0.96") ** (t * momentum_decay)))
mu_t1 = RULE.let(
    "mu_t1", beta1 * (1 - sp.Rational(1, 2) * sp.Float("0.96") ** ((t + 1) * momentum_decay))
)
M_new = RULE.update(mu_product, f32(mu_product * f32(mu_t)))  # torch's float32 tensor
m_new = RULE.update(exp_avg, torch_lerp(exp_avg, G, 1 - beta1))  # exp_avg.lerp_(g, 1 - beta1)
# torch's addcmul_(g, g, value=1 - beta2): ((1 - beta2) * g) * g, never g**2 (overflows first)
v_new = RULE.update(exp_avg_sq, beta2 * exp_avg_sq + as_is((1 - beta2) * G) * G)
denom = RULE.let("denom", sp.sqrt(v_new / (1 - beta2**t)) + eps)
RULE.update(
    w,
    w * decay
    - lr * (1 - mu_t) / (1 - M_new) * G / denom
    - lr * mu_t1 / (1 - M_new * mu_t1) * m_new / denom,
)

RULE.test_case(beta1=0.3)  # lerp weight 1 - beta1 >= 0.5: torch_lerp's other form

# torch's default: no weight decay (torch skips it at 0, so an infinite weight keeps its value
# where 0 * inf would be NaN), and one multiply-add less per element
RULE.special_case("no_decay", {weight_decay: 0}, doc="no weight decay")

RULE.torch_equivalent(
    "NAdam",
    {
        "lr": "lr",
        "beta1": "betas[0]",
        "beta2": "betas[1]",
        "eps": "eps",
        "weight_decay": "weight_decay",
        "momentum_decay": "momentum_decay",
        "decoupled_weight_decay": "decoupled_weight_decay",
        "maximize": "maximize",
    },
    {exp_avg: ("exp_avg", 1), exp_avg_sq: ("exp_avg_sq", 1), mu_product: ("mu_product", 1)},
)
RULE.drop_in(
    "NAdam",
    "lr, betas, eps, weight_decay, momentum_decay, decoupled_weight_decay, *, foreach, maximize, "
    "capturable, differentiable",
)
