"""Compile every generated Triton kernel ahead of time (no GPU needed) and report.

    python -m tools.aot                     # all rules (matrix rules too), sm_80 and sm_90,
                                            # fp32/bf16/fp16 weights
    python -m tools.aot adam --arch 90 --json
    python -m tools.aot path/to/module.py   # a kernel module outside generated/ (same checks)

Runs kernels through ``triton.compile`` with a ``GPUTarget``: PTX and cubin are produced by the
ptxas that ships with Triton. Must run without ``TRITON_INTERPRET`` (the interpreter replaces
Triton's own helper kernels, such as ``tl.sum``'s combine function, at import time).

Each row also checks the PTX against the kernel's own source (parsed with ``ast``; both read by
tools/ptx.py): a kernel that divides (``tl.div_rn``, or a plain ``/``) must contain
``div.rn.f32``, one that takes a square
root (``tl.sqrt_rn``, ``tl.sqrt``) ``sqrt.rn.f32`` (what Triton 3.8 emits for ``tl.div_rn`` and
``tl.sqrt_rn``; ``/`` gives ``div.full.f32`` and ``tl.sqrt`` ``sqrt.approx.ftz.f32``), and no
kernel may contain an approximate division or reciprocal. ``sqrt.approx`` is tolerated only in a
kernel that calls ``tl.randn``: Triton's own Box-Muller transform takes it, not the spec. Likewise
``rcp.approx.ftz.f32`` only in a kernel that calls libdevice (``libdevice.cbrt``, ``tanh``,
``pow``, ``log1p``): CUDA's libdevice computes these with it (then refines the result: cbrtf is
within 1 ulp, CUDA's programming guide), not the spec's divisions, which stay ``div.rn.f32``
(its functions also use ``fma.rn.ftz.f32``; ``libdevice_ops`` says which kernels call libdevice).

Each kernel is compiled as launched, in two variants: ``aligned`` (every buffer on a 16-byte
boundary, every size a multiple of 16: what the JIT specialises on, and the multi-tensor kernels'
``ALIGNED=True`` that ``ChunkTable`` sends such tensors to) and ``unaligned``. Per variant: global
loads and stores by width (``ld.v4.b32``, ``st.b16``...), bytes per element moved (per thread,
less the kernel's loads of one value per program from its own tables, times threads over the
block) against the spec's minimum (each array the lowered rule reads read once, each it writes
written once: tools/aot_traffic.py), registers and local memory (``cuobjdump -res-usage``),
approximate division and square root, and fused multiply-adds in any form with where they come
from (the spec's arithmetic never: ``LAUNCH_OPTIONS``; tl.randn, libdevice or tl.exp/tl.log). The
exit status is 1 when a variant loses 128-bit access, moves more than the minimum or divides
approximately.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from tools.aot_traffic import MASTERS, minimum_traffic, module_rule
from tools.cli import check_rules
from tools.ptx import (
    APPROX_DIV,
    APPROX_SQRT,
    FMA,
    LIBDEVICE_APPROX,
    OWN,
    TABLE,
    access_bytes,
    global_accesses,
    source_ops,
)

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# The oldest CUDA compute capability checked: Ampere (the classes' bf16 and fp16 kernels; the
# README's figures are sm_80 and sm_90)
OLDEST_ARCH = 80
# Integer arguments as launched: (a multiple of 16, as the aligned variant sees them; not).
INTS = {
    "n_elements": (1 << 20, 1_000_003),
    "n_tensors": (7, 7),
    "n_chunks": (999, 999),
    "key": (12345, 12345),
    "n_batch": (16, 3),
    "n_rows": (768, 7),
    "n_cols": (768, 33),
}
VARIANTS = ("aligned", "unaligned")


def launch_args(
    kernel: Any, weight_type: str, aligned: bool, inputs: tuple[str, ...] = ()
) -> tuple[list[Any], dict[str, Any]]:
    """Stand-ins for the arguments the runtime launches ``kernel`` with (CPU tensors: only their
    dtype and address count), and its constexprs but BLOCK_SIZE: weight, gradient and the rule's
    ``inputs`` in ``weight_type``, states fp32 (a ``MASTERS`` type: the weight fp32 and
    ``COPY_OUT`` on, the copy in the parameter's dtype; else ``COPY_OUT`` off, the copy typed
    as the weight); ``aligned``: every buffer on a 16-byte boundary
    and every size a multiple of 16 (what ``ChunkTable.vectorisable`` sends to ``ALIGNED=True``,
    and what the JIT specialises a single-tensor launch on); else buffers one element off and
    odd sizes. The kernel's own tables and partials are ours, always aligned. Host scalars:
    Python floats (fp32)."""
    import torch

    master = weight_type in MASTERS
    narrow = getattr(torch, DTYPES[MASTERS.get(weight_type, weight_type)])
    args: list[Any] = []
    constexprs: dict[str, Any] = {}
    for name, param in zip(kernel.arg_names, kernel.params, strict=True):
        buffer = name.removesuffix("_ptr").removesuffix("_like")
        if param.is_constexpr:
            if name == "ALIGNED":
                constexprs[name] = aligned
            elif name == "COPY_OUT":
                constexprs[name] = master
        elif name == "meta_ptr":
            args.append(torch.zeros(64, dtype=torch.int64))
        elif name in OWN:
            args.append(torch.zeros(64, dtype=torch.float32))
        elif buffer != name:
            dtype = narrow if buffer in ("weight", "grad", "copy", *inputs) else torch.float32
            if master and buffer == "weight":
                dtype = torch.float32
            base = torch.zeros(64, dtype=dtype)
            args.append(base if aligned else base[1:])
        elif name in INTS:
            args.append(INTS[name][0 if aligned else 1])
        else:
            args.append(0.5)
    return args, constexprs


def resources(cubin: bytes) -> dict[str, int] | None:
    """Registers, local memory (bytes per thread) and stack of the cubin's kernel, read by the
    cuobjdump that ships with Triton (None when it is not there)."""
    from optgen_runtime.triton_compat import resource_usage

    return resource_usage(cubin)


def compile_module(
    module: Any, source: str, archs: list[int], weight_types: list[str]
) -> list[dict[str, Any]]:
    from optgen_runtime.triton_compat import aot_compile_as_launched

    kernels = [n for n in vars(module) if n.endswith("_kernel")]
    rows = []
    for name in kernels:
        kernel = getattr(module, name)
        copies = "COPY_OUT" in kernel.arg_names
        for arch in archs:
            for weight_type in weight_types:
                if weight_type in MASTERS and not copies:
                    continue  # no master variant (MASTERS)
                for variant in VARIANTS:
                    args, constexprs = launch_args(
                        kernel, weight_type, variant == "aligned", tuple(module.INPUTS)
                    )
                    ops = source_ops(source, name, constexprs)
                    constexprs["BLOCK_SIZE"] = module.BLOCK_SIZE
                    compiled = aot_compile_as_launched(kernel, args, constexprs, arch)
                    rows.append(_row(module, name, ops, arch, weight_type, variant, compiled))
    return rows


def _row(
    module: Any,
    name: str,
    ops: dict[str, int],
    arch: int,
    weight_type: str,
    variant: str,
    compiled: Any,
) -> dict[str, Any]:
    ptx = compiled.asm["ptx"]
    approx = sorted(set(APPROX_DIV.findall(ptx) + APPROX_SQRT.findall(ptx)))
    approx_sqrt = [a for a in approx if APPROX_SQRT.match(a)]
    approx_div = [a for a in approx if APPROX_DIV.match(a)]
    if ops["libdevice"]:
        approx_div = [a for a in approx_div if a not in LIBDEVICE_APPROX]
    fma: dict[str, int] = {}
    for form in FMA.findall(ptx):
        fma[form] = fma.get(form, 0) + 1
    accesses = global_accesses(ptx)
    tables = [t for t in TABLE.findall(ptx) if not t.startswith("_$_str")]
    table_loads = sum(len(re.findall(rf"mov\.b64\s+%rd\d+, {re.escape(t)};", ptx)) for t in tables)
    if table_loads:  # attributed to the table, not the per-element traffic
        accesses["ld.b32"] -= table_loads
        accesses = {k: n for k, n in accesses.items() if n}
    threads = compiled.metadata.num_warps * 32
    minimum = minimum_traffic(module, name, weight_type)
    # Bytes per thread of the accesses narrower than 16 bytes beyond the kernel's one value per
    # program (its uniform loads of the tables): 0 when every per-element access is 128-bit.
    narrow = sum(access_bytes(k) * n for k, n in accesses.items() if access_bytes(k) < 16)
    per_thread = sum(access_bytes(k) * n for k, n in accesses.items()) - ops["uniform"]
    # a sweep that loops over rows or columns: static instruction counts are not the traffic
    element_bytes = None if minimum is None else per_thread * threads / module.BLOCK_SIZE
    return {
        "rule": module_rule(module),
        "kernel": name,
        "arch": arch,
        "weight": weight_type,
        "variant": variant,
        "target_ok": f".target sm_{arch}" in ptx,
        "ptx_bytes": len(ptx),
        "cubin_bytes": len(compiled.asm["cubin"]),
        "div_ops": ops["div"],
        "sqrt_ops": ops["sqrt"],
        "libdevice_ops": ops["libdevice"],
        "randn_ops": ops["randn"],
        "ptx_div_rn": ptx.count("div.rn.f32"),
        "ptx_sqrt_rn": ptx.count("sqrt.rn.f32"),
        "ptx_fma": sum(fma.values()),
        "fma": fma,
        "fma_source": _fma_source(fma, ops),
        "approx": approx,
        "div_rn_ok": (ops["div"] == 0 or "div.rn.f32" in ptx) and not approx_div,
        "sqrt_rn_ok": (ops["sqrt"] == 0 or "sqrt.rn.f32" in ptx)
        and (not approx_sqrt or ops["randn"] > 0),
        "accesses": accesses,
        "table_loads": table_loads,
        "threads": threads,
        "uniform_bytes": ops["uniform"],
        "bytes_per_element": element_bytes,
        "min_bytes_per_element": minimum,
        "narrow_bytes": narrow - ops["uniform"],
        "vectorised": narrow == ops["uniform"],
        "resources": resources(compiled.asm["cubin"]),
    }


def _fma_source(fma: dict[str, int], ops: dict[str, int]) -> str:
    """Where a kernel's fma comes from: none from the spec's arithmetic (LAUNCH_OPTIONS turns
    contraction off); Triton's tl.randn (Philox to normal: Box-Muller's log, sin, cos),
    libdevice's own functions, or Triton's lowering of tl.exp and tl.log."""
    if not fma:
        return ""
    sources = [
        s
        for s, n in (
            ("tl.randn", ops["randn"]),
            ("libdevice", ops["libdevice"]),
            ("tl.exp/tl.log", ops["math"]),
        )
        if n
    ]
    return " and ".join(sources) or "the kernel's own arithmetic"


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


def variants(rules: list[str]) -> list[str]:
    """The variant modules of ``rules`` (``generated.rules.<rule>``'s ``SPECIAL`` cases, then
    those ``WITHOUT`` absent states), in order."""
    metas = [importlib.import_module(f"generated.rules.{rule}") for rule in rules]
    return [v for meta in metas for v in [*meta.SPECIAL, *meta.WITHOUT.values()]]


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
        default=["fp32", "bf16", "fp16", *MASTERS],
        choices=[*DTYPES, *MASTERS],
        help="weight dtypes (fp32 bf16 fp16 bf16-master fp16-master)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("error: unset TRITON_INTERPRET to compile kernels", file=sys.stderr)
        return 2
    from generated.triton import MATRIX_RULES, RULES

    # the matrix rules' segment kernels too, and the variants the rules launch where a state is
    # absent (torch_sgd at momentum=0: codegen/variants.py)
    for rule in args.rules:
        if rule.endswith(".py") and not Path(rule).is_file():
            parser.error(f"{rule}: no such module file")
    names = [r for r in args.rules if not r.endswith(".py")]
    check_rules(parser, names, [*RULES, *variants(RULES), *MATRIX_RULES])
    rules = args.rules or [*RULES, *variants(RULES), *MATRIX_RULES]
    for arch in args.arch:
        if arch < OLDEST_ARCH:
            parser.error(f"--arch {arch}: the kernels are checked for sm_{OLDEST_ARCH} and newer")
    rows = [row for rule in rules for row in compile_rule(rule, args.arch, args.weight)]
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(line(r))
        print(summary(rows))
    return 0 if all(row_ok(r) for r in rows) else 1


def traffic_ok(r: dict[str, Any]) -> bool:
    """At the spec's minimal traffic (where it is known), and 128-bit throughout when aligned."""
    if r["min_bytes_per_element"] is None:
        return True
    at_minimum = r["bytes_per_element"] == r["min_bytes_per_element"]
    return at_minimum and (r["variant"] != "aligned" or r["vectorised"])


def row_ok(r: dict[str, Any]) -> bool:
    return r["target_ok"] and r["div_rn_ok"] and r["sqrt_rn_ok"] and traffic_ok(r)


def line(r: dict[str, Any]) -> str:
    """One variant: global accesses by width, bytes per element against the minimum, registers
    and local memory, approximate instructions and fma with their source."""
    accesses = " ".join(f"{k}x{n}" for k, n in r["accesses"].items())
    res = r["resources"]
    regs = (
        f"reg {res['reg']:3d} local {res['local']} stack {res['stack']:2d}"
        if res
        else "reg ? (no cuobjdump)"
    )
    if r["min_bytes_per_element"] is None:
        traffic = "B/elem n/a (sweep)"
    else:
        traffic = f"B/elem {r['bytes_per_element']:g}/{r['min_bytes_per_element']}"
    fma = f" fma {sum(r['fma'].values())} ({r['fma_source']})" if r["fma"] else ""
    approx = f" approx {','.join(r['approx'])}" if r["approx"] else ""
    table = f" +{r['table_loads']} table loads" if r["table_loads"] else ""
    flag = "" if row_ok(r) else "  FAIL"
    return (
        f"{r['kernel']:34s} sm_{r['arch']} {r['weight']:4s} {r['variant']:9s} {traffic:18s} "
        f"{regs}  {accesses}{table}{approx}{fma}{flag}"
    )


def summary(rows: list[dict[str, Any]]) -> str:
    measured = [r for r in rows if r["min_bytes_per_element"] is not None]
    aligned = [r for r in measured if r["variant"] == "aligned"]
    return (
        f"{len(rows)} variants compiled; {sum(map(traffic_ok, measured))}/{len(measured)} with a "
        f"known minimum move exactly it, {sum(r['vectorised'] for r in aligned)}/{len(aligned)} "
        f"aligned ones 128-bit throughout; "
        f"{sum(not (r['div_rn_ok'] and r['sqrt_rn_ok']) for r in rows)} with approximate "
        f"division/sqrt; fma in {sum(bool(r['fma']) for r in rows)} "
        f"({', '.join(sorted({r['fma_source'] for r in rows if r['fma']})) or 'none'}); "
        f"max registers {max((r['resources'] or {}).get('reg', 0) for r in rows)}, local memory "
        f"in {sum(bool((r['resources'] or {}).get('local')) for r in rows)}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
