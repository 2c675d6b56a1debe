"""SGD: plain stochastic gradient descent with MXNet's weight decay, rescaling and clipping.

Robbins & Monro (1951), "A Stochastic Approximation Method"; MXNet 1.9.1 ``mx.optimizer.SGD`` with
``momentum=0`` (fused op ``sgd_update``).

Seed's equations:
    w_{i+1} = w_i - lr * grad(w_i)

MXNet's code (1.9.1, followed here):
    G = clip(rescale_grad * g, clip_gradient)           # wd outside the clip
    w_{i+1} = w_i - lr * wd * w_i - lr * G

in 1.9.1's float32 order (``multi_sgd_update``, which ``SGD.update`` calls even for one weight):
``w + ((0 - (lr*wd) * w) - lr * clip(rescale_grad * g))``, and with clipping off ``... -
(lr*rescale_grad) * g``, the scalar products in float32 (``lr_clipped``, ``lr_wd``): every
recorded MXNet step to the bit (``0 - x`` is written ``-x``: they differ only in the sign of a
zero, and only where the weight is a zero too).

At wd = 0 and rescale_grad = 1 (the defaults) the update runs as ``w - lr * clip(g)`` (the
special case ``plain``: those values substituted exactly, so ``0 * w`` is not computed), which is
what MXNet's ``(1 - lr*wd)*w - lr*G`` gives there even for an infinite weight.

The tutorial never shows rescale_grad, clip_gradient or wd; they enter as above. For momentum > 0
see ``sgd_mom``: MXNet's ``SGD`` switches to ``sgd_mom_update`` and allocates a momentum buffer only
then, so optgen keeps the two as two rules (no unused state buffer for plain SGD).

Sparse gradients (``nn.Embedding(sparse=True)``; MXNet's ``row_sparse``): with ``lazy_update=True``
(MXNet 1.9.1's default) only the rows a gradient holds are updated, with their weight decay included
(MXNet's ``sparse.sgd_update``); ``lazy_update=False`` is MXNet's standard update, the step of
``grad.to_dense()`` (MXNet's own sparse standard update rounds ``(1 - lr*wd)*w -
(lr*rescale_grad)*g`` a little differently from its dense op).
"""

from codegen.mxnet import common
from codegen.spec import Rule, as_is

RULE = Rule("sgd", __doc__, class_name="SGD", mxnet="sgd")
mx = common(RULE, lr=0.01)
RULE.sparse("lazy", lazy_update=True)
w = RULE.weight

RULE.torch_equivalent("SGD", {"lr": "lr", "wd": "weight_decay"}, {})
RULE.update(w, w + as_is(as_is(-(mx.lr_wd() * w)) - mx.lr_clipped()))
# At the defaults the update is w - lr * clip(g): one multiply and one add per element (clip off)
# where the whole update computes five, and MXNet's value there ((1 - lr*wd)*w keeps an infinite
# weight infinite; w - lr*wd*w would give inf - inf = NaN).
RULE.special_case("plain", {mx.wd: 0, mx.rescale_grad: 1}, doc="no weight decay, no rescaling")
