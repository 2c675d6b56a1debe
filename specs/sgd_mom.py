"""SGD with momentum (heavy ball), as MXNet's ``SGD`` computes it when ``momentum > 0``.

Polyak (1964), "Some methods of speeding up the convergence of iteration methods"; Sutskever et
al. (2013). MXNet 1.9.1 ``mx.optimizer.SGD(momentum>0)`` (fused op ``sgd_mom_update``).

Seed's equations:
    v_{i+1} = momentum * v_i - lr * grad(w_i)
    w_{i+1} = w_i + v_{i+1}

MXNet's code (1.9.1, followed here; the state ``mom`` is v, starting at 0):
    G = clip(rescale_grad * g, clip_gradient) + wd * w_i     # wd outside the clip
    mom_{i+1} = momentum * mom_i - lr * G
    w_{i+1} = w_i + mom_{i+1}

in 1.9.1's float32 order (``multi_sgd_mom_update``, which ``SGD.update`` calls even for one
weight): ``(momentum * mom - (lr*wd) * w) - lr * clip(rescale_grad * g)``, and with clipping off
``... - (lr*rescale_grad) * g``, the scalar products in float32 (``lr_clipped``, ``lr_wd``):
every recorded MXNet step to the bit.

The default ``momentum=0`` is MXNet's (its ``SGD`` then has no momentum buffer; see ``sgd``).
torch.optim.SGD(momentum, weight_decay, dampening=0) keeps ``buf = -mom / lr``: with a constant lr
the two trajectories coincide.

Sparse gradients (``nn.Embedding(sparse=True)``; MXNet's ``row_sparse``): with ``lazy_update=True``
(MXNet 1.9.1's default) only the rows a gradient holds are updated, with their momentum, weight
decay included (MXNet's ``sparse.sgd_mom_update``); ``lazy_update=False`` is MXNet's standard
update, the step of ``grad.to_dense()``.
"""

from codegen.mxnet import common
from codegen.spec import Rule, as_is, unit

RULE = Rule("sgd_mom", __doc__, class_name="SGDMomentum", mxnet="sgd")
mx = common(RULE, lr=0.01)
RULE.sparse("lazy", lazy_update=True)
momentum = RULE.hyper("momentum", 0.0, unit(), doc="momentum factor")
w = RULE.weight
mom = RULE.state("mom", 0, doc="velocity (MXNet's momentum buffer)")

# torch.optim.SGD keeps buf with mom = -lr * buf.
RULE.torch_equivalent(
    "SGD",
    {"lr": "lr", "momentum": "momentum", "wd": "weight_decay"},
    {mom: ("momentum_buffer", -mx.lr)},
)
mom_new = RULE.update(mom, as_is(as_is(momentum * mom - mx.lr_wd() * w) - mx.lr_clipped()))
RULE.update(w, w + mom_new)
