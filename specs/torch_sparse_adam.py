"""SparseAdam exactly as torch.optim computes it: the drop-in ``SparseAdam``.

Kingma & Ba (2015), "Adam: A Method for Stochastic Optimization", applied lazily: torch's
``SparseAdam`` (torch 2.13, ``torch.optim._functional.sparse_adam``) takes only sparse (COO)
gradients, as ``nn.Embedding(sparse=True)`` makes them, and updates only the elements they hold
(after ``coalesce``, which sums repeated indices); rows without a gradient keep their weight and
both moments (they do not decay), and the step count of a parameter advances on every step it
has a gradient, an empty one included. MXNet's ``adam`` with ``lazy_update=True`` is the same
idea.

torch's code on the gradient's values ``g`` (states ``exp_avg`` = m, ``exp_avg_sq`` = v):
    g = -grad if maximize else grad
    m <- m + (g - m) * (1 - beta1)
    v <- v + (g^2 - v) * (1 - beta2)
    w <- w - (lr * sqrt(1 - beta2^t) / (1 - beta1^t)) * (m / (sqrt(v) + eps))

These equations are those of one element a gradient holds: the drop-in class gathers the held
elements of the weight and its states into dense rows, runs this rule's generated code on them
and writes them back (``optgen_runtime.optim.dropin``); the spec-named class ``TorchSparseAdam``
applies them to every element of a dense gradient (Adam without weight decay, in SparseAdam's
order of operations). Unlike ``torch_adam``, eps is added to sqrt(v) before the bias correction,
which is folded into the step size.
"""

import sympy as sp

from codegen.spec import Rule, as_is, nonnegative, positive, unit

RULE = Rule("torch_sparse_adam", __doc__)
# torch's constructor refuses lr=0 (the drop-in runs torch's checks), its step takes it (a
# scheduler's warm-up from 0)
lr = RULE.hyper("lr", 0.001, nonnegative(), doc="learning rate")
beta1 = RULE.hyper("beta1", 0.9, unit(), doc="decay of the first moment (betas[0])")
beta2 = RULE.hyper("beta2", 0.999, unit(), doc="decay of the second moment (betas[1])")
eps = RULE.hyper("eps", 1e-8, positive(), doc="added to sqrt(v)")
maximize = RULE.flag("maximize", False, doc="ascend: use -grad")
w, g, t = RULE.weight, RULE.grad, RULE.t
exp_avg = RULE.state("exp_avg", 0, doc="first moment m")
exp_avg_sq = RULE.state("exp_avg_sq", 0, doc="second moment v")

G = RULE.let("G", (1 - 2 * maximize) * g)
m_new = RULE.update(exp_avg, exp_avg + (G - exp_avg) * (1 - beta1))
v_new = RULE.update(exp_avg_sq, exp_avg_sq + (G**2 - exp_avg_sq) * (1 - beta2))
ratio = RULE.let("ratio", m_new / (sp.sqrt(v_new) + eps))
# param.add_(-step_size * numer.div_(denom)): the ratio first
RULE.update(w, w - lr * sp.sqrt(1 - beta2**t) / (1 - beta1**t) * as_is(ratio))

RULE.torch_equivalent(
    "SparseAdam",
    {
        "lr": "lr",
        "beta1": "betas[0]",
        "beta2": "betas[1]",
        "eps": "eps",
        "maximize": "maximize",
    },
    {exp_avg: ("exp_avg", 1), exp_avg_sq: ("exp_avg_sq", 1)},
)
RULE.drop_in("SparseAdam", "lr, betas, eps, maximize")
