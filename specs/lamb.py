"""LAMB: Adam's direction rescaled per tensor by the trust ratio ||w|| / ||update||.

You et al. (2019), "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes".
MXNet 1.9.1 ``mx.optimizer.LAMB`` (fused ops ``lamb_update_phase1`` / ``lamb_update_phase2``).

Paper's equations:
    m_{i+1} = beta1 * m_i + (1 - beta1) * g;   v_{i+1} = beta2 * v_i + (1 - beta2) * g^2
    u = mhat / (sqrt(vhat) + epsilon) + wd * w_i
    w_{i+1} = w_i - lr * phi(||w_i||) / ||u|| * u

MXNet's code (1.9.1, followed here; states ``mean`` = m, ``var`` = v):
    G = clip(rescale_grad * g, clip_gradient)                 # wd is NOT in the moments
    phase 1: m, v as above on G; with bias_correction, mhat = m / (1 - beta1^t) and
             vhat = v / (1 - beta2^t), otherwise m and v;
             u = mhat / (sqrt(vhat) + epsilon) + wd * w_i
    phase 2: r1 = ||w_i|| clamped to [lower_bound, upper_bound] where given (phi), r2 = ||u||,
             ratio = r1 / r2, or 1 when r1 or r2 is 0;  w_{i+1} = w_i - lr * ratio * u

The two norms are per-tensor reductions: optgen computes them in a reduction phase (NumPy: float64
sums over chunks, in a fixed order; Triton: per-block sums exact in int64 fixed point, rounded to
float32 (the same bits from the vectorised and the scalar kernel variant), added on the host in
float64 in block order, a fixed order that repeats run to run) and recomputes u in the update
phase instead of storing it (no extra buffer).

The moments follow the phase-1 kernel's float32 arithmetic (``1.f - beta`` from the float32 beta,
``f32``): MXNet's m and v to the bit at every recorded step. The weight does not, within a few
float32 ulps: MXNet computes the norms in float32 and m's bias correction in double.

NaN: one NaN gradient element makes ||u|| NaN, hence the trust ratio, hence every element of the
new weight NaN (the whole tensor, not just that element), as MXNet 1.9.1's formula gives (its
ratio is r1 / r2 unless one of them is 0). With torch.amp.GradScaler the torch class skips such a
step instead.

A sparse gradient (``nn.Embedding(sparse=True)``; MXNet's ``row_sparse``) steps as
``grad.to_dense()`` would, every row updated: MXNet 1.9.1 has no sparse kernel for this rule and
falls back to the dense one.
"""

import sympy as sp

from codegen.mxnet import common
from codegen.spec import Legal, Rule, as_is, f32, positive, unit

RULE = Rule("lamb", __doc__, class_name="LAMB", mxnet="lamb")
mx = common(RULE, lr=0.001)
RULE.sparse("dense")
beta1 = RULE.hyper("beta1", 0.9, unit(), doc="decay of the first moment")
beta2 = RULE.hyper("beta2", 0.999, unit(), doc="decay of the second moment")
epsilon = RULE.hyper("epsilon", 1e-6, positive(), doc="added to sqrt(vhat)")
lower_bound = RULE.hyper(
    "lower_bound", None, Legal(lo=0.0), none=0.0, doc="lower clamp of ||w||; None: none"
)
upper_bound = RULE.hyper(
    "upper_bound", None, positive(), none=float("inf"), doc="upper clamp of ||w||; None: none"
)
bias_correction = RULE.flag("bias_correction", True, doc="divide m, v by 1 - beta^t")
w, t = RULE.weight, RULE.t
mean = RULE.state("mean", 0, doc="first moment m")
var = RULE.state("var", 0, doc="second moment v")

G = RULE.let("G", mx.clipped())
# MXNet's kernel: 1.f - beta in float32, (1.f - beta2) * grad * grad left to right (never g**2:
# it overflows first)
b1, b2 = f32(beta1), f32(beta2)
mean_new = RULE.update(mean, b1 * mean + (1 - b1) * G)
var_new = RULE.update(var, b2 * var + as_is((1 - b2) * G) * G)
mhat = mean_new / (1 - bias_correction * beta1**t)
vhat = var_new / (1 - bias_correction * beta2**t)
u = RULE.let("u", mhat / (sp.sqrt(vhat) + epsilon) + mx.wd * w)
r1 = RULE.let("r1", sp.Min(sp.Max(RULE.norm("w_sq", w), lower_bound), upper_bound))
r2 = RULE.let("r2", RULE.norm("u_sq", u))
ratio = RULE.let("ratio", sp.Piecewise((1, sp.Eq(r1, 0) | sp.Eq(r2, 0)), (r1 / r2, True)))
RULE.update(w, w - mx.lr * ratio * u)
