"""Adan: Nesterov momentum from a moment of gradient differences, as pytorch-optimizer computes it.

Xie, Zhou, Li, Lin & Yan (2022), "Adan: Adaptive Nesterov Momentum Algorithm for Faster
Optimizing Deep Models". Reference: pytorch-optimizer 4.1.0 ``pytorch_optimizer.Adan`` (not an
MXNet rule; its betas are the paper's 1 - beta_k: decay factors, as Adam's).

Paper's equations (Algorithm 1; g_k the gradient, eta = lr, lambda = wd):
    m_k = beta1 * m_{k-1} + (1 - beta1) * g_k
    v_k = beta2 * v_{k-1} + (1 - beta2) * (g_k - g_{k-1})
    n_k = beta3 * n_{k-1} + (1 - beta3) * [g_k + beta2 * (g_k - g_{k-1})]^2
    w_{k+1} = (1 + eta * lambda)^-1 * [w_k - eta / (sqrt(n_k) + epsilon) * (m_k + beta2 * v_k)]

The reference's code (followed here; states ``mean`` = m, ``diff_mean`` = v, ``var`` = n, and
``prev_grad``, all starting at 0):
    d = g - g_prev, 0 at t = 1 (it starts g_prev at the first gradient: d = g - g, 0 or, for a
        non-finite g, NaN; here d = 0 * (g - 0) at t = 1, the same values)
    m, v, n as above (torch's lerp and addcmul: the same values to rounding)
    denom = sqrt(n) / sqrt(1 - beta3^t) + epsilon                 # bias-corrected n, not in
    w -= lr / (1 - beta1^t) * m / denom                            # the paper's Algorithm 1
    w -= lr * beta2 / (1 - beta2^t) * v / denom
with weight decay as the paper's division by 1 + lr * wd after the step, or, with
``weight_decouple``, as a multiplication by 1 - lr * wd before it. Not reproduced: its global
gradient-norm clipping (``max_grad_norm``, off by default: it needs every tensor's norm),
``adanorm``, ``use_gc`` and ``maximize``; the paper's restart condition is in neither.
"""

import sympy as sp

from codegen.spec import Rule, nonnegative, positive, unit

RULE = Rule("adan", __doc__, class_name="Adan")
lr = RULE.hyper("lr", 0.001, nonnegative(), doc="learning rate")
wd = RULE.hyper("wd", 0.0, nonnegative(), doc="weight decay")
beta1 = RULE.hyper("beta1", 0.98, unit(), doc="decay of the gradient moment m")
beta2 = RULE.hyper("beta2", 0.92, unit(), doc="decay of the gradient-difference moment v")
beta3 = RULE.hyper("beta3", 0.99, unit(), doc="decay of the second moment n")
epsilon = RULE.hyper("epsilon", 1e-8, positive(), doc="added to the corrected sqrt(n)")
weight_decouple = RULE.flag(
    "weight_decouple", False, doc="decay by 1 - lr*wd before the step, not 1 / (1 + lr*wd) after"
)
w, g, t = RULE.weight, RULE.grad, RULE.t
mean = RULE.state("mean", 0, doc="gradient moment m")
diff_mean = RULE.state("diff_mean", 0, doc="gradient-difference moment v")
var = RULE.state("var", 0, doc="second moment n")
prev_grad = RULE.state("prev_grad", 0, doc="the previous step's gradient")

not_first = sp.Piecewise((0, sp.Eq(t, 1)), (1, True))  # no previous gradient at t = 1
diff = RULE.let("diff", not_first * (g - prev_grad))
RULE.update(prev_grad, g)
mean_new = RULE.update(mean, beta1 * mean + (1 - beta1) * g)
diff_new = RULE.update(diff_mean, beta2 * diff_mean + (1 - beta2) * diff)
var_new = RULE.update(var, beta3 * var + (1 - beta3) * (g + beta2 * diff) ** 2)
denom = RULE.let("denom", sp.sqrt(var_new) / sp.sqrt(1 - beta3**t) + epsilon)
decayed = w * (1 - weight_decouple * lr * wd)
step = lr / (1 - beta1**t) * mean_new / denom + lr * beta2 / (1 - beta2**t) * diff_new / denom
RULE.update(w, (decayed - step) / (1 + (1 - weight_decouple) * lr * wd))
RULE.test_case(weight_decouple=True, wd=0.05, lr=0.01)  # decoupled decay
