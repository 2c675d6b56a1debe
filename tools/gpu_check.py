"""Every GPU check in one command, for a lent CUDA machine: ``tools/gpu_check.sh`` runs this.

    tools/gpu_check.sh                        # checks, CUDA tests, benchmarks: gpu_check.md
    PYTHONPATH=. python3 -m tools.gpu_check --out /tmp/gpu.md --test-budget 120
    PYTHONPATH=. python3 -m tools.gpu_check --quick      # small sizes (a smoke run)

Uses the machine's own python3 (CUDA torch and Triton, NumPy, SymPy; no package index needed):

1. bit checks on CUDA tensors, no pytest needed: for Adam, AdamW, momentum SGD, LAMB and SGLD,
   ``step_multi`` over tensors of both alignment classes (16-byte aligned with sizes a multiple
   of 16: the vectorised variant; a view one element off and odd sizes: the scalar one) gives
   the bits of one ``step`` per tensor, and the bits of the same call with the vectorised
   variant turned off; fp32 Adam equals the generated NumPy reference to the last bit; the
   reductions' partials (LAMB's) combined on the device give the host's bits;
2. the Triton test files on CUDA (``TRITON_INTERPRET=0``: tests/conftest.py then puts every
   tensor on ``cuda``), and the drop-in classes against torch.optim's CUDA kernels
   (tests/test_dropin.py), when pytest is installed, within ``--test-budget`` seconds;
3. distributed training on CUDA tensors: ``tests/distributed_checks.py`` as two ranks on the one
   device (gloo; NCCL refuses two ranks on one GPU) for every class (``--dist-rules`` for
   some): DDP, ZeRO, FSDP2 and torch.distributed.checkpoint round trips against one-process
   training, the classes on their Triton kernels, within ``--dist-budget`` seconds;
4. benchmarks: the generated torch classes of those five rules on GPT-2 small's 148 parameter
   tensors and on one tensor of ``--big`` elements (1 G: 4 GB per fp32 array; skipped, saying
   so, when the device lacks the memory), against torch.optim's fused and foreach optimizers
   where torch has the rule, and a device copy of the same bytes: ms per step (median, CUDA
   events), ratios, and effective bandwidth from the nominal traffic (weight read and written,
   gradient read, every state read and written);
5. Muon on GPT-2 small's 50 matrices (``muon_case``): the drop-in with its Newton-Schulz
   iteration in float32 and in bfloat16 (``ns_dtype="bfloat16"``: the products in bfloat16, as
   torch's) against ``torch.optim.Muon``, ms per step and the ratios.

Results go to one markdown file (``--out``; tables, then the raw figures as JSON), rewritten
after every part, so a run stopped by its caller's time limit leaves what it measured. A rule or
case that raises is reported as failed, naming the error, and the others still run; cases past
``--budget`` seconds (450: the whole run within about 8 minutes) are listed as skipped. Without
CUDA it prints why and exits with status 3 (nothing run); a failed check exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tools.cli import check_writable, positive_int

NO_CUDA = 3
ROOT = Path(__file__).resolve().parent.parent
RULES = ("adam", "adamw", "sgd_mom", "lamb", "sgld")
# Our hyperparameters, and torch.optim's optimizer and settings for the same step (None: torch
# has no such optimizer; the device copy is the peer).
OURS: dict[str, dict[str, float]] = {
    "adam": {"lr": 1e-3},
    "adamw": {"lr": 1e-3, "wd": 0.01},
    "sgd_mom": {"lr": 1e-2, "momentum": 0.9},
    "lamb": {"lr": 1e-3},
    "sgld": {"lr": 1e-4},
}
TORCH: dict[str, tuple[str, dict[str, float]] | None] = {
    "adam": ("Adam", {"lr": 1e-3}),
    "adamw": ("AdamW", {"lr": 1e-3, "weight_decay": 0.01}),
    "sgd_mom": ("SGD", {"lr": 1e-2, "momentum": 0.9}),
    "lamb": None,
    "sgld": None,
}
# the small files first: a run stopped at its budget has checked them
TEST_FILES = (
    "tests/test_fixed_sum.py",
    "tests/test_grad_scaler_device.py",
    "tests/test_host_cache.py",
    "tests/test_copy_out.py",  # a master's parameter written by the kernel: to nearest on CUDA
    "tests/test_device_combine.py",
    "tests/test_columns.py",  # every tensor's trust ratios at once, on the device's sums
    "tests/test_layouts.py",  # channels_last, transposed and sliced weights on the kernels
    "tests/test_dropin.py::test_matches_torch",  # the drop-ins against torch's CUDA kernels
    "tests/test_sparse_adam.py::test_matches_torch",  # SparseAdam's rows on the kernels
    "tests/test_adafactor.py",  # the matrix rules' kernels and products on CUDA
    "tests/test_matrix_rules.py",
    "tests/test_triton.py",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 -m tools.gpu_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, help="markdown file (default: $OUT/gpu_check.md)")
    parser.add_argument(
        "--big", type=positive_int, default=1 << 30, help="elements of the one big tensor"
    )
    parser.add_argument("--steps", type=positive_int, default=20, help="timed steps per case")
    parser.add_argument(
        "--test-budget", type=positive_int, default=240, help="seconds for the pytest run"
    )
    parser.add_argument(
        "--budget",
        type=positive_int,
        default=450,
        help="seconds for everything; cases past it skipped",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 steps, no pytest")
    parser.add_argument("--skip-tests", action="store_true", help="no pytest run")
    parser.add_argument("--skip-bench", action="store_true", help="no benchmarks")
    parser.add_argument(
        "--skip-distributed", action="store_true", help="no distributed run (two ranks)"
    )
    parser.add_argument(
        "--dist-budget", type=positive_int, default=240, help="seconds for the distributed run"
    )
    parser.add_argument(
        "--dist-rules", nargs="+", default=None, help="the distributed run's rules (all)"
    )
    parser.add_argument(
        "--rules", nargs="+", default=list(RULES), choices=RULES, help="rules to benchmark"
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = Path(os.environ.get("OUT") or ".") / "gpu_check.md"
    check_writable(parser, args.out, "--out")  # before minutes of checks, not after
    if args.quick:
        args.big, args.steps, args.skip_tests = min(args.big, 1 << 22), 3, True
        args.skip_distributed = True
    return args


def cuda_problem() -> str | None:
    """Why the checks cannot run here (None: a CUDA device is usable)."""
    try:
        import torch
    except ImportError as error:
        return f"torch is not importable ({error})"
    if not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU build"
        return f"torch {torch.__version__} sees no CUDA device ({built})"
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return "TRITON_INTERPRET is set: unset it to run the kernels on the device"
    return None


def gpt2_small_shapes() -> list[tuple[int, ...]]:
    from tools.host_bench import gpt2_small_shapes as shapes

    return shapes()


def sixteenth(shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """``--quick``'s sizes: each side a sixteenth (at least 1)."""
    return [tuple(max(1, d // 16) for d in s) for s in shapes]


def conv_stack_shapes() -> list[tuple[int, ...]]:
    from tools.bench_cpu import conv_stack_shapes as shapes

    return shapes()


def nominal_bytes(states: int, weight_bytes: int = 4) -> int:
    """Bytes per element of one step as torch's fused kernels move them: the weight read and
    written, the gradient read, each fp32 state read and written."""
    return 3 * weight_bytes + 8 * states


def bandwidth(bytes_per_element: int, elements: int, ms: float) -> float:
    """GB/s (1e9 bytes) of ``bytes_per_element * elements`` moved in ``ms``."""
    return bytes_per_element * elements / (ms * 1e-3) / 1e9


def fits(needed: int, free: int, margin: float = 1.2) -> bool:
    """Whether ``needed`` bytes (with a margin for the allocator) fit in ``free``."""
    return needed * margin <= free


# ------------------------------------------------------------------------------ bit checks
def bit_checks(
    rules: list[str], device: str = "cuda", sizes: tuple[int, ...] = (16, 1 << 16, 1000003, 7)
) -> list[dict[str, Any]]:
    """step_multi against one step per tensor and against the scalar variant, with new gradients
    from step 2 on, on CUDA (or on ``device`` under the interpreter: tests/test_gpu_check.py
    runs it so, with small sizes); a rule whose check raises is reported as failed, naming the
    error, and the other rules still run."""
    out = []
    for rule in rules:
        try:
            out.append(bit_check(rule, device, sizes))
        except Exception as error:  # reported as failed; the other rules run
            out.append({"rule": rule, "ok": False, "error": f"{type(error).__name__}: {error}"})
    return out


def bit_check(rule: str, device: str, sizes: tuple[int, ...]) -> dict[str, Any]:
    """``bit_checks`` of one rule."""
    import copy
    import importlib

    import numpy as np
    import torch

    from optgen_runtime import triton_chunks
    from optgen_runtime.philox import tensor_seed
    from optgen_runtime.triton_cache import TABLES
    from optgen_runtime.triton_chunks import vectorisable

    trm = importlib.import_module(f"generated.triton.{rule}")
    torch.manual_seed(0)
    base = torch.randn(4096 + 16, device=device)
    weights = [torch.randn(n, device=device) for n in sizes] + [base[1:4097]]
    weights.append(torch.randn(1 << 12, device=device, dtype=torch.bfloat16))
    grads = [torch.randn_like(w) * 1e-2 for w in weights]
    # new gradients from step 2 on: the cached table's pointer rows rewritten on the device
    moved = [torch.randn_like(g) * 1e-2 for g in grads]
    aligned = [vectorisable([w, g]) for w, g in zip(weights, grads, strict=True)]
    seed = trm.HYPERPARAMS.get("seed")
    runs = {}
    for mode in ("routed", "scalar", "single"):
        ws = [w.clone() for w in weights]
        ws[len(sizes)] = base.clone()[1:4097]  # one element off a 16-byte boundary
        states = [trm.init_state(w) for w in ws]
        TABLES.clear()
        saved = triton_chunks.vectorisable
        if mode == "scalar":
            triton_chunks.vectorisable = lambda buffers: False
        try:
            for t in (1, 2, 3):
                gs = grads if t == 1 else moved
                if mode == "single":
                    for j, (w, g, s) in enumerate(zip(ws, gs, states, strict=True)):
                        own = {"seed": tensor_seed(seed, j)} if trm.DRAWS else {}
                        trm.step(w, g, s, t, **OURS[rule], **own)
                else:
                    trm.step_multi(ws, gs, states, t, **OURS[rule])
        finally:
            triton_chunks.vectorisable = saved
        if device == "cuda":
            torch.cuda.synchronize()
        runs[mode] = (ws, [copy.deepcopy(s) for s in states])
    row: dict[str, Any] = {"rule": rule, "aligned": aligned}
    for mode in ("scalar", "single"):
        row[f"same_bits_as_{mode}"] = same_bits(trm, runs["routed"], runs[mode])
    row["same_bits_under_grad_scaler"] = grad_scaler_check(trm, weights, grads, device)
    if trm.REDUCTIONS:
        row["same_bits_device_combine"] = combine_check(device)
    if rule == "adam":
        npm = importlib.import_module(f"generated.numpy.{rule}")
        w0 = torch.randn(1 << 16, device=device)
        g0 = torch.randn_like(w0)
        s0 = trm.init_state(w0)
        w_np, g_np = w0.cpu().numpy().copy(), g0.cpu().numpy()
        s_np = {k: v.cpu().numpy().copy() for k, v in s0.items()}
        for t in (1, 2, 3):
            trm.step(w0, g0, s0, t, **OURS[rule])
            npm.step(w_np, g_np, s_np, t, **OURS[rule])
        row["adam_fp32_equals_numpy"] = bool(np.array_equal(w0.cpu().numpy(), w_np))
    row["ok"] = all(v for k, v in row.items() if k.startswith(("same_bits", "adam_fp32")))
    return row


def combine_check(device: str) -> bool:
    """A reduction's partials combined on the device (``combine_on_device``: one, two and three
    levels of 1,024-row trees on CUDA) give the host's bits (``combine_partials``), with NaN
    and inf among them; under the interpreter, small segments only."""
    import numpy as np
    import torch

    from optgen_runtime.triton_reduce import combine_on_device, combine_partials, device_plan

    counts = np.array([1, 1025, 3] + ([(1 << 20) + 1] if device == "cuda" else []))
    starts = np.cumsum(counts) - counts + 1
    rng = np.random.default_rng(0)
    rows = int(starts[-1] + counts[-1])
    p = (rng.standard_normal((rows, 2)) * np.exp(rng.uniform(-20, 20, (rows, 2)))).astype("f4")
    p[starts[1] + 3, 1] = np.nan
    kinds, names = {"s": "sum", "m": "max"}, ["s", "m"]
    plan = device_plan(starts, counts, torch.device(device))
    found = combine_on_device(torch.from_numpy(p.ravel()).to(device), plan, kinds, names)
    for j, (start, count) in enumerate(zip(starts, counts, strict=True)):
        host = combine_partials(p[start : start + count], kinds, names)
        want = np.array([host[n] for n in names], dtype=np.float64)
        if want.tobytes() != found[j].tobytes():
            return False
    return True


def grad_scaler_check(trm: Any, weights: list[Any], grads: list[Any], device: str) -> bool:
    """GradScaler on the device: ``step_multi`` with ``amp=(found_inf, scale)`` on gradients
    scaled by 3000 gives the bits of torch's own unscale kernel
    (``_amp_foreach_non_finite_check_and_unscale_``, inverse scale as GradScaler.unscale_
    makes it) followed by a step without the scaler; a step with found_inf set writes nothing."""
    import torch

    if trm.REDUCTIONS:
        return True  # rules with sums read the scaler on the host (the classes' amp.py)
    # float32 gradients: torch's unscale of a bf16 gradient rounds it to bf16 again, the
    # kernel's does not (it unscales in registers)
    pairs = [(w, g) for w, g in zip(weights, grads, strict=True) if g.dtype == torch.float32]
    weights, grads = [w for w, _ in pairs], [g for _, g in pairs]
    scale = torch.full((1,), 3000.0, device=device)
    found = torch.zeros(1, device=device)
    runs = []
    for path in ("kernel", "torch"):
        ws = [w.clone() for w in weights]
        states = [trm.init_state(w) for w in ws]
        for t in (1, 2):
            gs = [g * 3000.0 for g in grads]
            if path == "kernel":
                trm.step_multi(ws, gs, states, t, amp=(found, scale), **OURS[trm.RULE])
            else:
                inverse = scale.double().reciprocal().float()
                torch._amp_foreach_non_finite_check_and_unscale_(gs, found, inverse)
                trm.step_multi(ws, gs, states, t, **OURS[trm.RULE])
        runs.append((ws, states))
    ws, states = runs[0]
    before = [w.clone() for w in ws], [{k: s[k].clone() for k in trm.STATES} for s in states]
    same = same_bits(trm, runs[0], runs[1])
    flagged = (torch.ones(1, device=device), scale)
    trm.step_multi(ws, grads, states, 3, amp=flagged, **OURS[trm.RULE])
    return same and same_bits(trm, runs[0], before) and not float(found)


def same_bits(trm: Any, a: tuple[list[Any], list[Any]], b: tuple[list[Any], list[Any]]) -> bool:
    """Two runs' (weights, states) equal to the bit."""
    import torch

    return all(
        torch.equal(wa, wb) and all(torch.equal(sa[k], sb[k]) for k in trm.STATES)
        for wa, wb, sa, sb in zip(a[0], b[0], a[1], b[1], strict=True)
    )


# ------------------------------------------------------------------------------- pytest run
def run_tests(budget: int) -> dict[str, Any]:
    """The Triton test files on CUDA tensors, if pytest is installed, within ``budget`` s (in 8
    processes with pytest-xdist: each compiles its own kernels, which is most of the time)."""
    import importlib.util

    if importlib.util.find_spec("pytest") is None:
        return {"ran": False, "why": "pytest is not installed on this machine"}
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TEST_FILES]
    if importlib.util.find_spec("xdist") is not None:  # compiling dominates: 8 workers
        command += ["-n", str(min(8, os.cpu_count() or 1))]
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=budget
        )
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout or b""
        out = out.decode() if isinstance(out, bytes) else out
        return {"ran": True, "timed_out": True, "budget_s": budget, **progress(out)}
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return {
        "ran": True,
        "timed_out": False,
        "returncode": done.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "summary": lines[-1] if lines else done.stderr[-500:],
        "failures": [line for line in lines if line.startswith("FAILED")][:20],
    }


def progress(out: str) -> dict[str, Any]:
    """What a pytest ``-q`` run stopped at its budget had done: its progress characters
    counted (``.`` passed, ``F`` failed, ``E`` error, ``s`` skipped, ``x``/``X`` xfail/xpass),
    and the tail of its output."""
    lines = [line for line in out.splitlines() if line.strip()]
    marks = "".join(
        line.split(" [")[0] for line in lines if set(line.split(" [")[0]) <= set(".FEsxX")
    )
    done = {"passed": ".", "failed": "F", "errors": "E", "skipped": "s"}
    return {
        **{key: marks.count(mark) for key, mark in done.items()},
        "tail": out[-2000:],
    }


# ---------------------------------------------------------------------------- distributed
def distributed_check(
    rules: Sequence[str] | None = None, device: str = "cuda", budget: int = 240
) -> dict[str, Any]:
    """``tests/distributed_checks.py`` as ranks 0 and 1 of a gloo group on 127.0.0.1 (the
    environment torchrun sets), its tensors on ``device`` (``OPTGEN_DIST_DEVICE``; both ranks on
    device 0), for ``rules`` (``OPTGEN_DIST_RULES``; None: every class); both killed after
    ``budget`` s, the checks done by then reported (rank 0 rewrites the report after each).
    Returns how many checks ran, those that failed (with the end of what they raised), and the
    ranks' exit codes and, without a report, the end of their output. On an H200 (2026-12-04)
    all 44 classes took about 100 s, in four runs."""
    import tempfile

    from tools.ranks import run_ranks

    tmp = Path(tempfile.mkdtemp(prefix="optgen-dist-"))
    env = {
        "OPTGEN_DIST_DEVICE": device,
        "OPTGEN_DIST_RULES": ",".join(rules or ()),
        "PYTHONPATH": str(ROOT),
    }
    if device == "cuda":
        env["TRITON_INTERPRET"] = "0"
    start = time.perf_counter()
    script = str(ROOT / "tests" / "distributed_checks.py")
    ranks = run_ranks([script, str(tmp / "report.json")], tmp, budget, env)
    out: dict[str, Any] = {
        "ran": True,
        "rules": list(rules) if rules else "all",
        "timed_out": ranks.timed_out,
        "seconds": round(time.perf_counter() - start, 1),
        "returncodes": ranks.returncodes,
    }
    found = tmp / "report.json"
    if not found.exists():
        out["tail"] = [log[-1500:] for log in ranks.logs]
        return out
    report = json.loads(found.read_text())
    out["checks"] = len(report)
    out["failed"] = {
        key: str(value)[-400:]
        for key, value in report.items()
        if not (value is None or isinstance(value, float))
    }
    out["largest_relative_error"] = max(
        [v for v in report.values() if isinstance(v, float)], default=0.0
    )
    return out


# ------------------------------------------------------------------------------- benchmarks
def timed(step: Callable[[], object], steps: int, device: str = "cuda") -> float:
    """Median ms per call over ``steps`` calls after 3 warm-up calls (CUDA events; on another
    device, wall time: tests/test_gpu_check.py runs the benchmarks so, with small sizes)."""
    import torch

    for _ in range(3):
        step()
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        if not cuda:
            start_s = time.perf_counter()
            step()
            times.append((time.perf_counter() - start_s) * 1e3)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def kernel_ms(step: Callable[[], object], steps: int, device: str = "cuda") -> float | None:
    """The device time of the kernels (and copies) one call launches, ms per call, from
    torch.profiler over ``steps`` calls: the step's cost on the GPU alone, without the host time
    that CUDA events also count when the host cannot keep ahead of the device (a list of many
    small tensors on a slow host). None off CUDA."""
    import torch

    if device != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import FunctionEvent
    from torch.profiler import ProfilerActivity, profile

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    # torch >= 2.4 names it device_time_total; older releases cuda_time_total
    field = (
        "device_time_total" if hasattr(FunctionEvent, "device_time_total") else "cuda_time_total"
    )
    return sum(getattr(e, field) for e in events) / steps / 1e3


def copy_ms(elements: int, steps: int, device: str = "cuda") -> float:
    """A device copy of ``elements`` fp32 values (read once, written once): the peer bandwidth."""
    import torch

    src = torch.empty(elements, device=device)
    dst = torch.empty_like(src)
    return timed(lambda: dst.copy_(src), steps, device)  # freed on return


def emptied(device: str) -> int | None:
    """Empty torch's CUDA cache (after a case frees its tensors); the free memory then (None
    off CUDA: nothing to empty, not checked)."""
    import torch

    if device != "cuda":
        return None
    torch.cuda.empty_cache()
    return torch.cuda.mem_get_info()[0]


def bench_case(
    rule: str,
    shapes: list[tuple[int, ...]],
    steps: int,
    device: str = "cuda",
    channels_last: bool = False,
    *,
    master: bool = False,
) -> dict[str, Any]:
    """One rule on one parameter list: ours, torch fused and foreach (where torch has the rule),
    and a device copy of a tensor as big as the whole list; ``channels_last``: the 4-D
    parameters and their gradients in that memory format (both sides); ``master``: bfloat16
    parameters and gradients, ours with ``multi_precision=True`` (float32 masters and states,
    the parameter written from its master by the update kernel: the fp32 step's bytes, 12 + 8
    per state), torch's on the bfloat16 parameters as they are (its states bfloat16: half our
    bytes, no master)."""
    import torch

    from generated.torch import RULES as CLASSES

    elements = sum(int(torch.Size(s).numel()) for s in shapes)
    cls = CLASSES[rule]
    states = len(cls.META.STATES)
    per_element = nominal_bytes(states)
    free = emptied(device)
    needed = 4 * elements * (2 + states)  # weight, gradient, states (ours, then torch's)
    row: dict[str, Any] = {"rule": rule, "tensors": len(shapes), "elements": elements}
    if free is not None and not fits(needed, free):
        row["skipped"] = f"needs ~{needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
        return row
    torch.manual_seed(0)
    dtype = torch.bfloat16 if master else torch.float32
    params = [torch.nn.Parameter(torch.randn(s, device=device).to(dtype)) for s in shapes]
    for p in params:
        if channels_last and p.dim() == 4:
            p.data = p.data.to(memory_format=torch.channels_last)
        p.grad = torch.randn_like(p) * 1e-3  # in its parameter's strides
    ours = cls(params, **OURS[rule], **({"multi_precision": True} if master else {}))
    row["ours_ms"] = timed(ours.step, steps, device)
    row["ours_kernel_ms"] = kernel_ms(ours.step, steps, device)
    del ours
    emptied(device)
    peer = TORCH[rule]
    for kind in ("fused", "foreach"):
        if peer is None:
            continue
        name, hp = peer
        opt = getattr(torch.optim, name)(params, **hp, **{kind: True})
        row[f"torch_{kind}_ms"] = timed(opt.step, steps, device)
        row[f"torch_{kind}_kernel_ms"] = kernel_ms(opt.step, steps, device)
        del opt
        emptied(device)
    del params
    emptied(device)
    row["copy_ms"] = copy_ms(elements, steps, device)
    row["nominal_bytes_per_element"] = per_element
    # torch's optimizers on bf16 parameters keep bf16 states: 2 bytes wherever ours moves 4 (and
    # no master), so their GB/s are from their own traffic
    peer_bytes = 3 * 2 + 4 * states if master else per_element
    if master:
        row["torch_nominal_bytes_per_element"] = peer_bytes
    row["ours_GBps"] = bandwidth(per_element, elements, row["ours_ms"])
    row["copy_GBps"] = bandwidth(8, elements, row["copy_ms"])
    for kind in ("fused", "foreach"):
        if f"torch_{kind}_ms" in row:
            row[f"ours_over_{kind}"] = row["ours_ms"] / row[f"torch_{kind}_ms"]
            row[f"torch_{kind}_GBps"] = bandwidth(peer_bytes, elements, row[f"torch_{kind}_ms"])
    row["ours_over_copy_time_per_byte"] = (row["ours_ms"] / per_element) / (row["copy_ms"] / 8)
    if row["ours_kernel_ms"] is not None:
        row["ours_kernel_GBps"] = bandwidth(per_element, elements, row["ours_kernel_ms"])
        if row.get("torch_fused_kernel_ms"):
            row["kernels_ours_over_fused"] = row["ours_kernel_ms"] / row["torch_fused_kernel_ms"]
    return {k: v for k, v in row.items() if v is not None}  # no kernel times off CUDA


MUON_LABEL = "GPT-2 small's matrices"


def muon_case(shapes: list[tuple[int, ...]], steps: int, device: str = "cuda") -> dict[str, Any]:
    """The drop-in Muon on the 2-D ``shapes``, its Newton-Schulz iteration in float32 and in
    bfloat16, and ``torch.optim.Muon`` (bfloat16) where this torch has it: ms per step (the
    same gradients each step), and ours over torch's."""
    import torch

    from generated.torch import optim

    matrices = [s for s in shapes if len(s) == 2]
    row: dict[str, Any] = {"list": MUON_LABEL, "tensors": len(matrices)}
    row["elements"] = sum(int(torch.Size(s).numel()) for s in matrices)
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, device=device)) for s in matrices]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    variants: dict[str, Callable[[], Any]] = {
        "float32_ms": lambda: optim.Muon(params, lr=1e-3),
        "bfloat16_ms": lambda: optim.Muon(params, lr=1e-3, ns_dtype="bfloat16"),
    }
    if hasattr(torch.optim, "Muon"):
        variants["torch_ms"] = lambda: torch.optim.Muon(params, lr=1e-3)
    else:
        row["torch"] = f"torch {torch.__version__} has no torch.optim.Muon"
    for key, make in variants.items():
        row[key] = timed(make().step, steps, device)
    for key in ("float32", "bfloat16"):
        if "torch_ms" in row:
            row[f"{key}_over_torch"] = row[f"{key}_ms"] / row["torch_ms"]
    return row


CONV_LABEL = "conv stack, channels_last (32 tensors)"  # Adam only
# Adam only: bf16 parameters with fp32 masters (``bench_case``'s ``master``; added 2026-12-05)
MASTER_LABEL = "GPT-2 small, bf16 with fp32 masters (148 tensors)"


def benchmarks(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    save: Callable[[], object],
    deadline: float,
    device: str = "cuda",
) -> None:
    """Every case into ``rows``, saved after each: a case that fails (out of memory, an API
    change) is reported and the others still run; cases past ``deadline`` (perf_counter) are
    listed as skipped, so a run cut short by its caller's limit still leaves its figures."""
    shapes = gpt2_small_shapes()
    if args.quick:
        shapes = sixteenth(shapes)
    convs = conv_stack_shapes()
    if args.quick:
        convs = [(max(1, s[0] // 16), *s[1:]) for s in convs]
    lists = {
        "GPT-2 small (148 tensors)": shapes,
        f"one tensor of {args.big:,}": [(args.big,)],
        CONV_LABEL: convs,
        MASTER_LABEL: shapes,
    }
    adam_only = (CONV_LABEL, MASTER_LABEL)
    for label, shape_list in lists.items():
        for rule in (
            args.rules if label not in adam_only else [r for r in args.rules if r == "adam"]
        ):
            started = time.perf_counter()
            row: dict[str, Any] = {"list": label, "rule": rule}
            if started > deadline:
                row["skipped"] = "past the time budget (--budget)"
            else:
                try:
                    strided = label == CONV_LABEL
                    master = {"master": True} if label == MASTER_LABEL else {}
                    row.update(bench_case(rule, shape_list, args.steps, device, strided, **master))
                except Exception as error:  # reported; the other cases still run
                    row["error"] = f"{type(error).__name__}: {error}"[:300]
                    emptied(device)
                row["wall_s"] = round(time.perf_counter() - started, 1)
            print(json.dumps(row), flush=True)
            rows.append(row)
            save()


def muon_bench(args: argparse.Namespace, deadline: float, device: str = "cuda") -> dict[str, Any]:
    """``muon_case`` on GPT-2 small's matrices (``--quick``: a sixteenth of each side), skipped
    past ``deadline``, an error reported as the benchmark cases' are."""
    shapes = gpt2_small_shapes()
    if args.quick:
        shapes = sixteenth(shapes)
    if time.perf_counter() > deadline:
        return {"list": MUON_LABEL, "skipped": "past the time budget (--budget)"}
    try:
        row = muon_case(shapes, args.steps, device)
    except Exception as error:  # reported; the run goes on
        row = {"list": MUON_LABEL, "error": f"{type(error).__name__}: {error}"[:300]}
    print(json.dumps(row), flush=True)
    return row


# --------------------------------------------------------------------------------- report
def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        "# optgen GPU check",
        "",
        f"{env.get('device', '?')}; torch {env.get('torch')}, Triton {env.get('triton')}, "
        f"CUDA {env.get('cuda')}; {result['started']}; {result.get('seconds', '?')} s.",
        "",
    ]
    if result.get("no_cuda"):
        return "\n".join([*lines, f"Not run: {result['no_cuda']}.", ""])
    lines += ["## Bit checks (step_multi, CUDA)", ""]
    lines += [
        "| rule | = one step per tensor | = scalar variant | GradScaler = torch's unscale "
        "| other |",
        "|---|---|---|---|---|",
    ]
    for r in result.get("bit_checks", []):
        if "error" in r:
            lines.append(f"| {r['rule']} | failed: {r['error']} |")
            continue
        other = "fp32 = NumPy" if r.get("adam_fp32_equals_numpy") else ""
        if r.get("adam_fp32_equals_numpy") is False:
            other = "fp32 != NumPy"
        if "same_bits_device_combine" in r:
            other = f"sums combined on the device = on the host: {r['same_bits_device_combine']}"
        lines.append(
            f"| {r['rule']} | {r['same_bits_as_single']} | {r['same_bits_as_scalar']} "
            f"| {r.get('same_bits_under_grad_scaler', '-')} | {other} |"
        )
    tests = result.get("tests", {})
    lines += ["", "## Triton tests on CUDA", ""]
    if not tests.get("ran"):
        lines.append(f"Not run: {tests.get('why', 'skipped')}.")
    elif tests.get("timed_out"):
        lines.append(
            f"Stopped at the budget ({tests['budget_s']} s) after {tests.get('passed', 0)} passed,"
            f" {tests.get('failed', 0)} failed, {tests.get('errors', 0)} errors, "
            f"{tests.get('skipped', 0)} skipped."
        )
    else:
        lines.append(f"`{tests['summary']}` ({tests['seconds']} s)")
    dist = result.get("distributed")
    lines += ["", "## Distributed on CUDA (two ranks, gloo)", ""]
    if not dist:
        lines.append("Not run.")
    elif "checks" not in dist:
        lines.append(f"No report (exit codes {dist['returncodes']}, {dist['seconds']} s).")
    else:
        rules = dist["rules"] if isinstance(dist["rules"], str) else ", ".join(dist["rules"])
        stopped = " (stopped at its budget)" if dist.get("timed_out") else ""
        lines.append(
            f"{dist['checks'] - len(dist['failed'])} of {dist['checks']} checks passed{stopped} "
            f"({rules} rules; largest relative error of a rule with sums across "
            f"shards {dist['largest_relative_error']:.3g}; {dist['seconds']} s)."
        )
        lines += [
            f"- {key}: `{why.splitlines()[-1] if why else ''}`"
            for key, why in dist["failed"].items()
        ]
    lines += ["", "## Benchmarks (ms per step, median; GB/s from the nominal traffic)", ""]
    lines += [
        "Step times by CUDA events (host time included when the host cannot keep ahead); "
        "kernel times: the device time of the step's kernels alone (torch.profiler).",
        "",
        "| list | rule | ours | torch fused | torch foreach | copy | ours/fused | ours/foreach "
        "| ours GB/s | fused GB/s | copy GB/s | ours kernels | fused kernels "
        "| kernels ours/fused | ours kernels GB/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(row: dict[str, Any], key: str, form: str = "{:.3f}") -> str:
        return form.format(row[key]) if key in row else "-"

    for r in result.get("benchmarks", []):
        if "skipped" in r or "error" in r:
            why = f"skipped: {r['skipped']}" if "skipped" in r else f"failed: {r['error']}"
            lines.append(f"| {r['list']} | {r['rule']} | {why} |")
            continue
        lines.append(
            f"| {r['list']} | {r['rule']} | {f(r, 'ours_ms')} | {f(r, 'torch_fused_ms')} | "
            f"{f(r, 'torch_foreach_ms')} | {f(r, 'copy_ms')} | {f(r, 'ours_over_fused', '{:.2f}')}"
            f" | {f(r, 'ours_over_foreach', '{:.2f}')} | {f(r, 'ours_GBps', '{:.0f}')} | "
            f"{f(r, 'torch_fused_GBps', '{:.0f}')} | {f(r, 'copy_GBps', '{:.0f}')} | "
            f"{f(r, 'ours_kernel_ms')} | {f(r, 'torch_fused_kernel_ms')} | "
            f"{f(r, 'kernels_ours_over_fused', '{:.2f}')} | {f(r, 'ours_kernel_GBps', '{:.0f}')} |"
        )
    muon = result.get("muon")
    if muon is not None:
        lines += ["", f"## Muon (Newton-Schulz, 5 steps) on {MUON_LABEL}", ""]
        if "skipped" in muon or "error" in muon:
            lines.append(f"Not run: {muon.get('skipped') or muon.get('error')}.")
        else:
            lines += [
                f"{muon['tensors']} matrices, {muon['elements']:,} parameters; ms per step.",
                "",
                "| ours, float32 NS | ours, bfloat16 NS | torch.optim.Muon | float32/torch "
                "| bfloat16/torch |",
                "|---|---|---|---|---|",
                f"| {f(muon, 'float32_ms')} | {f(muon, 'bfloat16_ms')} | {f(muon, 'torch_ms')} "
                f"| {f(muon, 'float32_over_torch', '{:.2f}')} "
                f"| {f(muon, 'bfloat16_over_torch', '{:.2f}')} |",
            ]
            if "torch" in muon:
                lines.append(f"\n{muon['torch']}.")
    lines += ["", "## Raw figures", "", "```json", json.dumps(result, indent=1), "```", ""]
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version()}
    try:
        import torch

        env["torch"], env["cuda"] = torch.__version__, torch.version.cuda
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            env["device"] = f"{props.name} (sm_{props.major}{props.minor})"
            env["memory_GiB"] = round(props.total_memory / 2**30, 1)
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    return env


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "environment": environment(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    problem = cuda_problem()
    if problem is not None:
        print(f"gpu_check: no GPU checks run: {problem}.", file=sys.stderr)
        result["no_cuda"] = problem
        args.out.write_text(markdown(result))
        return NO_CUDA
    deadline = start + args.budget

    def save() -> None:  # after every part: a run cut short still leaves what it measured
        result["seconds"] = round(time.perf_counter() - start, 1)
        args.out.write_text(markdown(result))

    result["bit_checks"] = bit_checks(args.rules)
    print(json.dumps(result["bit_checks"]), flush=True)
    result["tests"] = {"ran": False, "why": "--skip-tests"}
    save()
    if not args.skip_tests:
        # the pytest run leaves the benchmarks a third of what is left of the budget
        left = deadline - time.perf_counter()
        budget = max(30, min(args.test_budget, int(left * 2 / 3)))
        result["tests"] = run_tests(budget)
        print(json.dumps(result["tests"]), flush=True)
        save()
    if not args.skip_distributed:
        budget = max(30, min(args.dist_budget, int(deadline - time.perf_counter())))
        result["distributed"] = distributed_check(args.dist_rules, budget=budget)
        print(json.dumps(result["distributed"]), flush=True)
        save()
    if not args.skip_bench:
        result["benchmarks"] = []
        benchmarks(args, result["benchmarks"], save, deadline)
        result["muon"] = muon_bench(args, deadline)
    save()
    print(f"gpu_check: wrote {args.out}")
    return 0 if passed(result) else 1


def passed(result: dict[str, Any]) -> bool:
    """Every bit check and benchmark case ran and held, and the pytest run (if any) passed
    within its budget (one stopped there, even without a failure so far, has not)."""
    tests = result.get("tests", {})
    if tests.get("ran") and (tests.get("timed_out") or tests.get("returncode") != 0):
        return False
    if any("error" in row for row in [*result.get("benchmarks", []), result.get("muon", {})]):
        return False
    dist = result.get("distributed")
    if dist and (
        dist.get("failed")
        or dist.get("timed_out")
        or "checks" not in dist
        or any(dist["returncodes"])
    ):
        return False
    return all(row["ok"] for row in result.get("bit_checks", []))


if __name__ == "__main__":
    raise SystemExit(main())
