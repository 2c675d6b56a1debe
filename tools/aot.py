"""Compile every generated Triton kernel ahead of time (no GPU needed) and report.

    python -m tools.aot                     # all rules (matrix rules too), sm_80 and sm_90,
                                            # fp32/bf16/fp16 weights
    python -m tools.aot adam --arch 90 --json
    python -m tools.aot path/to/module.py   # a kernel module outside generated/ (same checks)

Runs kernels through ``triton.compile`` with a ``GPUTarget``: PTX and cubin are produced by the
ptxas that ships with Triton. Must run without ``TRITON_INTERPRET`` (the interpreter replaces
Triton's own helper kernels, such as ``tl.sum``'s combine function, at import time).

Each row also checks the PTX against the kernel's own source (parsed with ``ast``): a kernel that
divides (``tl.div_rn``, or a plain ``/``) must contain ``div.rn.f32``, one that takes a square
root (``tl.sqrt_rn``, ``tl.sqrt``) ``sqrt.rn.f32`` (what Triton 3.8 emits for ``tl.div_rn`` and
``tl.sqrt_rn``; ``/`` gives ``div.full.f32`` and ``tl.sqrt`` ``sqrt.approx.ftz.f32``), and no
kernel may contain an approximate division or reciprocal. ``sqrt.approx`` is tolerated only in a
kernel that calls ``tl.randn``: Triton's own Box-Muller transform takes it, not the spec. Likewise
``rcp.approx.ftz.f32`` only in a kernel that calls libdevice (``libdevice.cbrt``, ``tanh``,
``pow``, ``log1p``): CUDA's libdevice computes these with it (then refines the result: cbrtf is
within 1 ulp, CUDA's programming guide), not the spec's divisions, which stay ``div.rn.f32``
(its functions also use ``fma.rn.ftz.f32``, which ``ptx_fma`` does not count; ``libdevice_ops``
says which kernels call libdevice).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from typing import Any


def signature(kernel: Any, weight_type: str) -> dict[str, str]:
    """Argument types: weight/grad pointers in ``weight_type``, other buffers fp32."""
    types = {}
    for name in kernel.arg_names:
        if name == "BLOCK_SIZE":
            continue
        if name in ("weight_ptr", "grad_ptr", "weight_like", "grad_like"):
            types[name] = f"*{weight_type}"
        elif name == "meta_ptr":
            types[name] = "*i64"  # the multi-tensor kernels' pointer, integer and chunk tables
        elif name.endswith(("_ptr", "_like")):
            # states, partial sums, the multi-tensor host-scalar table, GradScaler's amp pair
            types[name] = "*fp32"
        elif name in ("n_elements", "n_tensors", "n_chunks", "key", "n_batch", "n_rows", "n_cols"):
            types[name] = "i64"
        else:
            types[name] = "fp32"
    return types


DIVISIONS = ("div_rn", "fdiv", "div")
SQRTS = ("sqrt_rn", "sqrt", "rsqrt")
# Approximate instructions: never acceptable for the spec's arithmetic.
APPROX_DIV = re.compile(r"\b(?:div\.(?:full|approx)|rcp\.approx)\.[a-z0-9.]+")
APPROX_SQRT = re.compile(r"\b(?:sqrt|rsqrt)\.approx\.[a-z0-9.]+")
# What libdevice's own functions contain (measured: Triton 3.8, sm_80/sm_90): tolerated only in a
# kernel that calls libdevice.
LIBDEVICE_APPROX = frozenset({"rcp.approx.ftz.f32"})


def source_ops(source: str, kernel: str) -> dict[str, int]:
    """Division, square-root and ``tl.randn`` calls in one kernel's source, including the shared
    ``@triton.jit`` bodies it calls (compiled into it)."""
    functions = {
        node.name: node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)
    }
    fn = functions[kernel]
    called = {
        node.func.id
        for node in ast.walk(fn)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    counts = {"div": 0, "sqrt": 0, "randn": 0, "libdevice": 0}
    for node in [
        n for f in [fn, *(functions[c] for c in called & functions.keys())] for n in ast.walk(f)
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
    return counts


def compile_module(
    module: Any, source: str, archs: list[int], weight_types: list[str]
) -> list[dict[str, Any]]:
    from optgen_runtime.triton_compat import aot_compile

    kernels = [n for n in vars(module) if n.endswith("_kernel")]
    rows = []
    for name in kernels:
        kernel = getattr(module, name)
        ops = source_ops(source, name)
        for arch in archs:
            for weight_type in weight_types:
                compiled = aot_compile(
                    kernel, signature(kernel, weight_type), {"BLOCK_SIZE": module.BLOCK_SIZE}, arch
                )
                ptx = compiled.asm["ptx"]
                approx = sorted(set(APPROX_DIV.findall(ptx) + APPROX_SQRT.findall(ptx)))
                approx_sqrt = [a for a in approx if APPROX_SQRT.match(a)]
                approx_div = [a for a in approx if APPROX_DIV.match(a)]
                if ops["libdevice"]:
                    approx_div = [a for a in approx_div if a not in LIBDEVICE_APPROX]
                rows.append(
                    {
                        "rule": module.RULE,
                        "kernel": name,
                        "arch": arch,
                        "weight": weight_type,
                        "target_ok": f".target sm_{arch}" in ptx,
                        "ptx_bytes": len(ptx),
                        "cubin_bytes": len(compiled.asm["cubin"]),
                        "div_ops": ops["div"],
                        "sqrt_ops": ops["sqrt"],
                        "libdevice_ops": ops["libdevice"],
                        "ptx_div_rn": ptx.count("div.rn.f32"),
                        "ptx_sqrt_rn": ptx.count("sqrt.rn.f32"),
                        "ptx_fma": ptx.count("fma.rn.f32"),
                        "approx": approx,
                        "div_rn_ok": (ops["div"] == 0 or "div.rn.f32" in ptx) and not approx_div,
                        "sqrt_rn_ok": (ops["sqrt"] == 0 or "sqrt.rn.f32" in ptx)
                        and (not approx_sqrt or ops["randn"] > 0),
                    }
                )
    return rows


def compile_rule(rule: str, archs: list[int], weight_types: list[str]) -> list[dict[str, Any]]:
    """A generated rule (``generated.triton.<rule>``), or a module file (``rule`` ends in .py)."""
    if rule.endswith(".py"):
        path = Path(rule)
        # a module of generated.triton by name: it imports its rule's metadata relatively
        importlib.import_module("generated.triton")
        spec = importlib.util.spec_from_file_location(f"generated.triton._aot_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(f"generated.triton.{rule}")
        path = Path(module.__file__)
    return compile_module(module, path.read_text(), archs, weight_types)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.aot", description=__doc__.split("\n")[0])
    parser.add_argument(
        "rules", nargs="*", help="rule names or module files (default: every generated rule)"
    )
    parser.add_argument(
        "--arch", type=int, nargs="+", default=[80, 90], help="CUDA compute capabilities (80 90)"
    )
    parser.add_argument(
        "--weight",
        nargs="+",
        default=["fp32", "bf16", "fp16"],
        help="weight dtypes (fp32 bf16 fp16)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("error: unset TRITON_INTERPRET to compile kernels", file=sys.stderr)
        return 2
    from generated.triton import MATRIX_RULES, RULES

    rules = args.rules or [*RULES, *MATRIX_RULES]  # the matrix rules' segment kernels too
    rows = [row for rule in rules for row in compile_rule(rule, args.arch, args.weight)]
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            flags = "" if r["div_rn_ok"] and r["sqrt_rn_ok"] else f"  APPROXIMATE {r['approx']}"
            print(
                f"{r['kernel']:32s} sm_{r['arch']} {r['weight']:5s} "
                f"ptx {r['ptx_bytes']:7d} B  cubin {r['cubin_bytes']:6d} B{flags}"
            )
    ok = all(r["target_ok"] and r["div_rn_ok"] and r["sqrt_rn_ok"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
