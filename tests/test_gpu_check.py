"""tools/gpu_check.py's CPU-safe parts: arguments, the no-CUDA exit, the figures it derives
(the GPU run itself needs a lent device: README's GPU section)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

from tools import gpu_bench, gpu_bits, gpu_check, gpu_report

ROOT = Path(__file__).resolve().parent.parent


def test_arguments(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OUT", str(tmp_path))
    args = gpu_check.parse_args([])
    assert args.out == tmp_path / "gpu_check.md"
    assert (args.big, args.steps, args.test_budget) == (1 << 30, 20, 240)
    assert args.rules == ["adam", "adamw", "sgd_mom", "lamb", "sgld"]
    quick = gpu_check.parse_args(["--quick", "--out", "x.md", "--rules", "adam"])
    assert (quick.big, quick.steps, quick.skip_tests, quick.out) == (1 << 22, 3, True, Path("x.md"))


def test_without_cuda_it_says_so_and_exits_3(tmp_path: Path, capsys) -> None:
    """This machine has no CUDA device: nothing runs, the reason is printed and written."""
    out = tmp_path / "gpu.md"
    assert gpu_check.main(["--out", str(out)]) == gpu_check.NO_CUDA == 3
    assert "no GPU checks run" in capsys.readouterr().err
    assert "Not run:" in out.read_text()


def test_the_script_runs_the_module(tmp_path: Path) -> None:
    script = ROOT / "tools" / "gpu_check.sh"
    assert os.access(script, os.X_OK)
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr
    assert "sees no CUDA device" in done.stderr or "not importable" in done.stderr
    assert (tmp_path / "gpu_check.md").exists()


def test_gpt2_small_and_the_figures() -> None:
    shapes = gpu_bench.gpt2_small_shapes()
    assert len(shapes) == 148
    # GPT-2 small's parameter count (124,439,808 with the output layer tied to the embedding)
    assert sum(math.prod(s) for s in shapes) == 124_439_808
    assert gpu_bench.nominal_bytes(2) == 28  # Adam, fp32: tools.aot's minimum for adam_kernel
    assert gpu_bench.nominal_bytes(0, weight_bytes=2) == 6
    assert gpu_bench.bandwidth(28, 10**9, 7.0) == 4000.0
    assert gpu_bench.fits(100, 120) and not gpu_bench.fits(100, 119)


def test_the_bit_checks_run_under_the_interpreter() -> None:
    """The GPU run's bit checks, on CPU tensors through the interpreter with small sizes: the
    code path cannot rot, and both variants and one step per tensor agree here too."""
    rows = gpu_bits.bit_checks(["adam", "sgld", "lamb"], device="cpu", sizes=(16, 48, 7))
    assert [r["rule"] for r in rows] == ["adam", "sgld", "lamb"]
    assert rows[0]["aligned"] == [True, True, False, False, True]  # 16, 48, 7, view, bf16
    assert all(r["ok"] and r["same_bits_as_scalar"] and r["same_bits_as_single"] for r in rows)
    assert all(r["same_bits_under_grad_scaler"] for r in rows)
    assert rows[0]["adam_fp32_equals_numpy"]
    assert rows[2]["same_bits_device_combine"]  # LAMB's sums: combined by the kernel too


def test_the_report_renders() -> None:
    result = {
        "started": "now",
        "environment": {"device": "H200 (sm_90)", "torch": "2", "triton": "3", "cuda": "12"},
        "seconds": 1.0,
        "bit_checks": [{"rule": "adam", "same_bits_as_single": True, "same_bits_as_scalar": True}],
        "tests": {"ran": False, "why": "pytest is not installed on this machine"},
        "benchmarks": [
            {
                "list": "GPT-2",
                "rule": "adam",
                "ours_ms": 1.0,
                "torch_fused_ms": 2.0,
                "copy_ms": 0.5,
                "ours_over_fused": 0.5,
                "ours_GBps": 3000.0,
                "ours_kernel_ms": 0.8,
                "torch_fused_kernel_ms": 1.6,
                "kernels_ours_over_fused": 0.5,
                "ours_kernel_GBps": 3750.0,
            },
            {"list": "big", "rule": "lamb", "skipped": "needs 20 GiB"},
        ],
        "distributed": {
            "ran": True,
            "rules": ["adam"],
            "seconds": 9.0,
            "returncodes": [0, 0],
            "checks": 12,
            "failed": {"fsdp/adam": "Traceback ...\nRuntimeError: no reduce_scatter"},
            "largest_relative_error": 0.0,
        },
    }
    text = gpu_report.markdown(result)
    assert "11 of 12 checks passed (adam rules;" in text
    assert "- fsdp/adam: `RuntimeError: no reduce_scatter`" in text
    assert not gpu_check.passed(result)
    assert "| GPT-2 | adam | 1.000 | 2.000 | - | 0.500 | 0.50 |" in text
    assert "| 0.800 | 1.600 | 0.50 | 3750 |" in text  # the kernels' own device time
    assert "skipped: needs 20 GiB" in text and "pytest is not installed" in text


def test_the_benchmarks_run_on_cpu_with_small_sizes(monkeypatch) -> None:
    """The GPU run's benchmark cases, on CPU tensors with wall-clock timing (the classes take
    their CPU path): every rule's hyperparameters are accepted by our class and by torch's
    optimizer, fused and foreach, and the figures are derived; a case that raises is reported
    and the others still run, each saved as it ends; cases past the budget are listed."""
    args = gpu_check.parse_args(["--steps", "1", "--big", "4096"])
    small = [(16, 8), (8,), (33,)]
    convs = [(4, 3, 3, 3), (4,)]
    monkeypatch.setattr(gpu_bench, "gpt2_small_shapes", lambda: small)
    monkeypatch.setattr(gpu_bench, "conv_stack_shapes", lambda: convs)
    real = gpu_bench.bench_case
    strided: list[bool] = []

    masters: list[bool] = []

    def case(
        rule: str,
        shapes: list[tuple[int, ...]],
        steps: int,
        device: str,
        channels_last: bool,
        master: bool = False,
    ) -> dict:
        strided.append(channels_last)
        masters.append(master)
        if rule == "sgld" and shapes == [(4096,)]:
            raise RuntimeError("CUDA out of memory")
        return real(rule, shapes, steps, device, channels_last, master=master)

    monkeypatch.setattr(gpu_bench, "bench_case", case)
    rows: list[dict] = []
    saved: list[int] = []
    gpu_bench.benchmarks(args, rows, lambda: saved.append(len(rows)), math.inf, "cpu")
    assert saved == list(range(1, 13))
    # the conv stack and the bf16 list with masters: Adam only
    assert [r["rule"] for r in rows] == [*args.rules, *args.rules, "adam", "adam"]
    assert strided == [False] * 10 + [True, False] and rows[-2]["list"] == gpu_bench.CONV_LABEL
    assert masters == [False] * 11 + [True] and rows[-1]["list"] == gpu_bench.MASTER_LABEL
    assert rows[-1]["elements"] == rows[0]["elements"]
    # Adam in bf16: ours 28 B per element (fp32 master and states, the bf16 parameter written
    # from the master), torch's 14 (bf16 parameter and states): each GB/s from its own traffic
    assert rows[-1]["nominal_bytes_per_element"] == 28
    assert rows[-1]["torch_nominal_bytes_per_element"] == 14
    failed = rows.pop(9)
    for row in rows:
        assert row["ours_ms"] > 0 and row["copy_ms"] > 0 and row["ours_GBps"] > 0, row
        assert not any("kernel" in key for key in row)  # kernel times: CUDA only
        peer = gpu_bench.TORCH[row["rule"]]
        assert ("ours_over_fused" in row) == ("ours_over_foreach" in row) == (peer is not None)
    assert rows[0]["elements"] == 16 * 8 + 8 + 33 and rows[5]["elements"] == 4096
    assert rows[-2]["elements"] == 4 * 27 + 4
    assert failed["error"] == "RuntimeError: CUDA out of memory"
    assert not gpu_check.passed({"bit_checks": [], "benchmarks": [*rows, failed]})
    assert gpu_check.passed({"bit_checks": [], "benchmarks": rows})
    assert "failed: RuntimeError: CUDA out of memory" in gpu_report.markdown(
        {"started": "now", "environment": {}, "benchmarks": [*rows, failed]}
    )
    late: list[dict] = []
    gpu_bench.benchmarks(args, late, lambda: None, -math.inf, "cpu")
    assert all(r["skipped"] == "past the time budget (--budget)" for r in late) and len(late) == 12


def test_a_bit_check_that_raises_is_reported_and_the_others_run(monkeypatch) -> None:
    real = gpu_bits.bit_check

    def check(rule: str, device: str, sizes: tuple[int, ...]) -> dict:
        if rule == "adam":
            raise ValueError("no such kernel")
        return real(rule, device, sizes)

    monkeypatch.setattr(gpu_bits, "bit_check", check)
    rows = gpu_bits.bit_checks(["adam", "sgd_mom"], device="cpu", sizes=(16, 7))
    assert rows[0] == {"rule": "adam", "ok": False, "error": "ValueError: no such kernel"}
    assert rows[1]["ok"] and not gpu_check.passed({"bit_checks": rows})
    text = gpu_report.markdown({"started": "now", "environment": {}, "bit_checks": rows})
    assert "| adam | failed: ValueError: no such kernel |" in text


def test_a_pytest_run_stopped_at_its_budget_says_how_far_it_got() -> None:
    out = (
        "........................................................................ [  7%]\n"
        "..F.....s.......E...........x...........................................\n"
    )
    seen = gpu_check.progress(out)
    assert (seen["passed"], seen["failed"], seen["errors"], seen["skipped"]) == (140, 1, 1, 1)
    result = {"started": "now", "environment": {}, "tests": {"ran": True, "timed_out": True}}
    result["tests"] |= {"budget_s": 240, **seen}
    text = gpu_report.markdown(result)
    assert "Stopped at the budget (240 s) after 140 passed, 1 failed, 1 errors, 1 skipped." in text
    assert not gpu_check.passed(result)
    # the small files first: a run stopped at its budget has checked them
    assert gpu_check.TEST_FILES[-1] == "tests/test_triton.py"


def test_the_distributed_run_launches_two_ranks_on_cpu() -> None:
    """The GPU run's distributed part, on CPU tensors (``device="cpu"``: the same launcher,
    environment and report as on CUDA): Adam's five checks and its strided-weights check, the
    DCP save/load and Triton checks, the refusals, the sparse embedding's DDP checks, the
    drop-ins' ZeRO resumes and their flattened DCP resumes under FSDP2 (run for any rules
    named); every one passed."""
    from distributed_checks import FLAT_DROP_INS, SPARSE_DDP, ZERO_DROP_INS

    found = gpu_check.distributed_check(["adam"], device="cpu", budget=200)
    assert found["returncodes"] == [0, 0], found
    expected = 5 + 1 + 4 + 2 + 1 + len(SPARSE_DDP) + len(ZERO_DROP_INS) + len(FLAT_DROP_INS)
    assert found["checks"] == expected and found["failed"] == {}, found


def test_the_muon_case_runs_on_cpu_and_renders(monkeypatch) -> None:
    """The GPU run's Muon case on CPU tensors: the drop-in in float32 and bfloat16 and torch's
    Muon each timed, the ratios derived, the section rendered; past the budget it is skipped
    and a case that raises is reported (and fails the run), as the other benchmarks."""
    row = gpu_bench.muon_case([(16, 8), (8,), (8, 24)], 1, "cpu")
    assert row["tensors"] == 2 and row["elements"] == 16 * 8 + 8 * 24  # matrices only
    for key in ("float32_ms", "bfloat16_ms", "torch_ms"):
        assert row[key] > 0, key
    assert row["bfloat16_over_torch"] == row["bfloat16_ms"] / row["torch_ms"]
    text = gpu_report.markdown({"started": "now", "environment": {}, "muon": row})
    assert f"## Muon (Newton-Schulz, 5 steps) on {gpu_bench.MUON_LABEL}" in text
    assert f"{row['bfloat16_over_torch']:.2f}" in text
    args = gpu_check.parse_args(["--quick"])
    assert gpu_bench.muon_bench(args, -math.inf, "cpu")["skipped"].startswith("past the time")

    def broken(*_: object) -> dict:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(gpu_bench, "muon_case", broken)
    failed = gpu_bench.muon_bench(args, math.inf, "cpu")
    assert failed["error"] == "RuntimeError: CUDA out of memory"
    assert not gpu_check.passed({"bit_checks": [], "muon": failed})
    assert gpu_check.passed({"bit_checks": [], "muon": row})
    assert "Not run: RuntimeError: CUDA out of memory." in gpu_report.markdown(
        {"started": "now", "environment": {}, "muon": failed}
    )
