"""DC-ASGD: SGD with a first-order compensation for a delayed (stale) gradient.

Zheng et al. (2017), "Asynchronous Stochastic Gradient Descent with Delay Compensation". MXNet
1.9.1 ``mx.optimizer.DCASGD`` (Python NDArray ops, no fused op).

Seed's equations (tutorial; lambda is lamda, w_i the weight the gradient was taken at):
    w_{i+tau+1} = w_{i+tau} - lr * (grad(w_i) + lambda * grad(w_i)^2 * (w_{i+tau} - w_i))

MXNet's code (1.9.1, followed here for momentum = 0; state ``prev_weight`` starts as a copy of
the weight, ``mom`` at 0):
    G = clip(rescale_grad * g, clip_gradient)                 # no wd here
    s = -lr * (G + wd * w_i + lamda * G^2 * (w_i - prev_weight_i))
    mom_{i+1} = momentum * mom_i + s
    prev_weight_{i+1} = w_i
    w_{i+1} = w_i + mom_{i+1}

The stale weight w_i of the tutorial is simply the weight before the previous call. Weight decay
enters the step, not the compensation term.

Difference from MXNet 1.9.1, on purpose (optgen's policy): with momentum > 0, 1.9.1 crashes (its
``if mom:`` tests a multi-element NDArray), so optgen follows the working momentum recursion of
MXNet master, mom_{i+1} = momentum * mom_i + s, above. With the default momentum = 0 this is
1.9.1 exactly (mom_{i+1} = s; 1.9.1 then keeps no momentum buffer, optgen keeps one for a uniform
state layout). MXNet master also moves wd into the gradient (G + wd * w_i, squared in the
compensation term); optgen keeps 1.9.1's placement.
"""

from codegen.mxnet import common
from codegen.spec import Rule, as_is, nonnegative, unit

RULE = Rule("dcasgd", __doc__, class_name="DCASGD", mxnet="dcasgd")
mx = common(RULE, lr=0.01)
momentum = RULE.hyper("momentum", 0.0, unit(), doc="momentum factor")
lamda = RULE.hyper("lamda", 0.04, nonnegative(), doc="scale of the delay compensation")
w = RULE.weight
mom = RULE.state("mom", 0, doc="velocity")
prev_weight = RULE.state("prev_weight", RULE.weight, doc="weight before the previous step")

G = RULE.let("G", mx.clipped())
# MXNet: self.lamda * grad * grad * (weight - previous_weight), left to right: G**2 first
# overflowed, and times the first step's 0 it was NaN
s = RULE.let("s", -mx.lr * (G + mx.wd * w + as_is(as_is(lamda * G) * G) * (w - prev_weight)))
mom_new = RULE.update(mom, momentum * mom + s)
RULE.update(prev_weight, w)
RULE.update(w, w + mom_new)
