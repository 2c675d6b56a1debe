"""The peak extra memory of one step, for ``python -m tools.bench``: tracemalloc's peak of one
NumPy step (``peak_extra``), and the peak RSS growth of one step of every variant, measured alike
in fresh processes (``peak_rss``, each process running ``rss_child``).

torch and the code generator are imported where they are used (as in tools/bench.py): the
process that measures the NumPy step's memory imports neither.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import re
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from tools.bench import PEERS, WARMUP, hyperparams, make_peer

ROOT = Path(__file__).resolve().parent.parent
RSS_STEPS = 3  # measured steps per variant in peak_rss (after WARMUP untimed ones)

# Variants of one step, as the report and the JSON name them.
VARIANTS = {
    "empty": "empty step (method floor)",
    "numpy": "generated NumPy step",
    "torch_forloop": "torch.optim for-loop",
    "torch_foreach": "torch.optim foreach",
}


def peak_extra(module: ModuleType, n: int, hp: dict[str, float]) -> int:
    """Peak bytes allocated during one NumPy step on ``n`` float32 elements (tracemalloc)."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    state = module.init_state(w)
    module.step(w, g, state, 1, **hp)  # warm: worker threads started, first-step paths taken
    tracemalloc.start()
    try:
        module.step(w, g, state, 2, **hp)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


RSS_METHOD = (
    "fresh processes (NumPy; torch), after {warmup} warm-up steps per variant: freed heap handed "
    "back (glibc malloc_trim), peak RSS reset (5 > /proc/self/clear_refs), one step, peak = "
    "VmHWM - VmRSS before the step; max of {steps} steps; resolution one page ({page} B); "
    "spread = max - min of the {steps} (real variation included)"
)


def _status_bytes(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB$", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {field} in /proc/self/status")
    return int(match.group(1)) * 1024


def _step_peak(step: Callable[[], object], malloc_trim: Callable[[int], int]) -> int:
    """Peak RSS growth during one ``step()`` over the RSS just before it, in bytes.

    Freed heap memory that glibc keeps resident would be reused by the step without raising the
    RSS, so it is handed back first; then the kernel's high-water mark is reset to the current
    RSS. The mark counts pages; memory freed inside the step still counts (the kernel updates the
    mark before it unmaps pages; ``_rss_tools`` checks the reset).
    """
    malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_bytes("VmRSS")
    step()
    return max(_status_bytes("VmHWM") - before, 0)


def _rss_tools() -> Callable[[int], int]:
    """glibc's malloc_trim, after checking that clear_refs resets VmHWM in this process."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is None:
        raise RuntimeError("no malloc_trim (not glibc)")
    scratch = np.ones(4 << 20, np.uint8)  # 4 MiB touched, then unmapped: VmHWM above VmRSS
    del scratch
    Path("/proc/self/clear_refs").write_text("5")
    if _status_bytes("VmHWM") > _status_bytes("VmRSS") + (1 << 20):
        raise RuntimeError("writing 5 to /proc/self/clear_refs does not reset VmHWM")
    return trim


def _variant_step(
    variant: str, rule_name: str, w: np.ndarray, g: np.ndarray, torch_threads: int
) -> Callable[[], object]:
    """One step of ``variant`` on ``w`` and ``g``, as a call with no arguments."""
    hp = hyperparams(rule_name)
    if variant == "empty":
        return lambda: None
    if variant == "numpy":
        module = importlib.import_module(f"generated.numpy.{rule_name}")
        state = module.init_state(w)
        counter = iter(range(1, 10**9))
        return lambda: module.step(w, g, state, next(counter), **hp)
    import torch

    torch.set_num_threads(torch_threads)
    p = torch.nn.Parameter(torch.from_numpy(w))
    p.grad = torch.from_numpy(g)
    return make_peer(rule_name, [p], variant == "torch_foreach").step


def rss_child() -> None:
    """Entry of a measuring process (see ``peak_rss``): argv[1] is JSON, stdout is JSON."""
    args = json.loads(sys.argv[1])
    trim = _rss_tools()
    rng = np.random.default_rng(0)
    w = rng.standard_normal(args["n"]).astype(np.float32)
    g = rng.standard_normal(args["n"]).astype(np.float32)
    peaks: dict[str, list[int]] = {}
    for variant in args["variants"]:
        step = _variant_step(variant, args["rule"], w, g, args["torch_threads"])
        for _ in range(WARMUP):  # state allocated (torch.optim: at its first step), threads up
            step()
        peaks[variant] = [_step_peak(step, trim) for _ in range(RSS_STEPS)]
    print(json.dumps(peaks))


def peak_rss(rule_name: str, n: int, torch_threads: int) -> tuple[str, list[dict[str, Any]]]:
    """(method, rows): the peak extra memory of one step of every variant, measured alike.

    tracemalloc sees only allocations made through Python's allocator, not torch's: this counts
    resident pages instead, on ``n`` float32 elements. The empty and the NumPy step run in a
    fresh process that imports NumPy only, the two torch.optim variants in a second one, one
    variant after the other: with the freed heap handed back before each step, the order does
    not matter (checked: either order and one process per variant agree to a page).
    """
    if not Path("/proc/self/clear_refs").exists():
        return "unavailable: needs Linux /proc/self/clear_refs", []
    groups = [["empty", "numpy"]]
    if rule_name in PEERS:
        groups.append(["torch_forloop", "torch_foreach"])
    peaks: dict[str, list[int]] = {}
    for variants in groups:  # one after the other: a busy CPU changes how threads overlap
        spec = {"rule": rule_name, "n": n, "variants": variants, "torch_threads": torch_threads}
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                "import tools.bench_memory as b; b.rss_child()",
                json.dumps(spec),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if done.returncode:
            return f"unavailable: {(done.stderr.strip().splitlines() or ['no output'])[-1]}", []
        peaks.update(json.loads(done.stdout))
    method = RSS_METHOD.format(warmup=WARMUP, steps=RSS_STEPS, page=os.sysconf("SC_PAGE_SIZE"))
    buffer = n * np.dtype(np.float32).itemsize
    rows = [
        {
            "variant": variant,
            "label": VARIANTS[variant],
            "peak_extra_bytes": max(values),
            "peak_extra_bytes_all": values,
            "of_buffer": max(values) / buffer,
        }
        for variant, values in peaks.items()
    ]
    return method, rows
