"""A matrix rule's equations at 40 digits (mpmath), independent of the generated code: per-element
equations element by element, reductions summed, the matrix equations node by node on mpmath
matrices (the ops of codegen/ops.py). Shared by the matrix rules' tests (test_muon, test_adamuon).
"""

from __future__ import annotations

from typing import Any

import mpmath
import sympy as sp

from codegen import matrix
from codegen.spec import Rule


def reference_step(rule: Rule, weight, grad, state, t: int, hp: dict[str, float]):
    """One step of ``rule`` on nested lists of mpf (``weight``, ``grad``, ``state`` by name);
    ``hp``: every hyperparameter as a number. Returns (new weight, new state)."""
    mpmath.mp.dps = 40
    rows, cols = len(weight), len(weight[0])
    values: dict[sp.Symbol, Any] = {rule.hypers[k].symbol: v for k, v in hp.items()}
    values[rule.t] = t
    for size in rule.sizes:
        values[size] = {"rows": rows, "cols": cols, "numel": rows * cols, "ndim": 2}[size.name]
    arrays = {rule.weight: weight, rule.grad: grad}
    arrays.update({rule.states[n].symbol: a for n, a in state.items()})
    iterations = {it.symbol: it for it in matrix.iterations(rule)}

    def element(expr, i, j):
        sub = {s: sp.Float(a[i][j], 45) for s, a in arrays.items() if s in expr.free_symbols}
        sub.update({s: sp.Float(v, 45) for s, v in values.items() if s in expr.free_symbols})
        return sp.N(expr.xreplace(sub), 40)

    for eq in rule.ordered_equations():
        for sym in sorted(eq.expr.free_symbols & set(iterations) - set(arrays), key=str):
            it = iterations[sym]
            assert it.start in arrays, f"{sym} is used before its start {it.start} is computed"
            x = mpmath.matrix([[mpmath.mpf(str(v)) for v in row] for row in arrays[it.start]])
            bits = held_bits(it, values)
            x = held(x, bits)
            for _ in range(int(values[it.steps])):
                x = apply(it.body, x, values, bits)
            arrays[sym] = [[x[i, j] for j in range(cols)] for i in range(rows)]
        if eq.target in rule.reductions:
            values[eq.target] = sum(
                element(eq.expr, i, j) for i in range(rows) for j in range(cols)
            )
        elif rule.domain(eq.target):
            arrays[eq.target] = [[element(eq.expr, i, j) for j in range(cols)] for i in range(rows)]
        else:
            values[eq.target] = element(eq.expr, 0, 0)
    new_state = {n: arrays[s.new] for n, s in rule.states.items()}
    return arrays[rule.weight_new], new_state


# significant bits of each format an iteration may be held in (its mantissa and the leading 1)
SIGNIFICANT_BITS = {"bfloat16": 8, "float16": 11}


def held_bits(it: matrix.Iteration, values: dict) -> int | None:
    """The significant bits of the format the iteration is held in; None: the weight's dtype
    (computed exactly here)."""
    if it.precision is None:
        return None
    fmt = it.precisions[int(values[it.precision])]
    return None if fmt == "weight" else SIGNIFICANT_BITS[fmt]


def held(x, bits: int | None):
    """Each element of the mpmath matrix ``x`` rounded to ``bits`` significant bits, to nearest,
    ties to even (the values here lie far inside the formats' exponent ranges)."""
    if bits is None:
        return x
    out = x.copy()
    for i in range(x.rows):
        for j in range(x.cols):
            mantissa, exponent = mpmath.frexp(x[i, j])  # x = mantissa 2^exponent, |mantissa| < 1
            out[i, j] = mpmath.ldexp(mpmath.nint(mpmath.ldexp(mantissa, bits)), exponent - bits)
    return out


def held_nodes(root: matrix.Mat) -> set[int]:
    """The nodes a held iteration stores in its format (ids): the step's result and every
    operand of a product, a transposed operand's source too (the semantics of
    codegen/matrix.py's docstring, found here on the equations' graph itself)."""
    held = {id(root)}
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.kind == "matmul":
            for operand in node.args:
                while True:
                    held.add(id(operand))
                    if operand.kind != "transpose":
                        break
                    operand = operand.args[0]
        stack.extend(node.args)
    return held


def apply(node: matrix.Mat, x, values, bits: int | None = None):
    """One step of a matrix equation on the mpmath matrix ``x``; ``bits``: each held value
    (:func:`held_nodes`) rounded to that many significant bits (:func:`held`), the others
    exact."""
    memo: dict[int, object] = {}
    stored = held_nodes(node)

    def value(n: matrix.Mat):
        if id(n) not in memo:
            args = [value(a) for a in n.args]
            if n.kind == "input":
                memo[id(n)] = x
            elif n.kind == "matmul":
                memo[id(n)] = args[0] * args[1]
            elif n.kind == "transpose":
                memo[id(n)] = args[0].T
            elif n.kind == "madd":
                memo[id(n)] = args[0] + args[1]
            elif n.kind == "mscale":
                s = n.scalar.xreplace({k: sp.Float(v, 45) for k, v in values.items()})
                memo[id(n)] = mpmath.mpf(str(sp.N(s, 40))) * args[0]
            else:  # a matrix op this reference does not know: extend it with the table
                raise AssertionError(n.kind)
            if n.kind not in ("input", "transpose") and id(n) in stored:
                memo[id(n)] = held(memo[id(n)], bits)
        return memo[id(n)]

    return value(node)


def mp_array(a) -> list[list[Any]]:
    return [[mpmath.mpf(float(v)) for v in row] for row in a]


def as_float(a) -> list[list[float]]:
    return [[float(v) for v in row] for row in a]
