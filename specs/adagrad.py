"""AdaGrad: per-element learning rates from the running sum of squared gradients.

Duchi, Hazan & Singer (2011), "Adaptive Subgradient Methods for Online Learning and Stochastic
Optimization". MXNet 1.9.1 ``mx.optimizer.AdaGrad`` (dense gradients: Python NDArray ops, no fused
op).

Seed's equations (tutorial; g2 is the accumulated squared gradient):
    g2_{i+1} = g2_i + grad(w_i)^2
    w_{i+1} = w_i - lr / sqrt(g2 + epsilon) * grad(w_i)

MXNet's code (1.9.1, followed here; the state ``history`` = h, starting at 0):
    G = clip(rescale_grad * g, clip_gradient)                 # no wd here
    history_{i+1} = history_i + G^2
    w_{i+1} = w_i - lr * (G / sqrt(history_{i+1} + eps) + wd * w_i)

So eps sits inside the square root (the keyword is ``eps``, default 1e-7), and weight decay is
added outside the adaptive term: it is scaled by lr alone and never accumulated into history.
MXNet master renamed the keyword ``epsilon`` (default 1e-6), moved it outside the root and feeds
clip(rescale_grad * g) + wd * w into history; optgen follows 1.9.1. torch.optim.Adagrad(eps)
also puts eps outside the root and adds wd * w to the gradient before accumulating it.

``initial_accumulator_value`` (torch.optim.Adagrad's; MXNet 1.9.1 has none and starts history at
0, this hyperparameter's default) is history's initial value: ``init_state`` takes it.

Sparse gradients (``nn.Embedding(sparse=True)``; MXNet's ``row_sparse``): at wd = 0 only the rows a
gradient holds are updated (MXNet 1.9.1's ``sparse.adagrad_update``); at wd != 0 they are refused,
as MXNet 1.9.1 fails there (its sparse kernel takes no wd).
"""

import sympy as sp

from codegen.mxnet import common
from codegen.spec import Rule, nonnegative, positive

RULE = Rule("adagrad", __doc__, class_name="Adagrad", mxnet="adagrad")
mx = common(RULE, lr=0.01)
RULE.sparse(
    "lazy",
    only_at={mx.wd: 0},
    why="MXNet 1.9.1's sparse AdaGrad takes wd = 0 only and fails otherwise: pass grad.to_dense()",
)
eps = RULE.hyper("eps", 1e-7, positive(), doc="added to history inside the square root")
initial_accumulator_value = RULE.hyper(
    "initial_accumulator_value", 0.0, nonnegative(), doc="history's initial value (torch's)"
)
w = RULE.weight
history = RULE.state("history", initial_accumulator_value, doc="sum of squared clipped gradients h")

G = RULE.let("G", mx.clipped())
RULE.torch_equivalent(
    "Adagrad",
    {
        "lr": "lr",
        "eps": "eps",
        "wd": "weight_decay",
        "initial_accumulator_value": "initial_accumulator_value",
    },
    {history: ("sum", 1)},
)
history_new = RULE.update(history, history + G**2)
RULE.update(w, w - mx.lr * (G / sp.sqrt(history_new + eps) + mx.wd * w))
