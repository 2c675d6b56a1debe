"""RMSprop (plain, centered, with momentum) exactly as torch.optim.RMSprop computes it.

Tieleman & Hinton (2012), "Lecture 6.5 - rmsprop"; Graves (2013), "Generating Sequences With
Recurrent Neural Networks" for the centered form. Follows ``torch.optim.RMSprop`` (torch 2.13,
single-tensor path), names and defaults included; the MXNet-semantics rules are ``rmsprop`` and
``rmsprop_centered``.

torch's code (followed here; states ``square_avg`` = n, ``grad_avg`` = a, ``momentum_buffer`` = b):
    g = (-grad if maximize else grad) + weight_decay * w
    n <- alpha * n + (1 - alpha) * g^2
    centered: a <- a + (1 - alpha) * (g - a);  avg = sqrt(n - a^2) + eps
    else:     avg = sqrt(n) + eps
    momentum > 0: b <- momentum * b + g / avg;  w <- w - lr * b
    else:         w <- w - lr * g / avg

Unlike MXNet's RMSProp, eps sits outside the square root and there is no weight clipping.
``momentum_buffer`` exists at momentum > 0 only and ``grad_avg`` when centered only (each its
own ``absent_when``), as in torch: at torch's defaults one buffer per parameter, with momentum
and not centered (timm's and TensorFlow's setting) two, torch's memory and no traffic for the
buffer that is not there. torch accepts any alpha >= 0; here alpha > 1, which makes n negative
and the root NaN, is refused.

At weight_decay = 0 (torch's default) the update runs without weight decay (the special cases
below: the value substituted exactly, one per set of buffers), which is what torch computes
there, an infinite weight included (torch skips weight decay at 0; ``0 * inf`` would be NaN).
"""

import sympy as sp

from codegen.spec import Rule, as_is, nonnegative, torch_lerp, unit

RULE = Rule("torch_rmsprop", __doc__, class_name="TorchRMSprop")
lr = RULE.hyper("lr", 0.01, nonnegative(), doc="learning rate")
alpha = RULE.hyper("alpha", 0.99, unit(hi_open=False), doc="decay of the mean square (<= 1)")
eps = RULE.hyper("eps", 1e-8, nonnegative(), doc="added to the root mean square")
weight_decay = RULE.hyper("weight_decay", 0.0, nonnegative(), doc="L2 penalty")
momentum = RULE.hyper("momentum", 0.0, nonnegative(), doc="momentum factor (0: none)")
centered = RULE.flag("centered", False, doc="divide by an estimate of the gradient's variance")
maximize = RULE.flag("maximize", False, doc="ascend: use -grad")
w, g = RULE.weight, RULE.grad
square_avg = RULE.state("square_avg", 0, doc="running mean of g^2, n")
momentum_buffer = RULE.state(
    "momentum_buffer", 0, doc="momentum buffer b (momentum > 0)", absent_when={momentum: 0}
)
grad_avg = RULE.state(
    "grad_avg", 0, doc="running mean of g, a (centered)", absent_when={centered: False}
)

G = RULE.let("G", (1 - 2 * maximize) * g + weight_decay * w)
# torch's addcmul_(g, g, value=1 - alpha): ((1 - alpha) * g) * g, never g**2 (overflows first)
n_new = RULE.update(square_avg, alpha * square_avg + as_is((1 - alpha) * G) * G)
lerp = torch_lerp(grad_avg, G, 1 - alpha)  # grad_avg.lerp_(g, 1 - alpha)
a_new = RULE.update(grad_avg, sp.Piecewise((lerp, centered > 0), (grad_avg, True)))
avg = RULE.let(
    "avg", sp.Piecewise((sp.sqrt(n_new - a_new**2), centered > 0), (sp.sqrt(n_new), True)) + eps
)
b_new = RULE.update(
    momentum_buffer,
    sp.Piecewise((momentum * momentum_buffer + G / avg, momentum > 0), (momentum_buffer, True)),
)
# param.addcdiv_(g, avg, value=-lr): (-lr * g) / avg
RULE.update(w, sp.Piecewise((w - lr * b_new, momentum > 0), (w - as_is(lr * G) / avg, True)))

RULE.test_case(alpha=0.3, centered=True)  # lerp weight 1 - alpha >= 0.5: torch_lerp's

# torch's default: no weight decay (torch skips it at 0, so an infinite weight keeps its value
# where 0 * inf would be NaN), and one multiply-add less per element
# (torch's defaults first: no buffer but square_avg; then one per set of buffers)
plain = {momentum: 0, centered: False, weight_decay: 0}
RULE.special_case("plain", plain, doc="no momentum, centering or decay")
centered_only = {momentum: 0, centered: True, weight_decay: 0}
RULE.special_case("centered_only", centered_only, doc="centered, no momentum or decay")
momentum_only = {centered: False, weight_decay: 0}
RULE.special_case("momentum_only", momentum_only, doc="momentum, not centered, no decay")
RULE.special_case("no_decay", {weight_decay: 0}, doc="no weight decay")

RULE.torch_equivalent(
    "RMSprop",
    {
        "lr": "lr",
        "alpha": "alpha",
        "eps": "eps",
        "weight_decay": "weight_decay",
        "momentum": "momentum",
        "centered": "centered",
        "maximize": "maximize",
    },
    {
        square_avg: ("square_avg", 1),
        momentum_buffer: ("momentum_buffer", 1),
        grad_avg: ("grad_avg", 1),
    },
)
RULE.drop_in(
    "RMSprop",
    "lr, alpha, eps, weight_decay, momentum, centered, capturable, foreach, maximize, "
    "differentiable",
)
RULE.test_case(steps=6, momentum=0.9, centered=True)
