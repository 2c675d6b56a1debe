"""Adadelta exactly as torch.optim.Adadelta computes it: the drop-in ``Adadelta``.

Zeiler (2012), "ADADELTA: An Adaptive Learning Rate Method". Follows ``torch.optim.Adadelta``
(torch 2.13, single-tensor path), names and defaults included; the MXNet-semantics rule is
``adadelta``.

torch's code (followed here; states ``square_avg`` = E[g^2], ``acc_delta`` = E[dx^2]):
    g = (-grad if maximize else grad) + weight_decay * w
    E[g^2] <- rho * E[g^2] + (1 - rho) * g^2
    dx = sqrt(E[dx^2] + eps) / sqrt(E[g^2] + eps) * g
    E[dx^2] <- rho * E[dx^2] + (1 - rho) * dx^2
    w <- w - lr * dx

Unlike MXNet's AdaDelta, there is a learning rate (default 1.0) and weight decay enters the
gradient before the averages.

At weight_decay = 0 (torch's default) the update runs without weight decay (the special case
``no_decay``: the value substituted exactly), which is what torch computes there, an infinite
weight included (torch skips weight decay at 0; ``0 * inf`` would be NaN).
"""

import sympy as sp

from codegen.spec import Rule, as_is, nonnegative, unit

RULE = Rule("torch_adadelta", __doc__)
lr = RULE.hyper("lr", 1.0, nonnegative(), doc="learning rate (scales dx)")
rho = RULE.hyper("rho", 0.9, unit(hi_open=False), doc="decay of both running averages")
eps = RULE.hyper("eps", 1e-6, nonnegative(), doc="added inside both square roots")
weight_decay = RULE.hyper("weight_decay", 0.0, nonnegative(), doc="L2 penalty")
maximize = RULE.flag("maximize", False, doc="ascend: use -grad")
w, g = RULE.weight, RULE.grad
square_avg = RULE.state("square_avg", 0, doc="running mean of g^2")
acc_delta = RULE.state("acc_delta", 0, doc="running mean of dx^2")

G = RULE.let("G", (1 - 2 * maximize) * g + weight_decay * w)
# torch's addcmul_(x, x, value=1 - rho): ((1 - rho) * x) * x, and delta computed first, as
# torch's delta.div_(std).mul_(grad): SymPy would expand delta**2 into a quotient of squares,
# inf / inf = NaN where g**2 overflows float32
sq_new = RULE.update(square_avg, rho * square_avg + as_is((1 - rho) * G) * G)
delta = RULE.let("delta", as_is(as_is(sp.sqrt(acc_delta + eps) / sp.sqrt(sq_new + eps)) * G))
RULE.update(acc_delta, rho * acc_delta + as_is((1 - rho) * delta) * delta)
RULE.update(w, w - lr * delta)

# torch's default: no weight decay (torch skips it at 0, so an infinite weight keeps its value
# where 0 * inf would be NaN), and one multiply-add less per element
RULE.special_case("no_decay", {weight_decay: 0}, doc="no weight decay")

RULE.torch_equivalent(
    "Adadelta",
    {
        "lr": "lr",
        "rho": "rho",
        "eps": "eps",
        "weight_decay": "weight_decay",
        "maximize": "maximize",
    },
    {square_avg: ("square_avg", 1), acc_delta: ("acc_delta", 1)},
)
RULE.drop_in(
    "Adadelta", "lr, rho, eps, weight_decay, foreach, *, capturable, maximize, differentiable"
)
