"""Averaged SGD exactly as torch.optim.ASGD computes it: the drop-in ``ASGD``.

Polyak & Juditsky (1992), "Acceleration of Stochastic Approximation by Averaging"; Bottou
(2012), "Stochastic Gradient Descent Tricks" for the step-size schedule. Follows
``torch.optim.ASGD`` (torch 2.13, single-tensor path), names and defaults included.

torch's code (followed here; state ``ax``, the average; host states ``eta`` and ``mu``, set at
the end of each step for the next one: eta starts at lr, mu at 1):
    g = (-grad if maximize else grad) + weight_decay * w
    w <- w * (1 - lambd * eta) - eta * g
    ax <- w if mu == 1 else ax + (w - ax) * mu
    eta <- lr / (1 + lambd * lr * t)^alpha;  mu <- 1 / max(1, t - t0)

At the first step eta is lr (torch's initial value; the host state starts at 0 and is set by
the first step). torch keeps eta and mu as float32 tensors (``torch.as_tensor`` of each new
value, its default dtype) and reads eta as a double (``.item()``); so does this spec (``f32``),
at every weight dtype: float64 weights step with torch's eta and mu too.

At weight_decay = 0 (torch's default) the update runs without weight decay (the special case
``no_decay``: the value substituted exactly), which is what torch computes there, an infinite
weight included (torch skips weight decay at 0; ``0 * inf`` would be NaN).
"""

import sympy as sp

from codegen.spec import Legal, Rule, f32, nonnegative

RULE = Rule("torch_asgd", __doc__, class_name="TorchASGD")
lr = RULE.hyper("lr", 0.01, nonnegative(), doc="learning rate")
lambd = RULE.hyper("lambd", 1e-4, nonnegative(), doc="decay term")
alpha = RULE.hyper("alpha", 0.75, Legal(), doc="power of the eta schedule")
t0 = RULE.hyper("t0", 1e6, Legal(), doc="the step at which averaging starts")
weight_decay = RULE.hyper("weight_decay", 0.0, nonnegative(), doc="L2 penalty")
maximize = RULE.flag("maximize", False, doc="ascend: use -grad")
w, g, t = RULE.weight, RULE.grad, RULE.t
ax = RULE.state("ax", 0, doc="the averaged weight")
eta = RULE.host_state("eta", 0.0, doc="step size of this step (lr at the first)")
mu = RULE.host_state("mu", 1.0, doc="averaging factor of this step")

eta_t = RULE.let("eta_t", sp.Piecewise((f32(lr), sp.Eq(t, 1)), (eta, True)))
G = RULE.let("G", (1 - 2 * maximize) * g + weight_decay * w)
w_new = RULE.update(w, w * (1 - lambd * eta_t) - eta_t * G)
RULE.update(ax, sp.Piecewise((w_new, sp.Eq(mu, 1)), (ax + (w_new - ax) * mu, True)))
RULE.update(eta, f32(lr / (1 + lambd * lr * t) ** alpha))  # torch's float32 tensors
RULE.update(mu, f32(1 / sp.Max(1, t - t0)))

# torch's default: no weight decay (torch skips it at 0, so an infinite weight keeps its value
# where 0 * inf would be NaN), and one multiply-add less per element
RULE.special_case("no_decay", {weight_decay: 0}, doc="no weight decay")

RULE.torch_equivalent(
    "ASGD",
    {
        "lr": "lr",
        "lambd": "lambd",
        "alpha": "alpha",
        "t0": "t0",
        "weight_decay": "weight_decay",
        "maximize": "maximize",
    },
    {ax: ("ax", 1), eta: ("eta", 1), mu: ("mu", 1)},
)
RULE.drop_in(
    "ASGD", "lr, lambd, alpha, t0, weight_decay, foreach, maximize, differentiable, capturable"
)
# Averaging from step 3 on (mu < 1): the default t0 = 1e6 never reaches it.
RULE.test_case(steps=8, t0=3.0)
