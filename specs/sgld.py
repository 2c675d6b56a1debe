"""SGLD: stochastic gradient Langevin dynamics, half a gradient step plus Gaussian noise.

Welling & Teh (2011), "Bayesian Learning via Stochastic Gradient Langevin Dynamics". MXNet 1.9.1
``mx.optimizer.SGLD`` (Python NDArray code).

Seed's equations:
    w_{i+1} = w_i - lr / 2 * grad(w_i) + eta_i,   eta_i ~ N(0, lr)

MXNet's code (1.9.1, followed here):
    G = clip(rescale_grad * g, clip_gradient)
    w_{i+1} = w_i - lr / 2 * (G + wd * w_i) + sqrt(lr) * xi,   xi ~ N(0, 1) per element

The tutorial says the rate decreases to zero; the optimizer itself keeps it constant (a scheduler
does that). MXNet draws xi from its global generator; optgen draws it from a counter-based Philox
stream keyed by (seed, step) with the element index as counter, so the NumPy module and the
Triton kernel produce the same noise (bitwise in the interpreter), and the same seed gives the
same trajectory; the compiled CPU module draws the same stream, its normals within 4 ulp
(Box-Muller's float32 log and cos rounded from float64, not NumPy's SIMD routines). No recorded
MXNet golden can match random draws: verified against the equations (with the same draws) and
statistically.

A sparse gradient (``nn.Embedding(sparse=True)``; MXNet's ``row_sparse``) steps as
``grad.to_dense()`` would, every row updated, noise drawn for every element: MXNet 1.9.1 has no
sparse kernel for this rule and falls back to the dense one.
"""

import sympy as sp

from codegen.mxnet import common
from codegen.spec import Rule

RULE = Rule("sgld", __doc__, class_name="SGLD", mxnet="sgld")
mx = common(RULE, lr=0.01)
RULE.sparse("dense")
w = RULE.weight
xi = RULE.normal("xi")

RULE.update(w, w - mx.lr / 2 * (mx.clipped() + mx.wd * w) + sp.sqrt(mx.lr) * xi)
