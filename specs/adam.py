"""Adam: adaptive moment estimation, with MXNet 1.9.1's bias correction folded into the rate.

Kingma & Ba (2015), "Adam: A Method for Stochastic Optimization". MXNet ``mx.optimizer.Adam``
(fused op ``adam_update``).

Seed's equations (tutorial):
    m_{i+1} = beta1 * m_i + (1 - beta1) * g
    v_{i+1} = beta2 * v_i + (1 - beta2) * g^2
    w_{i+1} = w_i - lr * mhat / (sqrt(vhat) + epsilon),
        mhat = m_{i+1} / (1 - beta1^t),  vhat = v_{i+1} / (1 - beta2^t)

MXNet's code (1.9.1, followed here; states ``mean`` = m, ``var`` = v, starting at 0):
    G = clip(rescale_grad * g + wd * w_i, clip_gradient)     # wd INSIDE the clip
    lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)            # host scalar, once per step
    m_{i+1} = beta1 * m_i + (1 - beta1) * G
    v_{i+1} = beta2 * v_i + (1 - beta2) * G^2
    w_{i+1} = w_i - lr_t * m_{i+1} / (sqrt(v_{i+1}) + epsilon)

So epsilon is not bias-corrected: in the tutorial's terms MXNet uses epsilon / sqrt(1 - beta2^t).
torch.optim.Adam(weight_decay=wd) adds wd * w to the gradient as well (without clipping) and
bias-corrects epsilon; the trajectories coincide up to that epsilon term.

Sparse gradients (``nn.Embedding(sparse=True)``; MXNet's ``row_sparse``): with ``lazy_update=True``
(MXNet 1.9.1's default) only the rows a gradient holds are updated, with their moments, weight decay
included (MXNet's ``sparse.adam_update``); ``lazy_update=False`` is MXNet's standard update, the
step of ``grad.to_dense()``.
"""

import sympy as sp

from codegen.mxnet import common
from codegen.spec import Rule, as_is, f32, positive, unit

RULE = Rule("adam", __doc__, class_name="Adam", mxnet="adam")
mx = common(RULE, lr=0.001)
RULE.sparse("lazy", lazy_update=True)
beta1 = RULE.hyper("beta1", 0.9, unit(), doc="decay of the first moment")
beta2 = RULE.hyper("beta2", 0.999, unit(), doc="decay of the second moment")
epsilon = RULE.hyper("epsilon", 1e-8, positive(), doc="added to sqrt(v)")
w, t = RULE.weight, RULE.t
mean = RULE.state("mean", 0, doc="first moment m")
var = RULE.state("var", 0, doc="second moment v")

G = RULE.let("G", mx.wd_inside_clip())
lr_t = RULE.let("lr_t", mx.lr * sp.sqrt(1 - beta2**t) / (1 - beta1**t))
# MXNet's kernel takes beta1 and beta2 as float32 and computes 1.f - beta in float32
# (0.00099998713 at beta2 = 0.999, not 0.001), and (1.f - beta2) * grad * grad left to right:
# never g**2 (overflows first)
# (the float32 betas written f32(beta) too: the 40-digit reference then sums the kernel's
# numbers, f32(beta) + f32(1 - f32(beta)) == 1)
b1, b2 = f32(beta1), f32(beta2)
mean_new = RULE.update(mean, b1 * mean + f32(1 - b1) * G)
var_new = RULE.update(var, b2 * var + as_is(f32(1 - b2) * G) * G)
RULE.torch_equivalent(
    "Adam",
    {"lr": "lr", "beta1": "betas[0]", "beta2": "betas[1]", "epsilon": "eps", "wd": "weight_decay"},
    {mean: ("exp_avg", 1), var: ("exp_avg_sq", 1)},
)
RULE.update(w, w - lr_t * mean_new / (sp.sqrt(var_new) + epsilon))
