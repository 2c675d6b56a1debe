"""FTML: follow the moving leader, an FTRL variant with exponentially reweighted subproblems.

Zheng & Kwok (2017), "Follow the Moving Leader in Deep Learning". MXNet 1.9.1
``mx.optimizer.FTML`` (fused op ``ftml_update``).

Seed's equations (tutorial):
    v_{i+1} = beta2 * v_i + (1 - beta2) * grad(w_i)^2
    d_{i+1} = (1 - beta1^{i+1}) / lr * (sqrt(v_{i+1} / (1 - beta2^{i+1})) + epsilon)
    z_{i+1} = beta1 * z_i + (1 - beta1) * grad(w_i) - (d_{i+1} - beta1 * d_i) * w_i
    w_{i+1} = -z_{i+1} / d_{i+1}

The tutorial's typo is in the objective it prints before this recursion,
    w_{i+1} = argmin_w [ sum_{j=1}^{i} (1 - beta1) beta1^{i-j} grad(w_i) . w
                         + 1/2 sum_{j=1}^{i} sigma_j ||w - w_j||_2^2 ]
whose sum over j has grad(w_i) where it needs grad(w_j): as printed, every term of the sum uses
the latest gradient. The recursion for v, d and z above has no such typo (it is the paper's
Algorithm 1 and what MXNet's kernel computes); optgen follows MXNet's code.

MXNet's code (1.9.1, followed here; states ``prev_d`` = d, ``prev_v`` = v, ``prev_z`` = z, all
starting at 0):
    G = clip(rescale_grad * g + wd * w_i, clip_gradient)     # wd INSIDE the clip
    prev_v_{i+1} = beta2 * prev_v_i + (1 - beta2) * G^2
    d_t = (1 - beta1^t) / lr * (sqrt(prev_v_{i+1} / (1 - beta2^t)) + epsilon)
    prev_z_{i+1} = beta1 * prev_z_i + (1 - beta1) * G - (d_t - beta1 * prev_d_i) * w_i
    prev_d_{i+1} = d_t
    w_{i+1} = -prev_z_{i+1} / d_t

The tutorial omits rescale_grad, clip_gradient (the op's keyword is ``clip_grad``; optgen uses
the optimizer's ``clip_gradient``) and wd. The first step is sign-like, w_1 = w_0 - lr * G /
(|G| + epsilon). MXNet computes beta1^t and beta2^t in float32 inside the kernel; optgen computes
them once per step on the host with the kernel's float32 roundings (``f32``: beta1^t, 1 - beta1^t,
its quotient by lr, 1 - beta2^t), divides v by 1 - beta2^t in the kernel (``as_is(v / s)``) and
sums z's decayed terms before subtracting the correction: every recorded MXNet step to the bit.
MXNet master changed the default lr to 0.0025 and moved wd outside the clip; optgen follows
1.9.1 (lr 0.01, the base optimizer's default).

A sparse gradient (``nn.Embedding(sparse=True)``; MXNet's ``row_sparse``) steps as
``grad.to_dense()`` would, every row updated: MXNet 1.9.1 has no sparse kernel for this rule and
falls back to the dense one.
"""

import sympy as sp

from codegen.mxnet import common
from codegen.spec import Rule, as_is, f32, positive, unit

RULE = Rule("ftml", __doc__, class_name="FTML", mxnet="ftml")
mx = common(RULE, lr=0.01, lr_legal=positive())  # lr > 0: d_t divides by lr
RULE.sparse("dense")
beta1 = RULE.hyper("beta1", 0.6, unit(), doc="decay of the moving leader")
beta2 = RULE.hyper("beta2", 0.999, unit(), doc="decay of the second moment")
epsilon = RULE.hyper("epsilon", 1e-8, positive(), doc="added to the root of v")
w, t = RULE.weight, RULE.t
prev_d = RULE.state("prev_d", 0, doc="d of the previous step")
prev_v = RULE.state("prev_v", 0, doc="second moment v")
prev_z = RULE.state("prev_z", 0, doc="moving leader z")

G = RULE.let("G", mx.wd_inside_clip())
# MXNet's FTMLKernel in float32: its scalars float32 (1 - beta2, beta1^t and 1 - beta1^t, the
# quotient by lr), v / (1 - beta2^t) a division, z's two decayed terms summed first
b1, b2 = f32(beta1), f32(beta2)
v_new = RULE.update(prev_v, b2 * prev_v + f32(1 - b2) * G**2)
rate = f32(f32(1 - f32(b1**t)) / f32(mx.lr))
d_t = RULE.let("d_t", rate * (sp.sqrt(as_is(v_new / f32(1 - f32(b2**t)))) + epsilon))
leader = as_is(b1 * prev_z + f32(1 - b1) * G)
z_new = RULE.update(prev_z, leader - as_is(d_t - b1 * prev_d) * w)
RULE.update(prev_d, d_t)
# MXNet's kernel: - z[i] / d_t, a division (SymPy folded it into a product)
RULE.update(w, -as_is(z_new) / as_is(d_t))
