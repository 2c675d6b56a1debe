"""NAdam: Adam with Nesterov momentum and Dozat's warming momentum schedule, as MXNet computes it.

Dozat (2016), "Incorporating Nesterov Momentum into Adam". MXNet ``mx.optimizer.Nadam`` (Python
NDArray code, no fused op).

Seed's equations (tutorial, as printed; E[g^2] is its second moment, ~ its bias correction):
    v_{i+1} = beta1 * v_i + (1 - beta1) * grad(w_i + beta1 * v_i)
    E[g^2]_{i+1} = beta2 * E[g^2]_i + (1 - beta2) * [grad(w_i)]^2
    ~v_{i+1} = v_{i+1} / (1 - beta1^{i+1})
    ~E[g^2]_{i+1} = E[g^2]_{i+1} / (1 - beta2^{i+1})
    w_{i+1} = w_i + lr / (sqrt(~E[g^2]_{i+1}) + epsilon) * -~v_{i+1}

An update op cannot evaluate the gradient at the look-ahead point w_i + beta1 * v_i, and MXNet
does not use these bias corrections: it implements Dozat's momentum schedule mu_t, its product M
and the EMA on beta1.

MXNet's code (1.9.1, followed here; states ``mean`` = m, ``var`` = v, host state ``m_schedule``
= M, the running product of momentum factors, starting at 1):
    G = clip(rescale_grad * g + wd * w_i, clip_gradient)      # wd INSIDE the clip
    mu_t = beta1 * (1 - 0.5 * 0.96^(t * schedule_decay))       # host scalars
    mu_t1 = beta1 * (1 - 0.5 * 0.96^((t + 1) * schedule_decay))
    M_{i+1} = M_i * mu_t;   M' = M_{i+1} * mu_t1
    m_{i+1} = beta1 * m_i + (1 - beta1) * G                    # EMA with beta1, not mu_t
    v_{i+1} = beta2 * v_i + (1 - beta2) * G^2
    mbar = (1 - mu_t) * G / (1 - M_{i+1}) + mu_t1 * m_{i+1} / (1 - M')
    w_{i+1} = w_i - lr * mbar / (sqrt(v_{i+1} / (1 - beta2^t)) + epsilon)

in its order (NDArray operations in float32, each scalar once in double: M and M' as products
of the previous value, each division by a scalar a division (``as_is(x / s)``), ``lr * mbar``
before its quotient): every recorded MXNet step to the bit, M included.

Difference from MXNet 1.9.1, on purpose (optgen's policy): 1.9.1 keeps ONE schedule product M per
optimizer, advanced by every parameter's update, so a parameter's schedule depends on how many
tensors the model has. optgen keeps M per weight (a host state next to its buffers); for a model
with a single tensor the two are identical. M is a scalar: it is computed on the host, once per
step, never per element.

torch.optim.NAdam(lr, betas, eps, weight_decay=wd, momentum_decay=schedule_decay) computes the
same update, with its ``mu_product`` per parameter as optgen's M (so with several tensors torch
agrees with optgen, not with 1.9.1), when rescale_grad = 1 and clip_gradient = None: torch has
neither, and optgen clips rescale_grad * g + wd * w (wd inside the clip). With
decoupled_weight_decay=True (NAdamW) torch instead multiplies w by (1 - lr * wd) before the step
and leaves wd out of G. torch keeps mu_product in float32 (its default scalar dtype). Tests:
tests/test_torch_optim.py.

A sparse gradient (``nn.Embedding(sparse=True)``; MXNet's ``row_sparse``) steps as
``grad.to_dense()`` would, every row updated: MXNet 1.9.1 has no sparse kernel for this rule and
falls back to the dense one.
"""

import sympy as sp

from codegen.mxnet import common
from codegen.spec import Rule, as_is, positive, unit

RULE = Rule("nadam", __doc__, class_name="NAdam", mxnet="nadam")
mx = common(RULE, lr=0.001)
RULE.sparse("dense")
beta1 = RULE.hyper("beta1", 0.9, unit(), doc="decay of the first moment")
beta2 = RULE.hyper("beta2", 0.999, unit(), doc="decay of the second moment")
epsilon = RULE.hyper("epsilon", 1e-8, positive(), doc="added to sqrt(vhat)")
schedule_decay = RULE.hyper("schedule_decay", 0.004, positive(), doc="momentum schedule decay")
w, t = RULE.weight, RULE.t
mean = RULE.state("mean", 0, doc="first moment m")
var = RULE.state("var", 0, doc="second moment v")
m_schedule = RULE.host_state("m_schedule", 1.0, doc="running product of momentum factors M")

RULE.torch_equivalent(
    "NAdam",
    {
        **{
            "lr": "lr",
            "beta1": "betas[0]",
            "beta2": "betas[1]",
            "epsilon": "eps",
            "wd": "weight_decay",
        },
        "schedule_decay": "momentum_decay",
    },
    {mean: ("exp_avg", 1), var: ("exp_avg_sq", 1), m_schedule: ("mu_product", 1)},
)
G = RULE.let("G", mx.wd_inside_clip())
# the schedule as MXNet's Python computes it in double: M_t = M_{t-1} * mu_t, then M_t * mu_t1
mu_t = RULE.let(
    "mu_t", as_is(beta1 * (1 - sp.Rational(1, 2) * sp.Float("0.96") ** (t * schedule_decay)))
)
mu_t1 = RULE.let(
    "mu_t1", as_is(beta1 * (1 - sp.Rational(1, 2) * sp.Float("0.96") ** ((t + 1) * schedule_decay)))
)
schedule = as_is(m_schedule * mu_t)
m_schedule_new = RULE.update(m_schedule, schedule)
mean_new = RULE.update(mean, beta1 * mean + (1 - beta1) * G)
# MXNet's Nadam: (1. - self.beta2) * grad * grad, left to right: never g**2 (overflows first)
var_new = RULE.update(var, beta2 * var + as_is((1 - beta2) * G) * G)
# MXNet's NDArray code divides by each host scalar (grad / (1 - M): _div_scalar), then
# lr * m_t_bar / (sqrt(v_t_prime) + eps), the product first
grad_prime = as_is(G / (1 - schedule))
mean_prime = as_is(mean_new / (1 - schedule * mu_t1))
var_prime = as_is(var_new / (1 - beta2**t))
mbar = RULE.let("mbar", (1 - mu_t) * grad_prime + mu_t1 * mean_prime)
RULE.update(w, w - as_is(mx.lr * mbar) / (sp.sqrt(var_prime) + epsilon))
