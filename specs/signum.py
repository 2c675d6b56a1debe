"""Signum: signSGD with momentum, stepping by the sign of an exponential average of gradients.

Bernstein, Wang, Azizzadenesheli & Anandkumar (2018), "signSGD: Compressed Optimisation for
Non-Convex Problems". MXNet 1.9.1 ``mx.optimizer.Signum`` with ``momentum > 0`` (fused op
``signum_update``); for momentum = 0 see ``signsgd``.

Seed's equations (tutorial; gamma is momentum):
    v_{i+1} = gamma * v_i + (1 - gamma) * grad(w_i)
    w_{i+1} = w_i - lr * sign(v_{i+1})

MXNet's code (1.9.1, followed here; the state ``mom`` starts at 0):
    G = clip(rescale_grad * g, clip_gradient) + wd * w_i     # wd outside the clip
    mom_{i+1} = momentum * mom_i - (1 - momentum) * G
    w_{i+1} = (1 - lr * wd_lh) * w_i + lr * sign(mom_{i+1})
    sign(m) = (m > 0) - (m < 0)                                # MXNet's kernel

in the kernel's float32 order: ``(momentum * mom - ((1 - momentum) * wd) * w) - (1 - momentum) *
clip(rescale_grad * g)``, ``(1 - momentum) * rescale_grad`` scaling g with clipping off, the
scalars float32 (``times_clipped``, ``times_wd``): every recorded MXNet step to the bit.

The tutorial omits rescale_grad, clip_gradient, wd and wd_lh. MXNet stores the negated average,
mom = -v, and adds lr * sign(mom); optgen keeps its sign
convention, so ``mom`` is MXNet's buffer. wd enters the momentum (coupled), ``wd_lh`` decays the
weight directly (decoupled). momentum must be > 0: MXNet's ``Signum(momentum=0)`` is another
update (``signsgd``), so 0 is refused rather than silently computing something MXNet does not.

The sign is MXNet's comparison sign (``codegen.mxnet.mxnet_sign``): sign(0) = 0, and a NaN
momentum compares false both ways, so its sign is 0: a NaN gradient makes that element's ``mom``
NaN (for good: it stays NaN), and its weight is from then on only decayed,
w_{i+1} = (1 - lr * wd_lh) * w_i, as in MXNet (np.sign would make the weight NaN).

A sparse gradient (``nn.Embedding(sparse=True)``; MXNet's ``row_sparse``) steps as
``grad.to_dense()`` would, every row updated: MXNet 1.9.1 has no sparse kernel for this rule and
falls back to the dense one.
"""

from codegen.mxnet import common, mxnet_sign
from codegen.spec import Rule, as_is, f32, nonnegative, unit

RULE = Rule("signum", __doc__, class_name="Signum", mxnet="signum")
mx = common(RULE, lr=0.01)
RULE.sparse("dense")
momentum = RULE.hyper("momentum", 0.9, unit(lo_open=True), doc="decay of the momentum")
wd_lh = RULE.hyper("wd_lh", 0.0, nonnegative(), doc="decoupled weight decay")
w = RULE.weight
mom = RULE.state("mom", 0, doc="negated momentum -v (MXNet's buffer)")

decay = f32(1 - f32(momentum))
decayed = as_is(momentum * mom - mx.times_wd(decay) * w)
mom_new = RULE.update(mom, as_is(decayed - mx.times_clipped(decay)))
RULE.update(w, (1 - f32(f32(mx.lr) * f32(wd_lh))) * w + mx.lr * mxnet_sign(mom_new))
