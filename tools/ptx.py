"""What ``python -m tools.aot`` reads in a kernel: its source's divisions, square roots, draws
and libdevice calls (``source_ops``, parsed with ``ast``), and its PTX's global loads and stores
by width (``global_accesses``, ``access_bytes``), approximate division and square root, fused
multiply-adds and constant tables (the patterns below)."""

from __future__ import annotations

import ast
import re
from typing import Any

# Buffers our own runtime allocates (tables, partial sums) and GradScaler's one-element tensors:
# 16-byte aligned in every variant (torch's allocations), read one value per program.
OWN = ("meta_ptr", "scalars_ptr", "found_inf_ptr", "grad_scale_ptr", "partial_ptr")

DIVISIONS = ("div_rn", "fdiv", "div")
SQRTS = ("sqrt_rn", "sqrt", "rsqrt")
# Approximate instructions: never acceptable for the spec's arithmetic.
APPROX_DIV = re.compile(r"\b(?:div\.(?:full|approx)|rcp\.approx)\.[a-z0-9.]+")
APPROX_SQRT = re.compile(r"\b(?:sqrt|rsqrt)\.approx\.[a-z0-9.]+")
# Floating-point fused multiply-add in any form (fma.rn.f32, fma.rn.ftz.f32, mad.f32...; the
# integer mad.lo/mad.wide of address arithmetic are not).
FMA = re.compile(r"\b(?:fma|mad)(?:\.[a-z0-9]+)*\.(?:f16|f32|f64|bf16)(?:x2)?\b")
# A module-level constant table (libdevice's __cudart_i2opi_f: the sin/cos range reduction of
# tl.randn's Box-Muller transform, a cold path) and the loads of it (one per address taken).
TABLE = re.compile(r"^\.global \.align \d+ \.b8 (\w+)\[", re.M)
# Triton's own lowering of these uses fma (tl.exp, tl.log: ex2/lg2 with a polynomial).
TRANSCENDENTAL = ("exp", "log", "exp2", "log2", "sin", "cos")
# A global load or store: its qualifiers (.v4, .b32, .nc, ...) follow.
GLOBAL = re.compile(r"\b(ld|st)\.global((?:\.[a-z0-9]+)+)")
# What libdevice's own functions contain (measured: Triton 3.8, sm_80/sm_90): tolerated only in a
# kernel that calls libdevice.
LIBDEVICE_APPROX = frozenset({"rcp.approx.ftz.f32"})


def source_ops(
    source: str, kernel: str, constexprs: dict[str, Any] | None = None
) -> dict[str, int]:
    """Division, square-root, ``tl.randn`` and libdevice calls in one kernel's source, including
    the shared ``@triton.jit`` bodies it calls (compiled into it), and its loads and stores of
    one value per program (``uniform``: from the tables and partials the runtime owns, in bytes
    per thread; what is left of the PTX's global traffic is per element). ``constexprs``: the
    kernel's as compiled; an ``if`` on one of them counts only the branch it takes, as Triton
    compiles only that one (``if COPY_OUT:``'s load of the copy's pointer)."""
    functions = {
        node.name: node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)
    }
    taken = constexprs or {}
    fn = functions[kernel]
    called = {
        node.func.id
        for node in ast.walk(fn)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    counts = {"div": 0, "sqrt": 0, "randn": 0, "libdevice": 0, "uniform": 0, "math": 0}
    for node in [
        n
        for f in [fn, *(functions[c] for c in called & functions.keys())]
        for n in _walk_taken(f, taken)
    ]:
        if isinstance(node, ast.BinOp | ast.AugAssign) and isinstance(node.op, ast.Div):
            counts["div"] += 1
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            counts["div"] += name in DIVISIONS
            counts["sqrt"] += name in SQRTS
            counts["randn"] += name.startswith("randn")
            owner = node.func.value
            counts["libdevice"] += isinstance(owner, ast.Name) and owner.id == "libdevice"
            counts["math"] += (
                isinstance(owner, ast.Name) and owner.id == "tl" and (name in TRANSCENDENTAL)
            )
            if name in ("load", "store") and node.args:
                base = _base(node.args[0])
                if base in OWN:
                    counts["uniform"] += 8 if base == "meta_ptr" else 4
    return counts


def _walk_taken(node: ast.AST, constexprs: dict[str, Any]) -> list[ast.AST]:
    """``ast.walk`` of ``node`` but for the branches of an ``if`` on a constexpr in
    ``constexprs`` that its value does not take."""
    out = [node]
    if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id in constexprs:
        branch = node.body if constexprs[node.test.id] else node.orelse
        return out + [n for child in branch for n in _walk_taken(child, constexprs)]
    for child in ast.iter_child_nodes(node):
        out += _walk_taken(child, constexprs)
    return out


def _base(node: ast.AST) -> str:
    """The leftmost name of a pointer expression (``meta_ptr + 5 * n_tensors + pid``)."""
    while isinstance(node, ast.BinOp):
        node = node.left
    return node.id if isinstance(node, ast.Name) else ""


def global_accesses(ptx: str) -> dict[str, int]:
    """Global loads and stores by width, as ``ld.v4.b32`` / ``st.b16`` (cache qualifiers
    dropped): instructions in the PTX, each executed once per thread."""
    out: dict[str, int] = {}
    for op, qualifiers in GLOBAL.findall(ptx):
        parts = qualifiers.strip(".").split(".")
        vector = next((q for q in parts if re.fullmatch(r"v[248]", q)), "")
        kind = next((q for q in parts if re.fullmatch(r"[bfus](?:8|16|32|64)", q)), "?")
        key = ".".join(filter(None, [op, vector, kind]))
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def access_bytes(key: str) -> int:
    """Bytes per thread of one access counted by ``global_accesses``."""
    parts = key.split(".")
    lanes = int(parts[1][1:]) if len(parts) == 3 else 1
    return lanes * int(re.sub(r"\D", "", parts[-1])) // 8
