"""AdaMuon: Muon's orthogonalised momentum with an Adam-style second moment, for 2-D weights.

Si, Zhang, Li, Wu, Wang & Chen (2025), "AdaMuon: Adaptive Muon Optimizer"
(https://arxiv.org/abs/2507.11005). Reference: pytorch-optimizer 4.1.0
``pytorch_optimizer.AdaMuon`` (a ``use_muon=True`` group, ``foreach=False``), followed here.
Written with the matrix equations of ``codegen.matrix`` and nothing else: the proof that a second
matrix rule needs no change to the generator.

Equations (weight W of shape (rows, cols), G the gradient, m and v the moments):
    G' = G + wd W if not weight_decouple else G      # coupled decay, into the gradient
    m_t = m + (1 - beta1) (G' - m)                   # the reference's m.lerp_(grad, 1 - beta1)
    X_0 = m_t / max(||m_t||_F, 1e-7)                 # its Newton-Schulz floor, not settable
    X_{k+1} = a X_k + (b A + c A^2) X_k,  A = X_k X_k^T     (k < ns_steps)
    O = X_{ns_steps}
    v_t = beta2 v + (1 - beta2) O^2                        # per element
    U = O / (sqrt(v_t / (1 - beta2^t)) + epsilon)
    W <- W (1 - lr wd [weight_decouple]) - lr_adj sqrt(min(rows, cols)) U / (||U||_F + epsilon)
    lr_adj = 0.2 lr sqrt(max(rows, cols))   (use_adjusted_lr, the reference's default)
           = lr sqrt(max(1, rows / cols))   (Keller Jordan's scale)

The reference keeps v flattened (shape (rows*cols,)); here it has the weight's shape, the same
numbers. Like Muon's, the iteration runs on the cheaper orientation (the lowering proves the step
transpose-equivariant), as the reference does (it transposes when rows > cols). The reference
casts the momentum to bfloat16 and iterates there; optgen iterates in the weight's dtype
(float32 or float64) by default, and at ``ns_dtype="bfloat16"`` holds what the reference holds
in bfloat16 (X_0, A = X X^T, b A + c A^2 and a X + B X, the last two one ``addmm`` each;
codegen/matrix.py), normalising in the weight's dtype where the reference normalises the
bfloat16 momentum: tests/test_adamuon.py compares with the reference's own iteration run in
float32 and bounds the bfloat16 difference either way.

Non-matrix weights: the reference flattens a weight of more than 2 dimensions to (rows, rest) and
sends 1-D ones to its AdamW branch (``use_muon=False``); optgen refuses every weight that is not
2-D, with a ValueError naming its shape before anything is written (give biases and gains to
another optimizer, as with Muon). Not reproduced: the AdamW branch, ``maximize`` and the
``foreach`` batching of same-shape matrices (the same numbers per matrix).
"""

import sympy as sp

from codegen import matrix
from codegen.spec import Rule, integer, nonnegative, unit

RULE = Rule("adamuon", __doc__, class_name="AdaMuon")
lr = RULE.hyper("lr", 2e-2, nonnegative(), doc="learning rate")
wd = RULE.hyper("wd", 0.0, nonnegative(), doc="weight decay")
beta1 = RULE.hyper("beta1", 0.9, unit(), doc="decay of the momentum m")
beta2 = RULE.hyper("beta2", 0.95, unit(), doc="decay of the second moment v of the orthogonal O")
eps = RULE.hyper("epsilon", 1e-10, nonnegative(), doc="added to sqrt(v) and to ||U||")
a = RULE.hyper("ns_a", 3.4445, doc="Newton-Schulz coefficient a (of X)")
b = RULE.hyper("ns_b", -4.7750, doc="Newton-Schulz coefficient b (of A X)")
c = RULE.hyper("ns_c", 2.0315, doc="Newton-Schulz coefficient c (of A^2 X)")
ns_steps = RULE.hyper("ns_steps", 5, integer(1, 99), doc="Newton-Schulz iterations")
adjusted = RULE.flag("use_adjusted_lr", True, doc="0.2 sqrt(max(rows, cols)), else Jordan's")
decouple = RULE.flag("weight_decouple", True, doc="decay W by 1 - lr wd, else add wd W to G")
ns_dtype = RULE.choice(
    "ns_dtype",
    "weight",
    ("weight", "bfloat16"),
    doc="the Newton-Schulz iteration's format (bfloat16: the reference's)",
)
w, g, t = RULE.weight, RULE.grad, RULE.t
m = RULE.state("m", 0, doc="momentum m")
v = RULE.state("v", 0, doc="second moment v of the orthogonalised momentum")

m_new = RULE.update(m, m + (1 - beta1) * (g + (1 - decouple) * wd * w - m))
X0 = RULE.let("X0", m_new / sp.Max(RULE.norm("m_norm", m_new), sp.Float("1e-7")))


def newton_schulz(X: matrix.Mat) -> matrix.Mat:
    A = X @ X.T
    return a * X + (b * A + c * (A @ A)) @ X


ortho = matrix.iterate(RULE, "ortho", X0, ns_steps, newton_schulz, precision=ns_dtype)
v_new = RULE.update(v, beta2 * v + (1 - beta2) * ortho**2)
U = RULE.let("U", ortho / (sp.sqrt(v_new / (1 - beta2**t)) + eps))
rows, cols = RULE.rows, RULE.cols
lr_adj = RULE.let(
    "lr_adj",
    sp.Piecewise(
        (sp.Rational(1, 5) * lr * sp.sqrt(sp.Max(rows, cols)), adjusted > 0),
        (lr * sp.sqrt(sp.Max(1, rows / cols)), True),
    ),
)
scale = sp.sqrt(sp.Min(rows, cols)) / (RULE.norm("U_norm", U) + eps)
RULE.update(w, w * (1 - decouple * lr * wd) - lr_adj * scale * U)
