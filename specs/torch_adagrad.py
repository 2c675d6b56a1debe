"""AdaGrad exactly as torch.optim.Adagrad computes it: the drop-in ``Adagrad``.

Duchi, Hazan & Singer (2011), "Adaptive Subgradient Methods for Online Learning and Stochastic
Optimization". Follows ``torch.optim.Adagrad`` (torch 2.13, single-tensor path, dense
gradients), names and defaults included; the MXNet-semantics rule is ``adagrad``.

torch's code (followed here; the state is torch's ``sum``, by its name):
    g = (-grad if maximize else grad) + weight_decay * w
    clr = lr / (1 + (t - 1) * lr_decay)
    sum <- sum + g^2                                   # starts at initial_accumulator_value
    w <- w - clr * g / (sqrt(sum) + eps)

Unlike MXNet 1.9.1's AdaGrad, eps sits outside the square root (default 1e-10) and weight decay
enters the accumulated gradient.

At weight_decay = 0 (torch's default) the update runs without weight decay (the special case
``no_decay``: the value substituted exactly), which is what torch computes there, an infinite
weight included (torch skips weight decay at 0; ``0 * inf`` would be NaN).

torch's Adagrad makes every parameter's ``sum`` in its constructor, and any it makes later (a
group added, an empty state loaded) from the constructor's ``initial_accumulator_value``
(``self.defaults``), never a group's own (torch 2.13, ``Adagrad.__init__`` and
``_init_group``): the drop-in does both (``state_from_defaults``), so its ``state_dict()``
before the first step holds torch's entries. The spec-named ``TorchAdagrad`` makes its state on
a parameter's first step, from its group's value.
"""

import sympy as sp

from codegen.spec import Rule, nonnegative

RULE = Rule("torch_adagrad", __doc__)
lr = RULE.hyper("lr", 0.01, nonnegative(), doc="learning rate")
lr_decay = RULE.hyper("lr_decay", 0.0, nonnegative(), doc="clr = lr / (1 + (t - 1) lr_decay)")
weight_decay = RULE.hyper("weight_decay", 0.0, nonnegative(), doc="L2 penalty")
initial = RULE.hyper("initial_accumulator_value", 0.0, nonnegative(), doc="the sum's initial value")
eps = RULE.hyper("eps", 1e-10, nonnegative(), doc="added to sqrt(sum)")
maximize = RULE.flag("maximize", False, doc="ascend: use -grad")
w, g, t = RULE.weight, RULE.grad, RULE.t
# named as torch names it: the drop-in's live state has torch's keys, which
# torch.distributed.checkpoint's flattened load rebuilds the state by (``sum`` is a builtin no
# generated module calls: codegen/names.py's UNCALLED_BUILTINS)
state_sum = RULE.state("sum", initial, doc="sum of squared gradients")

G = RULE.let("G", (1 - 2 * maximize) * g + weight_decay * w)
clr = RULE.let("clr", lr / (1 + (t - 1) * lr_decay))
sum_new = RULE.update(state_sum, state_sum + G**2)
RULE.update(w, w - clr * G / (sp.sqrt(sum_new) + eps))

# torch's default: no weight decay (torch skips it at 0, so an infinite weight keeps its value
# where 0 * inf would be NaN), and one multiply-add less per element
RULE.special_case("no_decay", {weight_decay: 0}, doc="no weight decay")

RULE.torch_equivalent(
    "Adagrad",
    {
        "lr": "lr",
        "lr_decay": "lr_decay",
        "weight_decay": "weight_decay",
        "initial_accumulator_value": "initial_accumulator_value",
        "eps": "eps",
        "maximize": "maximize",
    },
    {state_sum: ("sum", 1)},
)
RULE.drop_in(
    "Adagrad",
    "lr, lr_decay, weight_decay, initial_accumulator_value, eps, foreach, *, maximize, "
    "differentiable, fused",
    state_from_defaults=True,
)
