"""RAdam: Adam with a rectified adaptive rate, plain momentum SGD while the variance is unreliable.

Liu et al. (2020), "On the Variance of the Adaptive Learning Rate and Beyond", Algorithm 2.
Reference semantics: ``torch.optim.RAdam`` (not in MXNet).

Equations (states ``mean`` = m, ``var`` = v, starting at 0; G = clip(rescale_grad*g + wd*w)):
    m_{i+1} = beta1 * m_i + (1 - beta1) * G;   v_{i+1} = beta2 * v_i + (1 - beta2) * G^2
    rho_inf = 2 / (1 - beta2) - 1;   rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)
    if rho_t > 5:  r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
                   w_{i+1} = w_i - lr * r_t * m_{i+1} / (1 - beta1^t)
                             * sqrt(1 - beta2^t) / (sqrt(v_{i+1}) + epsilon)
    else:          w_{i+1} = w_i - lr * m_{i+1} / (1 - beta1^t)

rho_t and r_t depend only on beta2 and t: the branch condition and r_t are host scalars, computed
once per step (r_t only where its square root is real); per element the kernel selects between
the two updates. wd enters the gradient (coupled), as torch.optim.RAdam's default.
"""

import sympy as sp

from codegen.mxnet import common
from codegen.spec import Rule, positive, unit

RULE = Rule("radam", __doc__, class_name="RAdam")
mx = common(RULE, lr=0.001)
beta1 = RULE.hyper("beta1", 0.9, unit(), doc="decay of the first moment")
beta2 = RULE.hyper("beta2", 0.999, unit(), doc="decay of the second moment")
epsilon = RULE.hyper("epsilon", 1e-8, positive(), doc="added to sqrt(v)")
w, t = RULE.weight, RULE.t
mean = RULE.state("mean", 0, doc="first moment m")
var = RULE.state("var", 0, doc="second moment v")

G = RULE.let("G", mx.clipped(mx.wd * w))
mean_new = RULE.update(mean, beta1 * mean + (1 - beta1) * G)
var_new = RULE.update(var, beta2 * var + (1 - beta2) * G**2)
RULE.torch_equivalent(
    "RAdam",
    {"lr": "lr", "beta1": "betas[0]", "beta2": "betas[1]", "epsilon": "eps", "wd": "weight_decay"},
    {mean: ("exp_avg", 1), var: ("exp_avg_sq", 1)},
)
rho_inf = RULE.let("rho_inf", 2 / (1 - beta2) - 1)
rho_t = RULE.let("rho_t", rho_inf - 2 * t * beta2**t / (1 - beta2**t))
rectified = rho_t > 5
r_t = RULE.let(
    "r_t",
    sp.Piecewise(
        (
            sp.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)),
            rectified,
        ),
        (0, True),
    ),
)
mhat = mean_new / (1 - beta1**t)
adaptive = r_t * mhat * sp.sqrt(1 - beta2**t) / (sp.sqrt(var_new) + epsilon)
RULE.update(w, w - mx.lr * sp.Piecewise((adaptive, rectified), (mhat, True)))

# A faster beta2 (rho_t > 5 from step 6 on): many rectified steps, besides the derived settings.
RULE.test_case(steps=10, beta2=0.9, lr=0.01)
