"""Prodigy: Adam whose step size d is estimated from the distance travelled from the start.

Mishchenko & Defazio (2023), "Prodigy: An Expeditiously Adaptive Parameter-Free Learner"
(arXiv:2306.06101). Reference: pytorch-optimizer 4.1.0 ``pytorch_optimizer.Prodigy``.

Paper's equations (Algorithm 3, Adam version; x_0 the initial weight, d_0 > 0):
    m_{k+1} = beta1 m_k + (1 - beta1) d_k g_k;   v_{k+1} = beta2 v_k + (1 - beta2) d_k^2 g_k^2
    r_{k+1} = sqrt(beta2) r_k + (1 - sqrt(beta2)) lr_k d_k^2 <g_k, x_0 - x_k>
    s_{k+1} = sqrt(beta2) s_k + (1 - sqrt(beta2)) lr_k d_k^2 g_k
    d_{k+1} = max(d_k, r_{k+1} / ||s_{k+1}||_1)
    x_{k+1} = x_k - lr_k d_k m_{k+1} / (sqrt(v_{k+1}) + d_k epsilon)
The code drops the (1 - sqrt(beta2)) factors and divides r and s by d0 (both cancel in d_hat).

The reference's code (followed here; states ``p0`` = x_0, ``s``, ``mean`` = m, ``var`` = v, host
states ``d``, ``d_max``, ``d_numerator`` = r, the same in every tensor of a group):
    d_lr = d lr sqrt(1 - beta2^t) / (1 - beta1^t)   (bias_correction; else d lr), from the OLD d
           # its group['step'] starts at 1 (its defaults) and counts after this: t = 1, 2, ...
    r = beta3 r + (d / d0) d_lr <g, p0 - w>_group      # beta3 = sqrt(beta2) by default
    m = beta1 m + d (1 - beta1) g;   v = beta2 v + d^2 (1 - beta2) g^2
    s = beta3 s + (d / d0) d_lr g   (safeguard_warmup: (d / d0) d g)
    if sum_group |s| == 0: stop here (moments, s and r updated; weight, d, d_max kept)
    d_hat = d_coef r / sum_group |s|;   d = max(d, d_hat) only while d == d0
    d_max = max(d_max, d_hat);   d = min(d_max, d growth_rate)
    w = w (1 - wd d_lr) - d_lr m / (sqrt(v) + d epsilon)   # the NEW d

On that early return the reference keeps r decayed and added to (its tensor changes in place;
``prodigyopt`` keeps the old r); optgen follows the reference.

Where optgen differs: without weight_decouple the reference adds wd w to the gradient after the
moments used it (a no-op on the weights); optgen adds it before every use, as Mishchenko's
``prodigyopt`` does. The reference keeps r and the sum of |s| as float32 tensors (torch's default
dtype) and sums over all parameter groups; optgen keeps doubles and sums over each group (one
group: the same sums). Every tensor keeps its own copy of d, d_max and r, equal while the
group's tensors step together; a tensor that joins late (no gradient at first) starts from d0
and follows its own copy, where the reference has one d per group. d and d_max start at 0, read
as d0 (d, d_max >= d0 since growth_rate >= 1). Not offered: the reference's ``eps=None`` (atan2),
``fixed_decay`` and ``maximize``.
"""

import sympy as sp

from codegen.spec import Legal, Rule, nonnegative, positive, unit

RULE = Rule("prodigy", __doc__, class_name="Prodigy")
lr = RULE.hyper("lr", 1.0, nonnegative(), doc="multiplies the estimated step size d")
beta1 = RULE.hyper("beta1", 0.9, unit(), doc="decay of the first moment")
beta2 = RULE.hyper("beta2", 0.999, unit(), doc="decay of the second moment")
beta3 = RULE.hyper("beta3", None, unit(), none=-1.0, doc="decay of r and s; None: sqrt(beta2)")
eps = RULE.hyper("epsilon", 1e-8, positive(), doc="added to sqrt(v), times d")
wd = RULE.hyper("wd", 0.0, nonnegative(), doc="weight decay")
d0 = RULE.hyper("d0", 1e-6, positive(), doc="initial estimate of the step size d")
d_coef = RULE.hyper("d_coef", 1.0, positive(), doc="multiplies the estimate d_hat")
grow = RULE.hyper("growth_rate", None, Legal(lo=1.0), none=float("inf"), doc="d's growth cap")
dec = RULE.flag("weight_decouple", True, doc="decay the weight (AdamW), not the gradient")
bias_c = RULE.flag("bias_correction", False, doc="Adam's bias correction in d_lr")
safeguard = RULE.flag("safeguard_warmup", False, doc="s grows by d, not by d_lr")
w, g, t = RULE.weight, RULE.grad, RULE.t
p0 = RULE.state("p0", w, doc="the initial weight")
s = RULE.state("s", 0, doc="decayed sum of scaled gradients")
mean = RULE.state("mean", 0, doc="first moment m")
var = RULE.state("var", 0, doc="second moment v")
d = RULE.host_state("d", 0.0, doc="step size estimate (0: not started, d0)")
d_max = RULE.host_state("d_max", 0.0, doc="largest d_hat so far (0: d0)")
dn = RULE.host_state("d_numerator", 0.0, doc="decayed sum of <g, p0 - w> terms r")

RULE.update(p0, p0)
G = RULE.let("G", g + (1 - dec) * wd * w)
d_old = RULE.let("d_old", sp.Max(d, d0))
b3 = RULE.let("b3", sp.Piecewise((sp.sqrt(beta2), beta3 < 0), (beta3, True)))
d_lr = RULE.let("d_lr", d_old * lr * sp.sqrt(1 - bias_c * beta2**t) / (1 - bias_c * beta1**t))
r = RULE.update(dn, b3 * dn + d_old / d0 * d_lr * RULE.sum("dot", G * (p0 - w), group=True))
m_new = RULE.update(mean, beta1 * mean + d_old * (1 - beta1) * G)
v_new = RULE.update(var, beta2 * var + d_old**2 * (1 - beta2) * G**2)
s_new = RULE.update(s, b3 * s + d_old / d0 * (safeguard * d_old + (1 - safeguard) * d_lr) * G)
skip = sp.Eq(s_sum := RULE.sum("s_sum", sp.Abs(s_new), group=True), 0)
d_hat = RULE.let("d_hat", sp.Piecewise((d0, skip), (d_coef * r / s_sum, True)))
d_max_new = RULE.update(d_max, sp.Max(d_max, d0, d_hat))
d_up = sp.Piecewise((sp.Max(d_old, d_hat), sp.Eq(d_old, d0)), (d_old, True))
d_new = RULE.update(d, sp.Piecewise((d_old, skip), (sp.Min(d_max_new, d_up * grow), True)))
moved = RULE.let("moved", w * (1 - dec * wd * d_lr) - d_lr * m_new / (sp.sqrt(v_new) + d_new * eps))
RULE.update(w, sp.Piecewise((w, skip), (moved, True)))
RULE.test_case(growth_rate=1.02)  # the derived settings leave it None
