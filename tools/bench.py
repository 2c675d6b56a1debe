"""Benchmark: a generated NumPy step against torch.optim on the CPU, in one run.

    python -m tools.bench                      # Adam, 10 M float32 parameters, 20 steps
    python -m tools.bench --rule adamw --n 1000000 --steps 10
    python -m tools.bench --quick              # 100 000 parameters, 3 steps (smoke test)
    python -m tools.bench --quick --n 1000000  # --n and --steps given with --quick win
    python -m tools.bench --json bench.json    # also write the figures
    python -m tools.bench --host               # host time of step(), launches stubbed
    python -m tools.bench --cpu                # the compiled numba target (tools/bench_cpu.py)

Prints ms per step (median of the timed steps, after warm-up) of the generated NumPy step and of
torch.optim (for-loop and foreach) on the same tensors with the same hyperparameters, the ratios
NumPy/torch, effective GB/s from the spec's minimal traffic (every buffer the lowered rule reads
read once, every buffer it writes written once), NumPy's copy bandwidth as the peer for GB/s, the
peak extra memory of one NumPy step (tracemalloc) against the scratch bound set by CHUNK, at N and
at N/10, the peak extra memory of one step of every variant measured alike (peak RSS growth in
fresh processes; see ``peak_rss``, tools/bench_memory.py), and the generation time of every spec
(with ``--quick``, of the benched rule only). Speed is reported against peers measured in the
same run, never asserted in tests.

torch and the code generator are imported where they are used: the process that measures the
NumPy step's memory imports neither.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from optgen_runtime.numpy_support import _MIN_CHUNKS_PER_THREAD, THREADS
from tools.cli import check_rules, check_writable, positive_int

WARMUP = 3

# Our hyperparameters of the rules benchmarked against torch.optim. Each peer is built from the
# spec's torch_equivalent (optgen_runtime.optim.torch_optimizer), but for PEER_DIFFERS.
PEERS: dict[str, dict[str, float]] = {
    "adam": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8},
    "adamw": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8, "wd": 0.01},
    "amsgrad": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8},
    "sgd": {"lr": 1e-2},
    "sgd_mom": {"lr": 1e-2, "momentum": 0.9},
    "nag": {"lr": 1e-2, "momentum": 0.9},
    "rmsprop": {"lr": 1e-3, "gamma1": 0.9, "epsilon": 1e-8},
    "adagrad": {"lr": 1e-2, "eps": 1e-7},
}
# Rules whose spec declares no torch mapping: (the rule whose mapping builds the peer, torch
# settings on top); see tests/test_torch_optim.py.
PEER_DIFFERS: dict[str, tuple[str, dict[str, Any]]] = {"nag": ("sgd_mom", {"nesterov": True})}


def hyperparams(rule_name: str) -> dict[str, float]:
    return PEERS.get(rule_name, {})


def make_peer(rule_name: str, params: list[Any], foreach: bool) -> Any:
    """The torch.optim optimizer that runs the rule with its PEERS hyperparameters."""
    from generated.torch import RULES
    from optgen_runtime.optim import torch_optimizer

    like, settings = PEER_DIFFERS.get(rule_name, (rule_name, {}))
    override = {**settings, "foreach": foreach}
    return torch_optimizer(RULES[like], params, override=override, **PEERS[rule_name])


def traffic(lowered: Any) -> tuple[int, int]:
    """Buffers read and written per element: the lowered rule's inputs and outputs."""
    reads = set(lowered.reads) | set(lowered.reduce_reads)
    return len(reads), len(lowered.outputs)


def scratch_per_element(lowered: Any, itemsize: int) -> tuple[int, int, int]:
    """(scratch rows, masks, bytes per chunk element) of the NumPy target for this rule.

    Rows as the generator sizes them (``for_chunks(..., CHUNK, rows, ...)``), plus the boolean
    masks a chunk may hold and one transient negated mask (a select writes in place with
    ``np.copyto(..., where=...)``, never a chunk-sized ``np.where`` result).
    """
    from codegen.ops import BOOLEAN as BOOL_KINDS
    from codegen.targets.numpy_storage import allocate

    phases = range(1, len(lowered.reduce_phases) + 1)
    rows = max([allocate(lowered).scratch, *(allocate(lowered, k).scratch for k in phases)])
    ops = [*lowered.ops, *lowered.reduce_ops]
    masks = sum(op.kind in BOOL_KINDS for op in ops)
    where = any(op.kind == "where" for op in ops)
    return rows, masks, rows * itemsize + masks + (1 if where else 0)


def scratch_bound(n: int, chunk: int, per_element: int) -> int:
    """Bytes of scratch one step allocates: as ``for_chunks`` sizes it, each worker thread has
    its own ``rows x chunk`` buffer (one ``rows x min(n, chunk)`` buffer without threads)."""
    workers = min(THREADS, -(-n // chunk) // _MIN_CHUNKS_PER_THREAD)
    return max(workers, 1) * (chunk if workers > 1 else min(n, chunk)) * per_element


def timed(
    fn: Callable[[], object], steps: int, setup: Callable[[], object] | None = None
) -> list[float]:
    """Milliseconds of each of ``steps`` calls, after WARMUP untimed calls; ``setup`` (untimed)
    before each call."""
    for _ in range(WARMUP):
        if setup is not None:
            setup()
        fn()
    times = []
    for _ in range(steps):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def bench(rule_name: str, n: int, steps: int) -> dict[str, Any]:
    import torch

    from codegen.load import load_rules
    from codegen.lower import lower
    from tools.bench_memory import peak_extra, peak_rss

    module = importlib.import_module(f"generated.numpy.{rule_name}")
    lowered = lower(load_rules(names=[rule_name])[0])
    hp = hyperparams(rule_name)
    rng = np.random.default_rng(0)
    w = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    itemsize = w.itemsize

    state = module.init_state(w)
    counter = iter(range(1, 10**9))
    numpy_times = timed(lambda: module.step(w, g, state, next(counter), **hp), steps)

    src = rng.standard_normal(n).astype(np.float32)  # touched pages: no zero-page shortcut
    dst = np.ones(n, np.float32)
    copy_times = timed(lambda: np.copyto(dst, src), steps)

    reads, writes = traffic(lowered)
    moved = (reads + writes) * n * itemsize
    rows, masks, per_element = scratch_per_element(lowered, itemsize)
    r: dict[str, Any] = {
        "rule": rule_name,
        "n": n,
        "dtype": "float32",
        "steps": steps,
        "warmup": WARMUP,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "numpy_threads": THREADS,
        "hyperparams": hp,
        "buffers_read": reads,
        "buffers_written": writes,
        "bytes_per_element": (reads + writes) * itemsize,
        "bytes_per_step": moved,
        "numpy_ms": statistics.median(numpy_times),
        "numpy_ms_all": numpy_times,
        "copy_ms": statistics.median(copy_times),
        "tensor_bytes": w.nbytes,
        "chunk": module.CHUNK,
        "scratch_rows": rows,
        "masks": masks,
        "scratch_bytes_per_element": per_element,
        "memory": [
            {
                "n": size,
                "peak_extra_bytes": peak_extra(module, size, hp),
                "scratch_bound_bytes": scratch_bound(size, module.CHUNK, per_element),
                "tensor_bytes": size * itemsize,
            }
            for size in (n, max(1, n // 10))
        ],
    }
    r["numpy_gbs"] = moved / r["numpy_ms"] / 1e6
    r["copy_gbs"] = 2 * w.nbytes / r["copy_ms"] / 1e6  # one read + one write per element
    if rule_name in PEERS:
        for foreach, key in ((False, "torch_forloop"), (True, "torch_foreach")):
            p = torch.nn.Parameter(torch.from_numpy(w.copy()))
            p.grad = torch.from_numpy(g.copy())
            opt = make_peer(rule_name, [p], foreach)
            times = timed(opt.step, steps)
            r[f"{key}_ms"] = statistics.median(times)
            r[f"{key}_ms_all"] = times
            r[f"{key}_gbs"] = moved / r[f"{key}_ms"] / 1e6
            r[f"numpy_over_{key}"] = r["numpy_ms"] / r[f"{key}_ms"]
            del opt, p
    r["rss_method"], r["rss_memory"] = peak_rss(rule_name, n, torch.get_num_threads())
    return r


def generation_times(names: list[str] | None = None) -> dict[str, float]:
    """Seconds per spec (all, or ``names``) as ``python -m tools.generate`` reports them: its
    figure for the spec's last target file counts from the start of the spec (lowering, every
    target, ruff format)."""
    from codegen.generate import TARGETS, generate_all

    times: dict[str, float] = {}
    for f in generate_all(names=names):
        if f.path.stem != "__init__" and f.path.parent.name in TARGETS:
            times[f.path.stem] = max(times.get(f.path.stem, 0.0), f.seconds)
    return times


def report(r: dict[str, Any], gen: dict[str, float]) -> str:
    mb = r["tensor_bytes"] / 1e6
    lines = [
        f"rule {r['rule']}, N = {r['n']:,} float32 ({mb:.1f} MB per buffer); median of "
        f"{r['steps']} steps after {r['warmup']} warm-up",
        f"threads: torch {r['torch_threads']} (set_num_threads(os.cpu_count() = "
        f"{r['cpu_count']})), NumPy target {r['numpy_threads']} (optgen_runtime THREADS)",
        f"traffic (from the lowering): {r['buffers_read']} buffers read + "
        f"{r['buffers_written']} written per element = {r['bytes_per_element']} B/element, "
        f"{r['bytes_per_step'] / 1e6:.0f} MB/step",
        f"hyperparameters: {r['hyperparams'] or 'defaults'}",
        "",
        f"  {'':30s} {'ms/step':>9s} {'GB/s':>7s} {'NumPy/this':>11s}",
        f"  {'NumPy copy bandwidth (peer)':30s} {r['copy_ms']:9.2f} {r['copy_gbs']:7.1f}",
        f"  {'generated NumPy step':30s} {r['numpy_ms']:9.2f} {r['numpy_gbs']:7.1f} {1.0:10.2f}x",
    ]
    for key, label in (("torch_forloop", "for-loop"), ("torch_foreach", "foreach")):
        if f"{key}_ms" in r:
            lines.append(
                f"  {'torch.optim ' + label:30s} {r[f'{key}_ms']:9.2f} {r[f'{key}_gbs']:7.1f} "
                f"{r[f'numpy_over_{key}']:10.2f}x"
            )
    if "torch_foreach_ms" not in r:
        lines.append(f"  (no torch.optim peer for {r['rule']}; peers: {', '.join(PEERS)})")
    masks = f" + {r['masks']} masks x 1 B" if r["masks"] else ""
    lines += [
        "",
        "peak extra memory of one NumPy step (tracemalloc) against its scratch bound,",
        f"threads x min(N, CHUNK) x ({r['scratch_rows']} rows x 4 B{masks}), CHUNK = {r['chunk']}:",
        f"  {'N':>12s} {'peak B':>11s} {'of buffer':>10s} {'bound B':>11s} {'peak-bound':>11s}",
    ]
    for m in r["memory"]:
        peak, bound = m["peak_extra_bytes"], m["scratch_bound_bytes"]
        lines.append(
            f"  {m['n']:12,} {peak:11,} {peak / m['tensor_bytes']:10.2%} {bound:11,} "
            f"{peak - bound:+11,}"
        )
    lines += [
        "  (peak-bound: Python bookkeeping, mostly the list of (start, stop) chunk bounds)",
        "",
        f"peak extra memory of one step, every variant alike (N = {r['n']:,}):",
    ]
    method = r["rss_method"]
    while method:  # wrapped at 96 columns
        cut = len(method) if len(method) <= 94 else method.rfind(" ", 0, 94)
        lines.append("  " + method[:cut])
        method = method[cut + 1 :]
    if r["rss_memory"]:
        lines.append(f"  {'':30s} {'peak B':>12s} {'of buffer':>10s} {'spread B':>9s}")
    for m in r["rss_memory"]:
        spread = max(m["peak_extra_bytes_all"]) - min(m["peak_extra_bytes_all"])
        lines.append(
            f"  {m['label']:30s} {m['peak_extra_bytes']:12,} {m['of_buffer']:10.2%} {spread:9,}"
        )
    specs = f"{len(gen)} spec{'s' if len(gen) != 1 else ''}"
    lines += [
        "",
        f"generation (python -m tools.generate, per spec: lowering, every target, ruff), {specs},",
        f"total {sum(gen.values()):.2f} s, ms per spec:",
    ]
    items = [f"{name:16s} {gen[name] * 1000:4.0f}" for name in sorted(gen)]
    for i in range(0, len(items), 4):
        lines.append("  " + "   ".join(items[i : i + 4]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--rule",
        help="the rule to time (adam; with --cpu: only these rules, comma-separated, at 1 M, "
        "4 M, 10 M)",
    )
    parser.add_argument("--n", type=positive_int, help="parameters (default 10 000 000)")
    parser.add_argument("--steps", type=positive_int, help="timed steps (default 20)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="defaults 100 000 parameters, 3 steps; times the generation of --rule only",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures")
    parser.add_argument(
        "--host",
        action="store_true",
        help="host time of step() with launches stubbed, 10/148/1000 tensors (tools.host_bench)",
    )
    parser.add_argument(
        "--cpu", action="store_true", help="the compiled numba target vs torch (tools/bench_cpu)"
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        help="with --cpu: torch and numba threads (default: every core)",
    )
    args = parser.parse_args(argv)
    if args.host and args.cpu:
        parser.error("--host and --cpu are two runs: give one")
    if args.threads is not None and not args.cpu:
        parser.error("--threads applies to --cpu only")
    if args.n is not None and (args.host or args.cpu):
        parser.error("--n applies to the single-rule run (neither --host nor --cpu)")
    check_writable(parser, args.json, "--json")
    if args.rule is not None:
        from generated.numpy import MATRIX_RULES, RULES

        names = args.rule.split(",") if args.cpu else [args.rule]
        check_rules(parser, names, [*RULES, *MATRIX_RULES])
    if args.host:
        from tools import host_bench

        rows = host_bench.run(args.steps or 20)
        print(host_bench.report(rows, args.steps or 20))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1) + "\n")
        return 0
    if args.cpu:
        from tools import bench_cpu, bench_cpu_report

        figures = bench_cpu.run(args.quick, args.steps, args.rule, args.threads)
        print(bench_cpu_report.report(figures))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1) + "\n")
        return 0
    n = args.n or (100_000 if args.quick else 10_000_000)
    steps = args.steps or (3 if args.quick else 20)
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    rule = args.rule or "adam"
    result = bench(rule, n, steps)
    gen = generation_times([rule] if args.quick else None)
    print(report(result, gen))
    if args.json:
        args.json.write_text(json.dumps({**result, "generation_s": gen}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
