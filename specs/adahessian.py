"""AdaHessian: Adam's second moment replaced by that of a Hessian-diagonal estimate.

Yao et al. (2021), "ADAHESSIAN: An Adaptive Second Order Optimizer for Machine Learning" (AAAI).
Reference code: pytorch-optimizer 4.1.0 ``pytorch_optimizer.AdaHessian`` (followed here).

Paper's equations (D: the Hessian diagonal by Hutchinson's method, D = E[z * (H z)] with
Rademacher z; D^(s): D averaged over the spatial dimensions of a convolution kernel):
    m_t = (1 - beta1) sum_i beta1^(t-i) g_i / (1 - beta1^t)
    v_t = ( sqrt( (1 - beta2) sum_i beta2^(t-i) D_i^(s) D_i^(s) / (1 - beta2^t) ) )^k
    w_{t+1} = w_t - lr * m_t / v_t

Reference code's order (states ``exp_avg`` = m, ``exp_hessian_diag_sq`` = v, from 0; h = the
estimate of this step):
    w <- w * (1 - wd * (1 if fixed_decay else lr))   if weight_decouple (default), else
    g <- g + wd * w                                    (coupled L2)
    m <- lerp(m, g, 1 - beta1);   v <- beta2 * v + (1 - beta2) * h^2
    w <- w - lr / (1 - beta1^t) * m / ((v / (1 - beta2^t))^(k / 2) + epsilon)

Where they differ: the reference draws z and computes h = z * (H z) inside its step from a loss
backpropagated with create_graph=True, and does no spatial averaging (4.1.0; the paper's D^(s)).
Here h is an input: ``optgen_runtime.hutchinson.hessian_diagonal`` computes it as the reference
does. epsilon is added after the power (paper: no epsilon). m uses beta1 * m + (1 - beta1) * g,
lerp's value up to rounding. Not carried over: the reference's update_period (a fresh h every
step here), num_samples (the helper's), maximize. For k != 1 the power is exp(k/2 * log(.));
at k = 1 (the default) the special case ``sqrt`` takes the square root alone (the general
update's choice between the two is per element, and its exp and log are calls to libm that do
not vectorise where the compiled loop does not hoist the choice).
"""

import sympy as sp

from codegen.spec import Legal, Rule, nonnegative, unit

RULE = Rule("adahessian", __doc__, class_name="AdaHessian")
lr = RULE.hyper("lr", 0.1, nonnegative(), doc="learning rate")
beta1 = RULE.hyper("beta1", 0.9, unit(), doc="decay of the gradient mean")
beta2 = RULE.hyper("beta2", 0.999, unit(), doc="decay of the squared Hessian diagonal mean")
wd = RULE.hyper("wd", 0.0, nonnegative(), doc="weight decay coefficient")
epsilon = RULE.hyper("epsilon", 1e-16, nonnegative(), doc="added to the denominator")
k = RULE.hyper("hessian_power", 1.0, Legal(lo=0.0, hi=1.0, lo_open=True), doc="power k")
decouple = RULE.flag("weight_decouple", True, doc="decay the weight (AdamW), not the gradient")
fixed = RULE.flag("fixed_decay", False, doc="decoupled decay not scaled by lr")
w, g, t = RULE.weight, RULE.grad, RULE.t
h = RULE.input("hessian", doc="Hutchinson estimate of the Hessian diagonal, z * (H z)")
mean = RULE.state("mean", 0, doc="gradient mean m")
var = RULE.state("var", 0, doc="squared Hessian diagonal mean v")

G = RULE.let("G", g + (1 - decouple) * wd * w)
shrink = RULE.let("shrink", 1 - decouple * wd * (fixed + (1 - fixed) * lr))
mean_new = RULE.update(mean, beta1 * mean + (1 - beta1) * G)
var_new = RULE.update(var, beta2 * var + (1 - beta2) * h**2)
vhat = var_new / (1 - beta2**t)
power = sp.Piecewise((sp.sqrt(vhat), sp.Eq(k, 1)), (sp.exp(k / 2 * sp.log(vhat)), True))
denom = RULE.let("denom", power + epsilon)
RULE.update(w, shrink * w - lr / (1 - beta1**t) * mean_new / denom)
RULE.special_case("sqrt", {k: 1.0}, doc="hessian_power = 1: the square root, no exp and log")
RULE.test_case(weight_decouple=False, wd=0.05, hessian_power=0.5)  # coupled L2; the exp/log power
RULE.test_case(fixed_decay=True, wd=0.05, hessian_power=1.0)  # the decay not scaled by lr
