"""MADGRAD: momentumized, adaptive, dual-averaged gradient descent, as pytorch-optimizer has it.

Defazio & Jelassi (2021), "Adaptivity without Compromise: A Momentumized, Adaptive, Dual Averaged
Gradient Method for Stochastic Optimization". Reference: pytorch-optimizer 4.1.0
``pytorch_optimizer.MADGRAD`` (the authors' code, dense gradients; not an MXNet rule).

Paper's equations (Algorithm 1; lambda_k = lr * sqrt(k + 1), c = 1 - momentum, x0 the initial
weight):
    s_{k+1} = s_k + lambda_k * g_k
    nu_{k+1} = nu_k + lambda_k * g_k^2
    z_{k+1} = x0 - s_{k+1} / (nu_{k+1}^(1/3) + epsilon)
    x_{k+1} = (1 - c) * x_k + c * z_{k+1}

The reference's code (followed here; states ``grad_sum`` = s and ``grad_sum_sq`` = nu starting at
0, ``x0`` at the weight; its step counter k + 1 is our t):
    lr' = lr + epsilon                      # its learning rate, epsilon added (authors' code)
    lambda = lr' * sqrt(t)
    G = g + wd * w                          # unless weight_decouple
    x0 = w + s / (nu^(1/3) + epsilon)        # with momentum = 0 only: recovered from w each step
                                             # (it keeps no x0 then); otherwise the stored x0
    nu += lambda * G^2;  s += lambda * G;  z = x0 - s / (nu^(1/3) + epsilon)
    w_{k+1} = momentum * w + (1 - momentum) * z        (torch's lerp: the same to rounding)
    w_{k+1} -= lr' * wd * w                 # with weight_decouple, the old weight
Here ``x0`` is written back each step: the recovered origin with momentum = 0 (equal to the
stored one unless weight_decouple moves it), itself otherwise. Its step counter is global (one
per optimizer); t is per weight: the same while every parameter gets a gradient every step.
epsilon must be positive (the reference also takes 0, masking 0 / 0). nu^(1/3): the cube root
(nu >= 0; a fractional power of a negative base is NaN, codegen/ops.py).
"""

import sympy as sp

from codegen.spec import Rule, nonnegative, positive, unit

RULE = Rule("madgrad", __doc__, class_name="MADGRAD")
# lr > 0: the step size is lr + epsilon, so lr=0 would still move the weights
lr = RULE.hyper("lr", 0.001, positive(), doc="learning rate")
momentum = RULE.hyper("momentum", 0.9, unit(), doc="1 - c: weight of the previous iterate")
wd = RULE.hyper("wd", 0.0, nonnegative(), doc="weight decay")
epsilon = RULE.hyper("epsilon", 1e-6, positive(), doc="added to the cube root, and to lr")
weight_decouple = RULE.flag("weight_decouple", False, doc="decay the weight, not the gradient")
w, g, t = RULE.weight, RULE.grad, RULE.t
grad_sum_sq = RULE.state("grad_sum_sq", 0, doc="nu: lambda-weighted sum of squared gradients")
grad_sum = RULE.state("grad_sum", 0, doc="s: lambda-weighted sum of gradients")
x0 = RULE.state("x0", w, doc="the dual averaging origin: the initial weight")

lr_eps = RULE.let("lr_eps", lr + epsilon)
lamb = RULE.let("lamb", lr_eps * sp.sqrt(t))
G = RULE.let("G", g + (1 - weight_decouple) * wd * w)
third = sp.Rational(1, 3)
recovered = w + grad_sum / (grad_sum_sq**third + epsilon)
origin = RULE.let("origin", sp.Piecewise((recovered, sp.Eq(momentum, 0)), (x0, True)))
RULE.update(x0, origin)
sq_new = RULE.update(grad_sum_sq, grad_sum_sq + lamb * G**2)
sum_new = RULE.update(grad_sum, grad_sum + lamb * G)
z = RULE.let("z", origin - sum_new / (sq_new**third + epsilon))
RULE.update(w, momentum * w + (1 - momentum) * z - weight_decouple * lr_eps * wd * w)
RULE.test_case(weight_decouple=True, wd=0.05, momentum=0.0, lr=0.01)  # x0 from the weight
