"""Muon: momentum orthogonalised by a Newton-Schulz iteration, for 2-D weights.

Jordan et al. (2024), "Muon: An optimizer for hidden layers in neural networks"
(https://kellerjordan.github.io/posts/muon/); Liu et al. (2025), "Muon is Scalable for LLM
Training" (the ``match_rms_adamw`` scale). Follows ``torch.optim.Muon`` (torch 2.13).

Equations (weight W of shape (rows, cols), G the gradient, B the momentum buffer):
    B_t = B + (1 - mu) (G - B)                         # torch's buf.lerp_(grad, 1 - mu)
    U = B_t - (1 - mu) (B_t - G) if nesterov else B_t  # torch's grad.lerp(buf, mu)
    X_0 = U / max(||U||_F, eps)
    X_{k+1} = a X_k + (b A + c A^2) X_k,  A = X_k X_k^T     (k < ns_steps)
    W <- W (1 - lr wd) - lr_adj X_{ns_steps}
    lr_adj = lr sqrt(max(1, rows / cols))      (adjust_lr_fn "original" or None, torch's default)
           = 0.2 lr sqrt(max(rows, cols))      ("match_rms_adamw")

torch runs the iteration on the transpose when rows > cols (the smaller Gram matrix); the step is
an odd polynomial p(X X^T) X, so X^T's iteration transposed back is the same matrix: optgen's
lowering proves this and picks the cheaper orientation from the shape, as torch does. torch casts
the momentum to bfloat16 and iterates there; optgen iterates in the weight's dtype (float32 or
float64) by default, and in bfloat16 at ``ns_dtype="bfloat16"``, holding what torch holds in
bfloat16 (codegen/matrix.py): X_0, A = X X^T, B = b A + c A^2 and a X + B X, each rounded once
from float32 (the last two as torch's ``addmm``, one rounding each), the products in bfloat16.
The one difference: torch rounds the momentum to bfloat16 before it normalises it, optgen
normalises in the weight's dtype and rounds X_0 (tests/test_muon.py bounds the difference).

Non-matrix weights: torch.optim.Muon refuses every parameter that is not 2-D (biases, gains and
embeddings belong to another optimizer); optgen does the same, with a ValueError naming the
parameter's shape before anything is written.
"""

import sympy as sp

from codegen import matrix
from codegen.spec import Rule, integer, nonnegative, positive, unit

RULE = Rule("muon", __doc__, class_name="Muon")
lr = RULE.hyper("lr", 1e-3, nonnegative(), doc="learning rate")
wd = RULE.hyper("wd", 0.1, nonnegative(), doc="decoupled weight decay (W *= 1 - lr wd)")
mu = RULE.hyper("momentum", 0.95, unit(), doc="momentum factor")
nesterov = RULE.flag("nesterov", True, doc="Nesterov momentum")
a = RULE.hyper("ns_a", 3.4445, doc="Newton-Schulz coefficient a (of X)")
b = RULE.hyper("ns_b", -4.7750, doc="Newton-Schulz coefficient b (of A X)")
c = RULE.hyper("ns_c", 2.0315, doc="Newton-Schulz coefficient c (of A^2 X)")
eps = RULE.hyper("epsilon", 1e-7, positive(), doc="floor of the Frobenius norm")
ns_steps = RULE.hyper("ns_steps", 5, integer(0, 99), doc="Newton-Schulz iterations")
adjust = RULE.choice(
    "adjust_lr_fn",
    "original",
    ("original", "match_rms_adamw"),
    doc="learning rate scale (None: original, as torch's default None)",
    none="original",
)
ns_dtype = RULE.choice(
    "ns_dtype",
    "weight",
    ("weight", "bfloat16"),
    doc="the Newton-Schulz iteration's format (bfloat16: torch's, faster where products are)",
)
w, g = RULE.weight, RULE.grad
buf = RULE.state("momentum_buffer", 0, doc="momentum B")

buf_new = RULE.update(buf, buf + (1 - mu) * (g - buf))
U = RULE.let("U", sp.Piecewise((buf_new - (1 - mu) * (buf_new - g), nesterov > 0), (buf_new, True)))
X0 = RULE.let("X0", U / sp.Max(RULE.norm("U_norm", U), eps))


def newton_schulz(X: matrix.Mat) -> matrix.Mat:
    A = X @ X.T
    return a * X + (b * A + c * (A @ A)) @ X


ortho = matrix.iterate(RULE, "ortho", X0, ns_steps, newton_schulz, precision=ns_dtype)
rows, cols = RULE.rows, RULE.cols
lr_adj = RULE.let(
    "lr_adj",
    sp.Piecewise(
        (lr * sp.sqrt(sp.Max(1, rows / cols)), RULE.is_choice(adjust, "original")),
        (sp.Rational(1, 5) * lr * sp.sqrt(sp.Max(rows, cols)), True),
    ),
)
RULE.torch_equivalent(
    "Muon",
    {
        "lr": "lr",
        "wd": "weight_decay",
        "momentum": "momentum",
        "nesterov": "nesterov",
        "ns_a": "ns_coefficients[0]",
        "ns_b": "ns_coefficients[1]",
        "ns_c": "ns_coefficients[2]",
        "epsilon": "eps",
        "ns_steps": "ns_steps",
        "adjust_lr_fn": "adjust_lr_fn",
    },
    {buf: ("momentum_buffer", 1)},
)
RULE.update(w, w * (1 - lr * wd) - lr_adj * ortho)
RULE.drop_in(
    "Muon",
    "lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn",
)
