"""SGD with momentum, dampening and Nesterov momentum exactly as torch.optim.SGD computes it.

Sutskever et al. (2013), "On the importance of initialization and momentum in deep learning".
Follows ``torch.optim.SGD`` (torch 2.13, single-tensor path), names and defaults included; the
MXNet-semantics rules are ``sgd``, ``sgd_mom`` and ``nag``.

torch's code (followed here; the state ``momentum_buffer`` = b):
    g = (-grad if maximize else grad) + weight_decay * w
    momentum != 0:  b <- g at the first step, else momentum * b + (1 - dampening) * g
                    d = g + momentum * b if nesterov else b
    momentum == 0:  d = g
    w <- w - lr * d

At momentum = 0 and weight_decay = 0 (torch's defaults) the update runs as ``w - lr * grad``
(the special case ``plain``: those values substituted exactly; ``-grad`` with maximize), and at
weight_decay = 0 with momentum as above without the decay (the special case ``no_decay``), which
is what torch computes there, an infinite weight included (torch skips weight decay at 0;
``0 * inf`` would be NaN).

Unlike MXNet's SGD, the buffer holds the gradient's average, not -lr times it (so a change of
lr takes effect at once), the first step copies the gradient undamped, and weight decay is
added before the momentum. torch keeps no step count for SGD: a state_dict of it has only the
buffer (and nothing without momentum); loading one, the step count is taken as 1 where there is
a buffer (the count only tells the first step from the others).
"""

import sympy as sp

from codegen.spec import Legal, Rule, nonnegative

RULE = Rule("torch_sgd", __doc__, class_name="TorchSGD")
lr = RULE.hyper("lr", 0.001, nonnegative(), doc="learning rate")
momentum = RULE.hyper("momentum", 0.0, nonnegative(), doc="momentum factor (0: none)")
dampening = RULE.hyper("dampening", 0.0, Legal(), doc="dampening of the gradient in the buffer")
weight_decay = RULE.hyper("weight_decay", 0.0, nonnegative(), doc="L2 penalty")
nesterov = RULE.flag("nesterov", False, doc="Nesterov momentum")
maximize = RULE.flag("maximize", False, doc="ascend: use -grad")
w, g, t = RULE.weight, RULE.grad, RULE.t
# torch keeps no buffer at momentum=0: neither do we (a variant of the update without it)
buf = RULE.state("momentum_buffer", 0, doc="momentum buffer b", absent_when={momentum: 0})

G = RULE.let("G", (1 - 2 * maximize) * g + weight_decay * w)
keep = RULE.let("keep", sp.Piecewise((0, sp.Eq(t, 1)), (momentum, True)))
take = RULE.let("take", sp.Piecewise((1, sp.Eq(t, 1)), (1 - dampening, True)))
buf_new = RULE.update(buf, keep * buf + take * G)
d = RULE.let(
    "d",
    sp.Piecewise((G, sp.Eq(momentum, 0)), (G + momentum * buf_new, nesterov > 0), (buf_new, True)),
)
RULE.update(w, w - lr * d)
# torch's defaults: w - lr * g, one multiply and one add per element, and torch's value there
# (it skips weight decay at 0: an infinite weight stays infinite where 0 * inf would be NaN)
RULE.special_case("plain", {momentum: 0, weight_decay: 0}, doc="no momentum or weight decay")
# with momentum: torch's value at weight_decay = 0 too, one multiply-add less (plain, tried
# first, runs wherever the buffer is absent: this one only with it)
RULE.special_case("no_decay", {weight_decay: 0}, doc="no weight decay")

RULE.torch_equivalent(
    "SGD",
    {
        "lr": "lr",
        "momentum": "momentum",
        "dampening": "dampening",
        "weight_decay": "weight_decay",
        "nesterov": "nesterov",
        "maximize": "maximize",
    },
    {buf: ("momentum_buffer", 1)},
)
RULE.drop_in(
    "SGD",
    "lr, momentum, dampening, weight_decay, nesterov, *, maximize, foreach, differentiable, fused",
)
RULE.test_case(steps=6, momentum=0.9, dampening=0.1, nesterov=True)
