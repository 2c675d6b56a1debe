"""NAG: Nesterov's accelerated gradient in MXNet's reformulated (look-ahead weight) form.

Nesterov (1983); Sutskever et al. (2013), "On the importance of initialization and momentum in
deep learning", section 3.5. MXNet ``mx.optimizer.NAG`` (fused op ``nag_mom_update``).

Seed's equations (tutorial):
    v_{i+1} = momentum * v_i - lr * grad(w_i + momentum * v_i)
    w_{i+1} = w_i + v_{i+1}

An update op cannot evaluate the gradient at the look-ahead point, so MXNet stores the look-ahead
weight and uses the reformulation (state ``mom`` = v, starting at 0):
    G = clip(rescale_grad * g, clip_gradient) + wd * w_i     # wd outside the clip
    mom_{i+1} = momentum * mom_i - lr * G
    w_{i+1} = w_i + momentum * mom_{i+1} - lr * G

computed in the kernel's float32 order, ``(w_i - momentum * mom_i) + (momentum + 1) * mom_{i+1}``
(``momentum + 1`` a float32 sum): at wd = 0 every recorded MXNet step to the bit.

Difference from MXNet 1.9.1, on purpose (optgen's policy): 1.9.1's in-place kernel writes the new
weight before it computes the momentum, so with wd > 0 the momentum's wd term reads w_{i+1}
instead of w_i. optgen uses w_i (MXNet master's fixed kernel). With wd = 0 the two agree exactly.
MXNet 1.9.1's default ``momentum=0`` (plain SGD) is kept.

torch.optim.SGD(momentum, weight_decay=wd, nesterov=True) stores the same (look-ahead) weight and
computes the same weights while lr is constant. Its buffer is in gradient units, buf = -mom / lr
(buf_{i+1} = momentum * buf_i + G, w_{i+1} = w_i - lr * (G + momentum * buf_{i+1})), and the
whole buffer is multiplied by the current lr, where ``mom`` keeps each step's own lr. When lr
changes from a to b before step k+1 (a scheduler), the weights part by
    w_{k+1}(optgen) - w_{k+1}(torch) = momentum^2 * (b - a) * buf_k,
    mom_{k+1} + b * buf_{k+1} = momentum * (b - a) * buf_k
(tests/test_torch_optim.py). torch has no rescale_grad or clip_gradient, and refuses nesterov
with dampening.

A sparse gradient (``nn.Embedding(sparse=True)``; MXNet's ``row_sparse``) steps as
``grad.to_dense()`` would, every row updated at momentum > 0: MXNet 1.9.1 has no sparse kernel for
this rule and falls back to the dense one. At momentum = 0 MXNet 1.9.1's NAG runs ``sgd_update``,
which updates only the rows held: a sparse gradient is refused there (``SGD`` does that).
"""

from codegen.mxnet import common
from codegen.spec import Rule, as_is, f32, unit

RULE = Rule("nag", __doc__, class_name="NAG", mxnet="nag")
mx = common(RULE, lr=0.01)
momentum = RULE.hyper("momentum", 0.0, unit(), doc="momentum factor")
RULE.sparse(
    "dense",
    not_at={momentum: 0},
    why="at momentum 0 MXNet 1.9.1's NAG updates only the rows held (sgd_update): use SGD",
)
w = RULE.weight
mom = RULE.state("mom", 0, doc="velocity")

G = RULE.let("G", mx.wd_outside_clip())
decayed = momentum * mom
mom_new = RULE.update(mom, decayed - mx.lr * G)
RULE.update(w, as_is(w - decayed) + (f32(momentum) + 1) * mom_new)
