"""Adafactor: a second moment factored into a row and a column vector, relative step sizes.

Shazeer & Stern (2018), "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost".
Follows ``torch.optim.Adafactor`` (torch 2.13), which it is verified against.

Paper's equations (Algorithm 4, weight W of shape (n, m), G the gradient):
    rho_t = min(lr, 1 / sqrt(t));   alpha_t = max(eps2, RMS(W)) * rho_t;   beta2_t = 1 - t^c
    R_t = beta2_t R + (1 - beta2_t) mean_cols(G^2 + eps1);  C_t likewise with mean_rows
    V_t = R_t C_t / mean(R_t);   U_t = G / sqrt(V_t);   U^_t = U_t / max(1, RMS(U_t) / d)
    W <- W - alpha_t U^_t

torch's code (followed here; states ``row`` = R, ``col`` = C, ``variance`` for < 2-D weights):
    eps1 is not added to G^2: V_t = R_t C_t / max(mean(R_t), eps1), and U_t = G / sqrt(max(V_t,
    eps1^2)); c = beta2_decay (-0.8); R and C updated by torch's lerp (``torch_lerp``: at weight
    1 - beta2_t = 1, on the first step and at beta2_decay = 0, the new mean itself; until
    2026-12-07 R + 1 * (mean - R), a rounding of the old R where it dwarfs the mean, found by
    tests/fuzz/test_fuzz_dropin.py); decoupled weight decay first: W <- W (1 - lr wd), with
    alpha_t from RMS of W before the decay. A weight of more than two dims is factored over its
    last two (one R and C per matrix); a 0-D or 1-D weight keeps the full second moment.

optgen views every weight as (batch, rows, cols): a 1-D weight is one row, so its column vector
``col`` is the full second moment and V_t = C_t there, exactly torch's unfactored update (the
one-value ``row`` is kept but unused). torch's default eps1 (None) is the weight dtype's machine
epsilon; here None is float32's (1.19e-7) for every dtype.

The hyperparameters carry torch's names (``weight_decay``, ``maximize``; ``eps1``/``eps2`` are
the items of torch's ``eps`` tuple), and the drop-in ``generated.torch.optim.Adafactor`` has
torch's signature and state_dict: torch's ``row_var``/``col_var`` keep the reduced axis
(shape (..., n, 1) and (..., 1, m)), and a weight of fewer than two dims has ``variance`` (this
rule's ``col``) instead.

torch takes the step size's and the update clip's maxima with Python's ``max`` on floats
(``codegen.spec.python_max``): a NaN norm gives ``eps2`` and 1 there, so a NaN or inf gradient
element of a 1-D weight leaves the other elements finite, as here; a factored weight's row and
column means spread it to the whole matrix in both.
"""

import sympy as sp

from codegen.spec import Legal, Rule, nonnegative, positive, python_max, torch_lerp

RULE = Rule("adafactor", __doc__, class_name="Adafactor")
lr = RULE.hyper(
    "lr", 0.01, nonnegative(), doc="relative step size cap (rho_t = min(lr, 1/sqrt(t)))"
)
c = RULE.hyper("beta2_decay", -0.8, Legal(hi=0.0), doc="beta2_t = 1 - t^beta2_decay (<= 0)")
eps1 = RULE.hyper(
    "eps1",
    None,
    positive(allow_none=True),
    none=2.0**-23,
    doc="floor of the second moment estimate (eps[0]; None: float32's epsilon)",
)
eps2 = RULE.hyper("eps2", 1e-3, nonnegative(), doc="floor of RMS(weight) in the step size (eps[1])")
d = RULE.hyper("d", 1.0, positive(), doc="clipping threshold of RMS(update)")
wd = RULE.hyper("weight_decay", 0.0, nonnegative(), doc="decoupled weight decay")
maximize = RULE.flag("maximize", False, doc="ascend: use -grad")
w, t = RULE.weight, RULE.t
row = RULE.state("row", 0, doc="row factor R (mean of g^2 over each row)", axis=-1)
col = RULE.state("col", 0, doc="column factor C (mean of g^2 over each column)", axis=-2)

g = RULE.let("g", (1 - 2 * maximize) * RULE.grad)
omb = RULE.let("omb", t**c)  # 1 - beta2_t
alpha = RULE.let(
    "alpha", python_max(eps2, sp.sqrt(RULE.mean("w_sq", w**2))) * sp.Min(lr, 1 / sp.sqrt(t))
)
# torch's row_var.lerp_(row_mean, 1 - beta2_t): at a weight of 1 (t = 1, beta2_decay = 0) the
# new mean itself, where row + 1 * (mean - row) keeps a rounding of the old row
row_new = RULE.update(row, torch_lerp(row, RULE.mean("row_g2", g**2, axis=-1), omb))
col_new = RULE.update(col, torch_lerp(col, RULE.mean("col_g2", g**2, axis=-2), omb))
scale = RULE.let("scale", row_new / sp.Max(RULE.mean("row_mean", row_new, axis=-1), eps1))
V = RULE.let("V", sp.Piecewise((col_new, RULE.ndim < 2), (col_new * scale, True)))
U = RULE.let("U", g / sp.sqrt(sp.Max(V, eps1**2)))
denom = RULE.let("denom", python_max(1, sp.sqrt(RULE.mean("u_sq", U**2)) / d))
RULE.update(w, w * (1 - lr * wd) - alpha / denom * U)

RULE.torch_equivalent(
    "Adafactor",
    {
        "lr": "lr",
        "beta2_decay": "beta2_decay",
        "eps1": "eps[0]",
        "eps2": "eps[1]",
        "d": "d",
        "weight_decay": "weight_decay",
        "maximize": "maximize",
    },
    {row: ("row_var", 1), col: ("col_var", 1)},
)
RULE.drop_in(
    "Adafactor",
    "lr, beta2_decay, eps, d, weight_decay, *, foreach, maximize",
    below_2d={"col": "variance"},
)
