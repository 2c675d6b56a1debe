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
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tools.cli import check_writable, positive_int
from tools.gpu_bench import benchmarks, muon_bench
from tools.gpu_bits import RULES, bit_checks
from tools.gpu_report import markdown

NO_CUDA = 3
ROOT = Path(__file__).resolve().parent.parent

# the small files first: a run stopped at its budget has checked them
TEST_FILES = (
    "tests/test_triton_compat.py",  # the kernels' bf16 casts and -0.0 arguments
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
    "tests/test_matrix_rules_torch_classes.py",  # the matrix rules' classes on the kernels
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


# ----------------------------------------------------------------------------------- main
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
