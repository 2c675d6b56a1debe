"""The printer of ``host_scalars_rows`` (``codegen.targets.host.RowsPrinter``): what depends on
a tensor's sums is printed with NumPy operations that round as Python's float operations do, a
Piecewise as ``optgen_runtime.columns.rows_where``; anything else is refused, and the rule then
gets no ``host_scalars_rows``. What the printed code computes is checked against
``host_scalars`` in tests/test_columns.py (runtime only: it runs on a lent GPU machine, which
has no jinja2 for ``codegen``)."""

from __future__ import annotations

import pytest
import sympy as sp

from codegen.ops import Guarded
from codegen.targets.host import NotColumnwise, RowsCode

s, u, a = sp.symbols("s u a")


def rows(expr: sp.Expr, varying: set[sp.Symbol] = frozenset({s, u})) -> str:
    return RowsCode(set(varying), "len(s)")(expr)


def test_the_rows_printer_prints_sums_with_numpy_and_the_rest_as_host_code() -> None:
    assert rows(sp.sqrt(s)) == "np.sqrt(s)"
    assert rows(1 / sp.sqrt(s)) == "(1.0 / np.sqrt(s))"
    assert rows(sp.Max(a, sp.sqrt(s))) == "rows_max(a, np.sqrt(s))"
    assert rows(sp.Min(a, 2)) == "host_min(2, a)"  # no sum: as host_scalars prints it
    assert rows(sp.sqrt(a)) == "math.sqrt(a)"
    assert rows(a**3) == "a ** 3"
    text = rows(sp.Piecewise((1, sp.Eq(s, 0) | sp.Eq(u, 0)), (s / u, True)))
    assert text == (
        "rows_where(len(s), lambda _r0: np.logical_or((s[_r0] == 0), (u[_r0] == 0)), "
        "lambda _r0: 1, lambda _r0: s[_r0]/u[_r0])"
    )
    text = rows(Guarded(s / u, s > 0))
    assert text == (
        "rows_where(len(s), lambda _r0: (s[_r0] > 0), lambda _r0: s[_r0]/u[_r0], lambda _r0: 0.0)"
    )
    text = rows(sp.Piecewise((s, a > 0), (u, True)))
    assert text == "rows_where(len(s), lambda _r0: (a > 0), lambda _r0: s[_r0], lambda _r0: u[_r0])"
    # a branch within a branch runs on the rows of its enclosing one
    text = rows(sp.Piecewise((sp.Piecewise((s, u > 1), (a, True)), s > 0), (u, True)))
    assert text == (
        "rows_where(len(s), lambda _r0: (s[_r0] > 0), lambda _r0: rows_where(_r0, "
        "lambda _r1: (u[_r1] > 1), lambda _r1: s[_r1], lambda _r1: a), lambda _r0: u[_r0])"
    )


@pytest.mark.parametrize(
    "expr",
    [s**2, s**a, a**s, sp.exp(s), sp.log(u), sp.Mod(s, 3), sp.Piecewise((s, a > 0))],
    ids=["square", "power", "exponent", "exp", "log", "mod", "no-otherwise"],
)
def test_the_rows_printer_refuses_what_numpy_may_round_otherwise(expr: sp.Expr) -> None:
    """libm's pow and NumPy's (SIMD) pow, exp and log may differ in the last bit: a rule whose
    sums enter them gets no ``host_scalars_rows``."""
    with pytest.raises(NotColumnwise):
        rows(expr)
