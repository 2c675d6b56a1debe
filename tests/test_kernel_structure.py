"""Every generated Triton kernel, read as source: the properties the numerics tests cannot see.

Kernels are found by parsing generated/triton/*.py (every ``@triton.jit`` function), so a new
spec's kernels are covered without touching this file. A kernel's call of its rule's shared body
(``<rule>_kernel_body``, ``<rule>_reduce_kernel_body``) is inlined first, with the arguments the
kernel passes (``if AMP:`` resolved), and the kernel is checked as it runs. Checked per kernel:

- ``tl.program_id`` is cast to int64 before any offset is formed (no wrap past 2**31 elements);
- every block load/store (addressed through ``tl.arange``) is masked; the only unmasked accesses
  are one-element ones indexed by the program id or by what it loads (the multi-tensor kernels'
  meta table and, through the program's tensor, its row of the fp32 host-scalar table;
  per-block partial sums);
- no ``**`` and no ``/``: division is ``tl.div_rn``, square root ``tl.sqrt_rn`` (IEEE rounding,
  not the GPU's approximate ``div.full``/``sqrt.approx``); no ``tl.sqrt``, ``tl.rsqrt``,
  ``tl.fdiv``, ``pow``;
- ``tl.maximum``/``tl.minimum`` propagate NaN (``propagate_nan=tl.PropagateNan.ALL``);
- ``BLOCK_SIZE`` is the only ``tl.constexpr`` parameter of a kernel (``AMP`` of a shared body);
  every other parameter is a pointer, a tensor size, a host scalar (the lowering's host scalars,
  launched as Python floats, which Triton never specializes on) or listed in
  ``do_not_specialize``: a new hyperparameter value never recompiles;
- no ``triton.autotune``/``triton.heuristics``: one compiled variant per dtype combination;
- block stores cast to the pointer's element type (``.to(<ptr>.dtype.element_ty)``);
- a kernel taking ``amp_ptr`` (GradScaler's [found_inf, inv_scale], the multi-tensor update
  kernels) reads exactly its two elements, masks every block store with ``found_inf`` and
  multiplies the gradient by ``inv_scale`` in the statement right after loading it.
"""

from __future__ import annotations

import ast
import copy
import importlib
import os
import re
from pathlib import Path

import pytest
from conftest import RULE_NAMES, RULES

from codegen.lower import lower

ROOT = Path(os.environ.get("OPTGEN_ROOT") or Path(__file__).resolve().parent.parent)
TRITON_DIR = ROOT / "generated" / "triton"
FILES = sorted(p for p in TRITON_DIR.glob("*.py") if p.name != "__init__.py")

SIZES = {"n_elements", "n_tensors", "n_chunks", "n_batch", "n_rows", "n_cols"}
AMP_READS = {"amp_ptr", "amp_ptr + 1"}  # found_inf, inv_scale: the same two for every program
# Every rule's host scalars (launched as Python floats, never specialized on).
HOST_SCALARS = {name: {s.name for s in lower(RULES[name]).host} for name in RULE_NAMES}
FORBIDDEN_CALLS = {
    "sqrt": "tl.sqrt_rn",
    "rsqrt": "tl.div_rn(1.0, tl.sqrt_rn(x))",
    "fdiv": "tl.div_rn",
    "div": "tl.div_rn",
    "pow": "multiplications",
}


def is_jit(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return ast.unparse(target) == "triton.jit"


def jit_functions(tree: ast.Module) -> list[ast.FunctionDef]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and any(is_jit(d) for d in node.decorator_list)
    ]


def kernels(tree: ast.Module) -> list[ast.FunctionDef]:
    """The launched kernels (not the shared bodies they call)."""
    return [fn for fn in jit_functions(tree) if not fn.name.endswith("_body")]


class _Substitute(ast.NodeTransformer):
    """A body's parameters replaced by the caller's arguments; ``if <constant>:`` resolved."""

    def __init__(self, mapping: dict[str, ast.expr]) -> None:
        self.mapping = mapping

    def visit_Name(self, node: ast.Name) -> ast.expr:
        if isinstance(node.ctx, ast.Load) and node.id in self.mapping:
            return copy.deepcopy(self.mapping[node.id])
        return node

    def visit_If(self, node: ast.If) -> list[ast.stmt] | ast.If:
        node = self.generic_visit(node)
        if isinstance(node.test, ast.Constant):
            return node.body if node.test.value else node.orelse
        return node


def inlined(fn: ast.FunctionDef, bodies: dict[str, ast.FunctionDef]) -> ast.FunctionDef:
    """``fn`` with each call of a shared body replaced by the body's statements."""
    fn = copy.deepcopy(fn)
    statements: list[ast.stmt] = []
    for stmt in fn.body:
        call = stmt.value if isinstance(stmt, ast.Expr) else None
        if isinstance(call, ast.Call) and ast.unparse(call.func) in bodies:
            body = bodies[ast.unparse(call.func)]
            params = [a.arg for a in body.args.args]
            assert len(params) == len(call.args), ast.unparse(call)
            mapping = dict(zip(params, call.args, strict=True))
            for inner in copy.deepcopy(body.body):
                result = _Substitute(mapping).visit(inner)
                statements += result if isinstance(result, list) else [result]
        else:
            statements.append(stmt)
    fn.body = [
        s
        for s in statements
        if not isinstance(s, ast.Expr) or not isinstance(s.value, ast.Constant)
    ]
    return fn


def names_in(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def calls_to(node: ast.AST, attr: str) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(node)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == attr
    ]


def tainted(fn: ast.FunctionDef, seed) -> set[str]:
    """Names assigned (in order) from an expression that ``seed`` accepts or that uses one."""
    names: set[str] = set()
    # in source order, loop bodies included (a loop's offsets: ``offs = outer * n + lane``)
    assigns = sorted((n for n in ast.walk(fn) if isinstance(n, ast.Assign)), key=lambda n: n.lineno)
    for stmt in assigns:
        if seed(stmt.value) or names_in(stmt.value) & names:
            names |= {t.id for t in stmt.targets if isinstance(t, ast.Name)}
    return names


def is_int64_cast(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "to"
        and [ast.unparse(a) for a in node.args] == ["tl.int64"]
    )


def kernel_violations(fn: ast.FunctionDef, scalars: set[str] = frozenset()) -> list[str]:
    where = fn.name
    problems: list[str] = []
    parents = {child: node for node in ast.walk(fn) for child in ast.iter_child_nodes(node)}

    # decorators: triton.jit only; do_not_specialize lists the integer runtime arguments
    no_specialize: set[str] = set()
    for d in fn.decorator_list:
        if not is_jit(d):
            problems.append(f"{where}: decorator {ast.unparse(d)} (only @triton.jit)")
        elif isinstance(d, ast.Call):
            for kw in d.keywords:
                if kw.arg == "do_not_specialize":
                    no_specialize |= set(ast.literal_eval(kw.value))

    # parameters
    params = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
    for arg in params:
        constexpr = arg.annotation is not None and "constexpr" in ast.unparse(arg.annotation)
        if constexpr != (arg.arg == "BLOCK_SIZE"):
            problems.append(f"{where}: parameter {arg.arg} constexpr={constexpr}")
        elif not (
            constexpr
            or arg.arg.endswith(("_ptr", "_like"))
            or arg.arg in SIZES
            or arg.arg in scalars
            or arg.arg in no_specialize
        ):
            problems.append(f"{where}: parameter {arg.arg} is specialized on (do_not_specialize)")

    # int64 program id and offsets
    program_ids = calls_to(fn, "program_id")
    if not program_ids:
        problems.append(f"{where}: no tl.program_id")
    for call in program_ids:
        if not is_int64_cast(parents.get(parents.get(call))):
            problems.append(f"{where}: tl.program_id not cast to int64: {ast.unparse(call)}")
    int64 = tainted(fn, lambda e: any(is_int64_cast(n) for n in ast.walk(e)))
    block = tainted(fn, lambda e: bool(calls_to(e, "arange")))

    # loads and stores
    for call in calls_to(fn, "load") + calls_to(fn, "store"):
        text = ast.unparse(call)
        address = call.args[0]
        keywords = {kw.arg: kw.value for kw in call.keywords}
        if calls_to(address, "arange") or names_in(address) & block:
            if "mask" not in keywords or ast.unparse(keywords["mask"]) in ("None", "True"):
                problems.append(f"{where}: unmasked block access {text}")
            if not names_in(address) & int64 and not any(
                is_int64_cast(n) for n in ast.walk(address)
            ):
                problems.append(f"{where}: offsets not int64 in {text}")
            if call.func.attr == "store":
                value = call.args[1] if len(call.args) > 1 else keywords.get("value")
                base = address
                while isinstance(base, ast.BinOp):  # weight_ptr + offs: the pointer on the left
                    base = base.left
                base = ast.unparse(base)
                if not (
                    isinstance(value, ast.Call)
                    and isinstance(value.func, ast.Attribute)
                    and value.func.attr == "to"
                    and [ast.unparse(a) for a in value.args] == [f"{base}.dtype.element_ty"]
                ):
                    problems.append(f"{where}: store not cast to {base}.dtype.element_ty: {text}")
        elif not names_in(address) & int64 and ast.unparse(address) not in AMP_READS:
            problems.append(f"{where}: one-element access not indexed by the program id: {text}")

    if "amp_ptr" in {arg.arg for arg in params}:
        problems += amp_violations(fn)

    # arithmetic
    for node in ast.walk(fn):
        op = getattr(node, "op", None)
        if isinstance(node, ast.BinOp | ast.AugAssign) and isinstance(op, ast.Div | ast.Pow):
            problems.append(f"{where}: {type(op).__name__} in {ast.unparse(node)}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            if name in FORBIDDEN_CALLS:
                problems.append(
                    f"{where}: {ast.unparse(node.func)} (use {FORBIDDEN_CALLS[name]}) in "
                    f"{ast.unparse(node)}"
                )
            if name in ("maximum", "minimum"):
                nan = {kw.arg: ast.unparse(kw.value) for kw in node.keywords}.get("propagate_nan")
                if nan != "tl.PropagateNan.ALL":
                    problems.append(f"{where}: {name} without NaN propagation: {ast.unparse(node)}")
    return problems


def amp_violations(fn: ast.FunctionDef) -> list[str]:
    """GradScaler on the device: a set ``found_inf`` masks every block store, and the gradient
    is unscaled (``grad * inv_scale``) right after its load."""
    where = fn.name
    problems = []
    flagged = tainted(fn, lambda e: "found_inf" in names_in(e))
    for call in calls_to(fn, "store"):
        mask = {kw.arg: kw.value for kw in call.keywords}.get("mask")
        if mask is None or not names_in(mask) & flagged:
            problems.append(f"{where}: store not masked by found_inf: {ast.unparse(call)}")
    body = [stmt for stmt in fn.body if isinstance(stmt, ast.Assign)]
    loads = [
        i
        for i, stmt in enumerate(body)
        if any(ast.unparse(c.args[0]).startswith("grad_ptr") for c in calls_to(stmt, "load"))
    ]
    for i in loads:
        after = ast.unparse(body[i + 1]) if i + 1 < len(body) else ""
        if after != "grad = grad * inv_scale":
            problems.append(f"{where}: gradient not unscaled right after its load: {after}")
    if not loads:
        problems.append(f"{where}: takes amp_ptr but loads no gradient")
    return problems


def body_violations(fn: ast.FunctionDef) -> list[str]:
    """A shared body: only ``AMP`` is constexpr; it never forms offsets itself."""
    problems = []
    for arg in fn.args.args:
        constexpr = arg.annotation is not None and "constexpr" in ast.unparse(arg.annotation)
        if constexpr != (arg.arg == "AMP"):
            problems.append(f"{fn.name}: parameter {arg.arg} constexpr={constexpr}")
    if calls_to(fn, "program_id"):
        problems.append(f"{fn.name}: a shared body reads tl.program_id")
    return problems


def violations(source: str, scalars: set[str] = frozenset()) -> list[str]:
    tree = ast.parse(source)
    bodies = {fn.name: fn for fn in jit_functions(tree) if fn.name.endswith("_body")}
    found = [inlined(fn, bodies) for fn in kernels(tree)]
    problems = [] if found else ["no @triton.jit kernel"]
    for body in bodies.values():
        problems += body_violations(body)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            for d in node.decorator_list:
                if re.search(r"autotune|heuristics", ast.unparse(d)):
                    problems.append(f"{node.name}: decorator {ast.unparse(d)}")
    for fn in found:
        problems += kernel_violations(fn, scalars)
    return problems


def test_every_rule_has_a_kernel_file() -> None:
    assert [p.stem for p in FILES] == RULE_NAMES


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_kernel_structure(path: Path) -> None:
    source = path.read_text()
    assert violations(source, HOST_SCALARS[path.stem]) == []
    # the parse sees every kernel the module defines
    module = importlib.import_module(f"generated.triton.{path.stem}")
    defined = {name for name in vars(module) if name.endswith("_kernel")}
    assert defined == {fn.name for fn in kernels(ast.parse(source))}


MUTATIONS = {  # rule: (old, new) in generated/triton/<rule>.py, the violation expected
    "int32 program id": (
        "adam",
        "tl.program_id(0).to(tl.int64)",
        "tl.program_id(0)",
        "not cast to int64",
    ),
    "unmasked load": (
        "adam",
        "tl.load(grad_ptr + offs, mask=mask)",
        "tl.load(grad_ptr + offs)",
        "unmasked block access",
    ),
    "unmasked store": (
        "adam",
        "weight_new.to(weight_ptr.dtype.element_ty), mask=mask)",
        "weight_new.to(weight_ptr.dtype.element_ty))",
        "unmasked block access",
    ),
    "plain division": ("adam", "tl.div_rn(_v11, _v10)", "_v11 / _v10", "Div in"),
    "power": ("adam", "_v7 = G * G", "_v7 = G**2", "Pow in"),
    "approximate sqrt": ("adam", "tl.sqrt_rn(var_new)", "tl.sqrt(var_new)", "use tl.sqrt_rn"),
    "fdiv": ("adam", "tl.div_rn(_v11, _v10)", "tl.fdiv(_v11, _v10)", "use tl.div_rn"),
    "NaN-dropping max": (
        "adam",
        "tl.maximum(_h0, _v2, propagate_nan=tl.PropagateNan.ALL)",
        "tl.maximum(_h0, _v2)",
        "maximum without NaN propagation",
    ),
    "constexpr hyperparameter": (
        "adam",
        "    epsilon,\n    BLOCK_SIZE",
        "    epsilon: tl.constexpr,\n    BLOCK_SIZE",
        "epsilon constexpr=True",
    ),
    "integer hyperparameter": (
        "adam",
        "    epsilon,\n    BLOCK_SIZE",
        "    epsilon,\n    step,\n    BLOCK_SIZE",
        "step is specialized",
    ),
    "autotune": (
        "adam",
        "@triton.jit\ndef adam_kernel",
        "@triton.autotune(configs=[], key=[])\n@triton.jit\ndef adam_kernel",
        "decorator triton.autotune",
    ),
    "heuristics": (
        "adam",
        "@triton.jit\ndef adam_kernel",
        "@triton.heuristics({})\n@triton.jit\ndef adam_kernel",
        "decorator triton.heuristics",
    ),
    "uncast store": (
        "adam",
        "weight_new.to(weight_ptr.dtype.element_ty)",
        "weight_new",
        "store not cast to weight_ptr.dtype.element_ty",
    ),
    "store cast to another buffer's type": (
        "adam",
        "weight_new.to(weight_ptr.dtype.element_ty)",
        "weight_new.to(mean_ptr.dtype.element_ty)",
        "store not cast to weight_ptr.dtype.element_ty",
    ),
    "partial sum not indexed by the program": (
        "lamb",
        "tl.store(partial_ptr + slot * 2 + 0,",
        "tl.store(partial_ptr + 0,",
        "one-element access not indexed by the program id",
    ),
    "host-scalar row not indexed by the program's tensor": (
        "adam",
        "_h0 = tl.load(scalars_ptr + tensor * 10 + 0)",
        "_h0 = tl.load(scalars_ptr + 0)",
        "one-element access not indexed by the program id",
    ),
    "chunk table not indexed by the program": (
        "lamb",
        "start = tl.load(meta_ptr + 5 * n_tensors + n_chunks + pid)",
        "start = tl.load(meta_ptr + 5 * n_tensors + n_chunks)",
        "one-element access not indexed by the program id",
    ),
    "AMP flags read past their two elements": (
        "adam",
        "inv_scale = tl.load(amp_ptr + 1)",
        "inv_scale = tl.load(amp_ptr + 2)",
        "one-element access not indexed by the program id",
    ),
    "found_inf not folded into the mask": (
        "adam",
        "mask = tl.where(found_inf == 0.0, mask, False)",
        "mask = mask",
        "store not masked by found_inf",
    ),
    "gradient not unscaled": (
        "adam",
        "    if AMP:  # GradScaler's inverse scale, right after the load\n"
        "        grad = grad * inv_scale\n",
        "",
        "gradient not unscaled right after its load",
    ),
    "gradient multiplied by a constant, not inv_scale": (
        "lion",
        "grad = grad * inv_scale\n",
        "grad = grad * 1.0\n",
        "gradient not unscaled right after its load",
    ),
    "sgld's Philox key specialized on": (
        "sgld",
        '@triton.jit(do_not_specialize=["key"])',
        "@triton.jit",
        "key is specialized",
    ),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_the_structure_check_catches_a_broken_kernel(mutation: str) -> None:
    """Test the tester: each property above, broken once in a kernel's source, is reported."""
    rule, old, new, expected = MUTATIONS[mutation]
    source = (TRITON_DIR / f"{rule}.py").read_text()
    assert old in source, old
    found = violations(source.replace(old, new, 1), HOST_SCALARS[rule])
    assert any(expected in problem for problem in found), found


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_single_and_multi_tensor_kernels_share_one_body(path: Path) -> None:
    """One ``@triton.jit`` update body per rule (and one reduction body), called by both the
    single-tensor and the multi-tensor kernel: the two cannot drift apart."""
    tree = ast.parse(path.read_text())
    calls = {
        fn.name: {
            ast.unparse(c.func)
            for c in ast.walk(fn)
            if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)
        }
        for fn in kernels(tree)
    }
    rule = path.stem
    if RULES[rule].vector_values:  # row/column vectors: one kernel per sweep, step_multi loops
        assert f"{rule}_kernel" in calls and f"{rule}_multi_kernel" not in calls
        return
    body = f"{rule}_kernel_body"
    assert body in calls[f"{rule}_kernel"] and body in calls[f"{rule}_multi_kernel"]
    if f"{rule}_reduce_kernel" in calls:
        reduce_body = f"{rule}_reduce_kernel_body"
        assert reduce_body in calls[f"{rule}_reduce_kernel"]
        assert reduce_body in calls[f"{rule}_multi_reduce_kernel"]
