"""Rprop exactly as torch.optim.Rprop computes it: the drop-in ``Rprop``.

Riedmiller & Braun (1993), "A Direct Adaptive Method for Faster Backpropagation Learning: The
RPROP Algorithm". Follows ``torch.optim.Rprop`` (torch 2.13, single-tensor path), names and
defaults included.

torch's code (followed here; states ``prev``, the last gradient used, and ``step_size``, one
step size per element, starting at lr):
    g = -grad if maximize else grad
    s = sign(g * prev)
    step_size <- clamp(step_size * (etaplus if s > 0, etaminus if s < 0, else 1),
                       step_size_min, step_size_max)
    g <- 0 where s < 0
    w <- w - sign(g) * step_size;  prev <- g

torch's ``sign`` is 0 at NaN (``(0 < x) - (x < 0)``, as ``codegen.mxnet.mxnet_sign``): a NaN
gradient element leaves its weight and step size as they were and is kept as ``prev``, whose NaN
product at the next step keeps the step size again, as torch's
(tests/test_dropin.py ``test_a_nan_gradient_element_steps_as_torchs``).
"""

import sympy as sp

from codegen.mxnet import mxnet_sign
from codegen.spec import Legal, Rule, nonnegative, unit

RULE = Rule("torch_rprop", __doc__)
lr = RULE.hyper("lr", 0.01, nonnegative(), doc="initial step size")
# torch's range: 0 < etaminus < 1 < etaplus
etaminus = RULE.hyper(
    "etaminus", 0.5, unit(lo_open=True), doc="step size factor on a sign change (etas[0])"
)
etaplus = RULE.hyper(
    "etaplus", 1.2, Legal(lo=1.0, lo_open=True), doc="step size factor otherwise (etas[1])"
)
step_size_min = RULE.hyper("step_size_min", 1e-6, nonnegative(), doc="(step_sizes[0])")
step_size_max = RULE.hyper("step_size_max", 50.0, nonnegative(), doc="(step_sizes[1])")
maximize = RULE.flag("maximize", False, doc="ascend: use -grad")
w, g = RULE.weight, RULE.grad
prev = RULE.state("prev", 0, doc="the last gradient used")
step_size = RULE.state("step_size", lr, doc="per-element step size")

G = RULE.let("G", (1 - 2 * maximize) * g)
s = RULE.let("s", G * prev)
factor = sp.Piecewise((etaplus, s > 0), (etaminus, s < 0), (1, True))
size_new = RULE.update(step_size, sp.Min(sp.Max(step_size * factor, step_size_min), step_size_max))
used = RULE.let("used", sp.Piecewise((0, s < 0), (G, True)))
# torch's addcmul_(sign(g), step_size, value=-1) with the zeroed g: sign 0 at NaN, as torch's
RULE.update(w, w - mxnet_sign(used) * size_new)
RULE.update(prev, used)

RULE.torch_equivalent(
    "Rprop",
    {
        "lr": "lr",
        "etaminus": "etas[0]",
        "etaplus": "etas[1]",
        "step_size_min": "step_sizes[0]",
        "step_size_max": "step_sizes[1]",
        "maximize": "maximize",
    },
    {prev: ("prev", 1), step_size: ("step_size", 1)},
)
RULE.drop_in("Rprop", "lr, etas, step_sizes, *, capturable, foreach, maximize, differentiable")
