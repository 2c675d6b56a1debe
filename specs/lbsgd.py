"""LBSGD: large-batch SGD that emulates a batch_scale-times larger batch, with a warmup multiplier.

Goyal et al. (2017), "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour" (linear warmup);
You et al. (2017) for the 'lars' multiplier. MXNet 1.9.1 ``mx.optimizer.LBSGD`` (removed in 2.0).

Tutorial: "no additional modifications to SGD". MXNet's code (1.9.1, followed here; states
``mom`` (velocity) and ``acc`` (gradients accumulated over the current macro-batch), both 0):
    k = begin_epoch * updates_per_epoch + t                    # MXNet's per-weight call counter
    C = acc_i + g;  macro-batch complete when k mod batch_scale == 0
    complete:   gbar = C / batch_scale
                mult = 'lars':  clamp(sqrt(||w||^2 / (||gbar||^2 + wd ||w||^2 + 1e-18)), 0.01, 100)
                       else, N = warmup_epochs * updates_per_epoch:  batch_scale if k >= N;
                       linear 1 + (B - 1) k / N; power2 1 + (B - 1) k^2 / N^2;
                       sqrt 1 + (B - 1) sqrt(k / N)
                G = clip(rescale_grad * gbar, clip_gradient) + wd * w_i
                mom_{i+1} = momentum * mom_i - lr * mult * G;  w_{i+1} = w_i + mom_{i+1};  acc = 0
    otherwise:  acc_{i+1} = C; weight and momentum unchanged

Difference from MXNet 1.9.1, on purpose (optgen's policy): 1.9.1 keeps the first gradient of a
macro-batch by reference, so a trainer that reuses one gradient buffer accumulates g2 + g2 instead
of g1 + g2; optgen accumulates into its own buffer. With momentum = 0 MXNet calls sgd_update
(w - lr' wd w - lr' G): the same algebra as here, computed as that kernel does ((1 - lr' wd) w -
lr' G), as sgd_mom_update's order is followed at momentum > 0, with their float32 scalars
(``times_clipped``, ``times_wd``) and gbar = C / batch_scale a division: every recorded MXNet
step to the bit but the 'lars' strategy's, whose norms MXNet sums in float32 (NumPy's pairwise
sum of the float32 squares; optgen's reductions are double). ``num_epochs`` is accepted by MXNet
and unused: it is not a hyperparameter here. The norms are per-tensor reductions, computed every
step (also for the warmup strategies that do not use them).

batch_scale, updates_per_epoch, begin_epoch and warmup_epochs are counts (MXNet documents them as
unsigned; the macro-batch test k mod B == 0 and the counter k need whole numbers), so other values
are refused. Hence k >= 1, and MXNet's branch "mult = 1 if N <= 1" (tested after k >= N) can never
be taken; nor can "mult = 1 for an unknown strategy" (warmup_strategy is one of the four): both
are left out.
"""

import sympy as sp

from codegen.mxnet import common
from codegen.spec import Rule, as_is, f32, integer, unit

RULE = Rule("lbsgd", __doc__, class_name="LBSGD", mxnet="lbsgd")
mx = common(RULE, lr=0.01)
momentum = RULE.hyper("momentum", 0.0, unit(), doc="momentum factor")
strategy = RULE.choice(
    "warmup_strategy", "linear", ("linear", "power2", "sqrt", "lars"), doc="rate multiplier"
)
warmup_epochs = RULE.hyper("warmup_epochs", 5, integer(0), doc="epochs of warmup")
batch_scale = RULE.hyper("batch_scale", 1, integer(1), doc="macro-batch size B, in calls")
updates_per_epoch = RULE.hyper("updates_per_epoch", 32, integer(1), doc="calls per epoch")
begin_epoch = RULE.hyper("begin_epoch", 0, integer(0), doc="epoch the counter starts at")
w, g, t = RULE.weight, RULE.grad, RULE.t
mom = RULE.state("mom", 0, doc="velocity")
acc = RULE.state("acc", 0, doc="gradients accumulated over the current macro-batch")

B = batch_scale
k = RULE.let("k", begin_epoch * updates_per_epoch + t)
complete = sp.Eq(sp.Mod(k, B), 0)
total = RULE.let("total", acc + g)
gbar = RULE.let("gbar", as_is(total / B))
n_warmup = warmup_epochs * updates_per_epoch
w_sq = RULE.sum("w_sq", w**2)
gbar_sq = RULE.sum("gbar_sq", gbar**2)
lars = sp.Min(sp.Max(sp.sqrt(w_sq / (gbar_sq + mx.wd * w_sq + sp.Float("1e-18"))), 0.01), 100)
# MXNet's "1 if N <= 1" (after k >= N) and "1 for an unknown strategy" are unreachable here
# (k >= 1; warmup_strategy is one of the four choices): left out, so every branch is tested.
mult = RULE.let(
    "mult",
    sp.Piecewise(
        (lars, RULE.is_choice(strategy, "lars")),
        (B, k >= n_warmup),
        (1 + (B - 1) * k / n_warmup, RULE.is_choice(strategy, "linear")),
        (1 + (B - 1) * k**2 / n_warmup**2, RULE.is_choice(strategy, "power2")),
        (1 + (B - 1) * sp.sqrt(k / n_warmup), True),  # sqrt
    ),
)
# MXNet's kernels in float32: the rate lr * mult a float32 scalar, sgd_mom_update's
# (momentum * mom - (rate*wd) * w) - rate * clip(rescale_grad * gbar), and at momentum 0
# sgd_update's (1 - rate*wd) * w - rate * clip(rescale_grad * gbar)
rate = f32(mx.lr * mult)
scaled = mx.times_clipped(rate).xreplace({g: gbar})
step = as_is(as_is(momentum * mom - mx.times_wd(rate) * w) - scaled)
mom_new = RULE.update(mom, sp.Piecewise((step, complete), (mom, True)))
RULE.update(acc, sp.Piecewise((0, complete), (total, True)))
plain = as_is(as_is((1 - f32(mx.times_wd(rate))) * w) - scaled)
RULE.update(
    w,
    sp.Piecewise((w, sp.Not(complete)), (plain, sp.Eq(momentum, 0)), (w + mom_new, True)),
)

# Each strategy with a macro-batch of 2 calls and a warmup of 3 that ends within the 8 steps
# (k < N and k >= N both taken), besides the settings the tests derive.
for kind in ("linear", "power2", "sqrt", "lars"):
    RULE.test_case(
        steps=8,
        batch_scale=2,
        warmup_epochs=1,
        updates_per_epoch=3,
        momentum=0.9,
        warmup_strategy=kind,
        wd=0.01,
        clip_gradient=0.8,
    )
