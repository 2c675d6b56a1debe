"""The one table of operations (codegen/ops.py): what a spec may write, the linearizer, the
symbolic reconstruction and every printer derive from it; a printer lacking an operation fails
when it is imported, naming the operation."""

from __future__ import annotations

import importlib

import pytest
import sympy as sp

from codegen import ops
from codegen.lower import _Linearizer
from codegen.spec import SUPPORTED_FUNCTIONS
from codegen.targets import numpy as numpy_target
from codegen.targets import triton as triton_target


@pytest.mark.parametrize("module", [numpy_target, triton_target], ids=["numpy", "triton"])
def test_a_printer_missing_an_operation_fails_at_import(
    module, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ops, "ELEMENT_OPS", (*ops.ELEMENT_OPS, "tanh"))
    with pytest.raises(ImportError, match=r"no entry for operation\(s\) tanh"):
        importlib.reload(module)
    monkeypatch.undo()
    importlib.reload(module)  # the real table: imports again


def test_a_printer_with_a_stray_operation_fails_at_import() -> None:
    with pytest.raises(ImportError, match=r"unknown operation\(s\) cbrt"):
        ops.require("probe", {**dict.fromkeys(ops.ELEMENT_OPS), "cbrt": None})


def test_spec_functions_and_the_linearizer_come_from_the_table() -> None:
    spec_level = {op.sympy for op in ops.OPS if op.sympy is not None}
    assert set(SUPPORTED_FUNCTIONS) | set(ops.RELATIONALS) | set(ops.HOST_ONLY) == spec_level
    lowered = set(_Linearizer.UNARY) | set(_Linearizer.RELATIONAL) | {sp.Max, sp.Min}
    assert lowered | {sp.Piecewise} | set(ops.HOST_ONLY) == spec_level


@pytest.mark.parametrize("op", [o for o in ops.OPS if not o.host_only], ids=lambda o: o.name)
def test_every_element_operation_has_a_reconstruction(op: ops.OpDef) -> None:
    a, b, c = sp.symbols("a b c", positive=True)
    args = (sp.Gt(a, b), b, c) if op.name == "where" else (a, b, c)[: op.arity]
    assert isinstance(ops.build(op.name, *args), sp.Basic)
