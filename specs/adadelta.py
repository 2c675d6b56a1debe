"""AdaDelta: steps scaled by the ratio of running RMS of past steps to running RMS of gradients.

Zeiler (2012), "ADADELTA: An Adaptive Learning Rate Method". MXNet 1.9.1
``mx.optimizer.AdaDelta`` (Python NDArray ops, no fused op).

Seed's equations (tutorial; beta is rho):
    E[dw^2]_{i+1} = beta * E[dw^2]_i + (1 - beta) * (w_i - w_{i-1})^2
    E[g^2]_{i+1} = beta * E[g^2]_i + (1 - beta) * grad(w_i)^2
    w_{i+1} = w_i - sqrt(E[dw^2] + epsilon) / sqrt(E[g^2]_{i+1} + epsilon) * grad(w_i)

MXNet's code (1.9.1, followed here; states ``acc_g`` = E[g^2], ``acc_delta`` = E[dw^2], starting
at 0):
    G = clip(rescale_grad * g, clip_gradient)                 # no wd here
    acc_g_{i+1} = rho * acc_g_i + (1 - rho) * G^2
    delta = sqrt(acc_delta_i + epsilon) / sqrt(acc_g_{i+1} + epsilon) * G
    acc_delta_{i+1} = rho * acc_delta_i + (1 - rho) * delta^2
    w_{i+1} = w_i - delta - wd * w_i

The tutorial accumulates the previous step (w_i - w_{i-1})^2 before stepping; the code computes
delta from the old acc_delta and accumulates delta^2 afterwards. There is no learning rate: MXNet
1.9.1 accepts ``learning_rate`` and ignores it, so this rule declares none. Weight decay is
decoupled and not scaled by any rate; delta excludes it, so acc_delta is not the mean square of the
actual steps when wd > 0 (MXNet's docstring, which puts wd inside the clipped gradient, is wrong
about its own code). MXNet 1.9.1 also scales the caller's gradient array in place; optgen never
writes the gradient. MXNet master multiplies delta by ``learning_rate`` (default 1.0), uses epsilon
1e-6 and feeds clip(rescale_grad * g) + wd * w to everything; optgen follows 1.9.1.
torch.optim.Adadelta(lr=1.0) is the seed's form with eps inside both roots and wd added to the
gradient.

A sparse gradient (``nn.Embedding(sparse=True)``; MXNet's ``row_sparse``) steps as
``grad.to_dense()`` would, every row updated: MXNet 1.9.1 has no sparse kernel for this rule and
falls back to the dense one.
"""

import sympy as sp

from codegen.mxnet import common
from codegen.spec import Rule, as_is, positive, unit

RULE = Rule("adadelta", __doc__, class_name="Adadelta", mxnet="adadelta")
mx = common(RULE, lr=None)
RULE.sparse("dense")
rho = RULE.hyper("rho", 0.9, unit(), doc="decay of both running averages")
epsilon = RULE.hyper("epsilon", 1e-5, positive(), doc="added inside both square roots")
w = RULE.weight
acc_g = RULE.state("acc_g", 0, doc="running mean of G^2")
acc_delta = RULE.state("acc_delta", 0, doc="running mean of delta^2")

G = RULE.let("G", mx.clipped())
RULE.torch_equivalent(
    "Adadelta",
    {"rho": "rho", "epsilon": "eps", "wd": "weight_decay"},
    {acc_g: ("square_avg", 1), acc_delta: ("acc_delta", 1)},
)
# MXNet's NDArray expressions, left to right: (1 - rho) * grad * grad is ((1 - rho) * g) * g, and
# delta is computed first, then (1 - rho) * delta * delta: SymPy would expand delta**2 into a
# quotient of squares, inf / inf = NaN where g**2 overflows float32
acc_g_new = RULE.update(acc_g, rho * acc_g + as_is((1 - rho) * G) * G)
delta = RULE.let(
    "delta", as_is(as_is(sp.sqrt(acc_delta + epsilon) / sp.sqrt(acc_g_new + epsilon)) * G)
)
RULE.update(acc_delta, rho * acc_delta + as_is((1 - rho) * delta) * delta)
# MXNet: weight[:] -= current_delta + wd * weight (a -0.0 weight stays -0.0 at wd = 0)
RULE.update(w, w - as_is(delta + mx.wd * w))
