"""Adam and AdamW exactly as torch.optim computes them: the drop-ins ``Adam`` and ``AdamW``.

Kingma & Ba (2015), "Adam: A Method for Stochastic Optimization"; Loshchilov & Hutter (2019),
"Decoupled Weight Decay Regularization"; Reddi et al. (2018) for ``amsgrad``. Follows
``torch.optim.Adam`` / ``torch.optim.AdamW`` (torch 2.13, single-tensor path), names and
defaults included; the MXNet-semantics rules are ``adam``, ``adamw`` and ``amsgrad``.

torch's code (followed here; states ``exp_avg`` = m, ``exp_avg_sq`` = v, ``max_exp_avg_sq``):
    g = -grad if maximize else grad
    decoupled_weight_decay: w <- w * (1 - lr * weight_decay);  else g <- g + weight_decay * w
    m <- m + (1 - beta1) * (g - m)                      # lerp
    v <- beta2 * v + ((1 - beta2) * g) * g             # addcmul_: no g^2 formed
    amsgrad: vmax <- max(vmax, v), used for v below
    w <- w - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

Unlike MXNet's Adam, eps is added after the bias correction of sqrt(v), and weight decay is
never clipped (torch has no rescale_grad or clip_gradient). ``AdamW`` is torch's subclass with
``decoupled_weight_decay=True`` and ``weight_decay=0.01``. Without amsgrad there is no
``max_exp_avg_sq`` (``absent_when``), as torch keeps none: two buffers per parameter, torch's
memory.

At weight_decay = 0 (torch's default) the update runs without weight decay, coupled or decoupled
(the special case ``no_decay``: the value substituted exactly, both forms vanish), which is what
torch computes there, an infinite weight included (torch skips weight decay at 0; ``0 * inf``
would be NaN).
"""

import sympy as sp

from codegen.spec import Rule, as_is, nonnegative, torch_lerp, unit

RULE = Rule("torch_adam", __doc__)
lr = RULE.hyper("lr", 0.001, nonnegative(), doc="learning rate")
beta1 = RULE.hyper("beta1", 0.9, unit(), doc="decay of the first moment (betas[0])")
beta2 = RULE.hyper("beta2", 0.999, unit(), doc="decay of the second moment (betas[1])")
eps = RULE.hyper("eps", 1e-8, nonnegative(), doc="added to the corrected sqrt(v)")
weight_decay = RULE.hyper("weight_decay", 0.0, nonnegative(), doc="L2 penalty (or decoupled)")
amsgrad = RULE.flag("amsgrad", False, doc="use the running maximum of v (AMSGrad)")
maximize = RULE.flag("maximize", False, doc="ascend: use -grad")
decoupled = RULE.flag("decoupled_weight_decay", False, doc="decay the weight (AdamW)")
w, g, t = RULE.weight, RULE.grad, RULE.t
exp_avg = RULE.state("exp_avg", 0, doc="first moment m")
exp_avg_sq = RULE.state("exp_avg_sq", 0, doc="second moment v")
max_exp_avg_sq = RULE.state(
    "max_exp_avg_sq", 0, doc="running maximum of v (amsgrad)", absent_when={amsgrad: False}
)

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
vmax_new = RULE.update(
    max_exp_avg_sq,
    sp.Piecewise((sp.Max(max_exp_avg_sq, v_new), amsgrad > 0), (max_exp_avg_sq, True)),
)
vhat = sp.Piecewise((vmax_new, amsgrad > 0), (v_new, True))
denom = RULE.let("denom", sp.sqrt(vhat) / sp.sqrt(1 - beta2**t) + eps)
RULE.update(w, w * decay - lr / (1 - beta1**t) * m_new / denom)

RULE.test_case(beta1=0.3)  # lerp weight 1 - beta1 >= 0.5: torch_lerp's other form

# torch's default: no weight decay (torch skips it at 0, so an infinite weight keeps its value
# where 0 * inf would be NaN), and one multiply-add less per element; without amsgrad first (no
# max_exp_avg_sq), then with it (the first runs wherever that buffer is absent)
RULE.special_case("plain", {weight_decay: 0, amsgrad: False}, doc="no weight decay or amsgrad")
RULE.special_case("no_decay", {weight_decay: 0}, doc="no weight decay")

RULE.torch_equivalent(
    "Adam",
    {
        "lr": "lr",
        "beta1": "betas[0]",
        "beta2": "betas[1]",
        "eps": "eps",
        "weight_decay": "weight_decay",
        "amsgrad": "amsgrad",
        "maximize": "maximize",
        "decoupled_weight_decay": "decoupled_weight_decay",
    },
    {exp_avg: ("exp_avg", 1), exp_avg_sq: ("exp_avg_sq", 1), max_exp_avg_sq: ("max_exp_avg_sq", 1)},
)
RULE.drop_in(
    "Adam",
    "lr, betas, eps, weight_decay, amsgrad, *, foreach, maximize, capturable, differentiable, "
    "fused, decoupled_weight_decay",
)
RULE.drop_in(
    "AdamW",
    "lr, betas, eps, weight_decay, amsgrad, *, maximize, foreach, capturable, differentiable, "
    "fused",
    weight_decay=0.01,
    decoupled_weight_decay=True,
)
