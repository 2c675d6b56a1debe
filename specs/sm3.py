"""SM3: Adagrad-like steps from one accumulator per row and one per column (a cover of the weight).

Anil, Gupta, Koren & Singer (2019), "Memory-Efficient Adaptive Optimization". Follows
``pytorch_optimizer.SM3`` (pytorch-optimizer 4.1.0), which it is verified against.

Paper's equations (SM3-II, cover sets S_r, accumulators mu_r starting at 0, G the gradient):
    nu_t(i) = min_{r: i in S_r} mu_{t-1}(r) + G(i)^2
    mu_t(r) = max_{j in S_r} nu_t(j)
    W(i) <- W(i) - lr G(i) / sqrt(nu_t(i))

The reference's code (followed here; states ``row`` and ``col`` are mu over the rows and columns
of a matrix, ``mom`` its ``momentum_buffer``; beta its ``beta``, epsilon its ``eps``):
    nu = beta min(row_i, col_j) + (1 - beta) G^2     (min(row_i, col_j) + G^2 when beta = 0:
                                                      it multiplies by beta only when beta > 0)
    row_i = max(row_i, max_j nu),  col_j = max(col_j, max_i nu)   (old value dropped if beta = 0)
    U = G / sqrt(nu + epsilon);   mom = lerp(mom, U, 1 - momentum) (used if momentum > 0)
    W <- W - lr mom
The lerp is written momentum mom + (1 - momentum) U: U itself when momentum = 0.

Where it differs: the reference keeps one accumulator per tensor dimension (for a (B, R, C) weight
three, of B, R and C values); optgen views every weight as (batch, rows, cols) and keeps one per
row and one per column of each matrix: B R + B C values, the cover {(b, r, :)} and {(b, :, c)}. It
is a valid SM3 cover (each element in a row set and a column set), finer than the reference's, so
steps of >= 3-D weights differ from the reference (tests/test_sm3.py checks them against NumPy).
0-D, 1-D and 2-D weights get the reference's covers: a 1-D weight is one row, its column
accumulator the full nu (min(row, col_j) = col_j there), a 0-D weight one element, whose
accumulator the reference sets to nu without the max when beta > 0 (an EMA of G^2): so here.
"""

import sympy as sp

from codegen.spec import Rule, nonnegative, unit

RULE = Rule("sm3", __doc__, class_name="SM3")
lr = RULE.hyper("lr", 0.1, nonnegative(), doc="learning rate")
momentum = RULE.hyper("momentum", 0.0, unit(), doc="momentum factor (0: no momentum)")
beta = RULE.hyper("beta", 0.0, unit(hi_open=False), doc="decay of the accumulators (0: sums)")
epsilon = RULE.hyper("epsilon", 1e-30, nonnegative(), doc="added to nu under the square root")
w, g = RULE.weight, RULE.grad
row = RULE.state("row", 0, doc="accumulator of each row (max over the row of nu)", axis=-1)
col = RULE.state("col", 0, doc="accumulator of each column (max over the column of nu)", axis=-2)
mom = RULE.state("mom", 0, doc="momentum buffer (lerp of the updates)")

decay = RULE.let("decay", sp.Piecewise((beta, beta > 0), (1, True)))
nu = RULE.let("nu", decay * sp.Min(row, col) + (1 - beta) * g**2)
row_max = RULE.max("row_max", nu, axis=-1)
col_max = RULE.max("col_max", nu, axis=-2)
keep = (beta > 0) & (RULE.ndim > 0)  # the reference's 0-D accumulator is nu itself
RULE.update(row, sp.Piecewise((sp.Max(row, row_max), keep), (row_max, True)))
RULE.update(col, sp.Piecewise((sp.Max(col, col_max), keep), (col_max, True)))
mom_new = RULE.update(mom, momentum * mom + (1 - momentum) * g / sp.sqrt(nu + epsilon))
RULE.update(w, w - lr * mom_new)
