"""CAME: Adafactor's factored second moment, and a factored confidence of the momentum's update.

Luo et al. (2023), "CAME: Confidence-guided Adaptive Memory Efficient
Optimization". Follows ``pytorch_optimizer.CAME`` (pytorch-optimizer 4.1.0), verified against it.

Paper's equations (Algorithm 1, weight W of shape (n, m), G the gradient, 1 the ones vector):
    R = b2 R + (1 - b2) (G^2 + eps1) 1_m;   C = b2 C + (1 - b2) 1_n^T (G^2 + eps1)
    V = R C / (1_n^T R);   U = G / sqrt(V);   U^ = U / max(1, RMS(U) / d)
    m = b1 m + (1 - b1) U^;   Res = (U^ - m)^2 + eps2
    R' = b3 R' + (1 - b3) Res 1_m;   C' = b3 C' + (1 - b3) 1_n^T Res;   S = R' C' / (1_n^T R')
    W <- W - lr m / sqrt(S)

The reference's code (followed here; states ``exp_avg`` = m, ``row``/``col`` = R/C as means over
the rows/columns, ``res_row``/``res_col`` = R'/C'; beta1..3 its ``betas``, d its clip_threshold):
    the sums are means, V^(-1/2) = rsqrt(R / mean(R)) rsqrt(C), S^(-1/2) likewise;
    m is updated with lerp(m, U^, 1 - b1) (written m + (1 - b1) (U^ - m) here);
    weight decay before all: W <- W (1 - wd lr) (weight_decouple, the default; 1 - wd with
    fixed_decay), else G <- G + wd W. A weight of more than two dims is factored over its last two.
    A 0-D or 1-D weight keeps the full second moment V and has no confidence: W <- W - lr m.

optgen views every weight as (batch, rows, cols): a 1-D weight is one row, so the column states
``col`` and ``res_col`` are full there (V = C, the reference's unfactored update; ``res_col`` and
the one-value row states are kept but unused). Not supported: ``ams_bound=True`` (a full-size
state more), ``maximize=True`` (pass -G). The reference also stores RMS(W), which no update uses.
"""

import sympy as sp

from codegen.spec import Rule, nonnegative, positive, unit

RULE = Rule("came", __doc__, class_name="CAME")
lr = RULE.hyper("lr", 2e-4, nonnegative(), doc="learning rate")
beta1 = RULE.hyper("beta1", 0.9, unit(), doc="decay of the momentum m")
beta2 = RULE.hyper("beta2", 0.999, unit(), doc="decay of the second moment factors")
beta3 = RULE.hyper("beta3", 0.9999, unit(), doc="decay of the confidence (residual) factors")
wd = RULE.hyper("wd", 0.0, nonnegative(), doc="weight decay")
decouple = RULE.flag("weight_decouple", True, doc="decay the weight (else add wd W to G)")
fixed = RULE.flag("fixed_decay", False, doc="decoupled decay by wd, not lr wd")
d = RULE.hyper("clip_threshold", 1.0, positive(), doc="clipping threshold of RMS(update)")
eps1 = RULE.hyper("eps1", 1e-30, nonnegative(), doc="added to G^2")
eps2 = RULE.hyper("eps2", 1e-16, nonnegative(), doc="added to the squared residual")
w, g = RULE.weight, RULE.grad
m = RULE.state("exp_avg", 0, doc="momentum m of the clipped updates")
row = RULE.state("row", 0, doc="row factor R (mean of G^2 + eps1 over each row)", axis=-1)
col = RULE.state("col", 0, doc="column factor C (mean of G^2 + eps1 over each column)", axis=-2)
res_row = RULE.state("res_row", 0, doc="row factor of the residual (confidence)", axis=-1)
res_col = RULE.state("res_col", 0, doc="column factor of the residual (confidence)", axis=-2)

flat = RULE.ndim < 2  # the reference's unfactored update
G = RULE.let("G", g + sp.Piecewise((0, decouple > 0), (wd, True)) * w)
shrink = sp.Piecewise((1 - wd * sp.Piecewise((1, fixed > 0), (lr, True)), decouple > 0), (1, True))
sq = RULE.let("sq", G**2 + eps1)
row_new = RULE.update(row, beta2 * row + (1 - beta2) * RULE.mean("row_sq", sq, axis=-1))
col_new = RULE.update(col, beta2 * col + (1 - beta2) * RULE.mean("col_sq", sq, axis=-2))
r_f = RULE.let("r_f", 1 / sp.sqrt(row_new / RULE.mean("row_mean", row_new, axis=-1)))
U = RULE.let("U", sp.Piecewise((1, flat), (r_f, True)) / sp.sqrt(col_new) * G)
Uc = RULE.let("Uc", U / sp.Max(sp.sqrt(RULE.mean("u_sq", U**2)) / d, 1))
m_new = RULE.update(m, m + (1 - beta1) * (Uc - m))
res = RULE.let("res", (Uc - m_new) ** 2 + eps2)
res_row_new = RULE.update(res_row, beta3 * res_row + (1 - beta3) * RULE.mean("rr", res, axis=-1))
res_col_new = RULE.update(res_col, beta3 * res_col + (1 - beta3) * RULE.mean("rc", res, axis=-2))
s_r = RULE.let("s_r", 1 / sp.sqrt(res_row_new / RULE.mean("res_mean", res_row_new, axis=-1)))
conf = RULE.let("conf", sp.Piecewise((1, flat), (s_r / sp.sqrt(res_col_new), True)))
RULE.update(w, w * shrink - lr * conf * m_new)
