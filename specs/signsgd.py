"""signSGD: step by the sign of the gradient, with decoupled multiplicative weight decay.

Bernstein, Wang, Azizzadenesheli & Anandkumar (2018), "signSGD: Compressed Optimisation for
Non-Convex Problems". MXNet 1.9.1 ``mx.optimizer.Signum`` with ``momentum=0`` (fused op
``signsgd_update``); for momentum > 0 see ``signum``.

Seed's equations (tutorial):
    w_{i+1} = w_i - lr * sign(grad(w_i))

MXNet's code (1.9.1, followed here; no state):
    w_{i+1} = (1 - lr * wd) * w_i - lr * sign(g)
    sign(g) = (g > 0) - (g < 0)                                # MXNet's kernel

rescale_grad and clip_gradient are accepted and ignored, as in MXNet (its kernel never reads
them: a positive rescale cannot change a sign, and clipping never does). Weight decay is
decoupled and multiplicative, not added to the gradient. The sign is MXNet's comparison sign
(``codegen.mxnet.mxnet_sign``): sign(0) = 0, and a NaN gradient compares false both ways, so its
sign is 0 and that element of the weight is only decayed, w_{i+1} = (1 - lr * wd) * w_i, as in
MXNet (np.sign would give NaN; with wd_lh, below, the decay is 1 - lr * (wd + wd_lh)).

Difference from MXNet 1.9.1, on purpose (optgen's policy): 1.9.1 raises when ``wd_lh`` (the
decoupled decay of ``signum``) is nonzero with momentum 0, because ``signsgd_update`` has no such
argument. optgen applies it as MXNet master does, adding it to wd:
    w_{i+1} = (1 - lr * (wd + wd_lh)) * w_i - lr * sign(g)
With the default wd_lh = 0 this is 1.9.1 exactly.

A sparse gradient (``nn.Embedding(sparse=True)``; MXNet's ``row_sparse``) steps as
``grad.to_dense()`` would, every row updated: MXNet 1.9.1 has no sparse kernel for this rule and
falls back to the dense one.
"""

from codegen.mxnet import common, mxnet_sign
from codegen.spec import Rule, nonnegative

RULE = Rule("signsgd", __doc__, class_name="SignSGD", mxnet="signum")
mx = common(RULE, lr=0.01)
RULE.sparse("dense")
wd_lh = RULE.hyper("wd_lh", 0.0, nonnegative(), doc="decoupled weight decay, added to wd")
w, g = RULE.weight, RULE.grad

RULE.update(w, (1 - mx.lr * (mx.wd + wd_lh)) * w - mx.lr * mxnet_sign(g))
