"""The command-line tools run (their figures are read by people, not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return done.stdout


def test_bench_quick(tmp_path: Path) -> None:
    # 1 M parameters: one 4 MB buffer is larger than the NumPy step's scratch (2 x 786 kB).
    figures = tmp_path / "bench.json"
    out = run("tools.bench", "--quick", "--n", "1000000", "--json", str(figures))
    assert "generated NumPy step" in out and "torch.optim foreach" in out
    assert "4 buffers read + 3 written" in out  # Adam's minimal traffic, from the lowering
    assert "peak extra memory of one step, every variant alike" in out
    r = json.loads(figures.read_text())
    if sys.platform != "linux":  # peak RSS growth needs /proc/self/clear_refs
        return
    rows = {m["variant"]: m for m in r["rss_memory"]}
    assert list(rows) == ["empty", "numpy", "torch_forloop", "torch_foreach"], r["rss_method"]
    for m in rows.values():
        assert all(peak >= 0 for peak in m["peak_extra_bytes_all"])
        assert m["peak_extra_bytes"] == max(m["peak_extra_bytes_all"])
    assert rows["numpy"]["peak_extra_bytes"] < r["tensor_bytes"]
    assert rows["empty"]["peak_extra_bytes"] < rows["numpy"]["peak_extra_bytes"]


def test_demo_runs_numpy_and_triton() -> None:
    out = run("tools.demo", "adam", "lamb", "sgld")
    lines = [line for line in out.splitlines() if line.startswith(("adam ", "lamb ", "sgld "))]
    assert len(lines) == 3
    adam = lines[0].split()
    assert float(adam[2]) < float(adam[1]) / 10  # Adam makes progress in 60 steps


def test_demo_train_runs_and_learns() -> None:
    out = run("tools.demo_train", "--epochs", "3")
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("Adam ")}
    first, final = float(rows["Adam"][1]), float(rows["Adam"][3])
    assert final < first


def test_references_report() -> None:
    out = run("tools.references", "madgrad")
    row = next(line.split() for line in out.splitlines() if line.startswith("madgrad "))
    assert row[2] == "pytorch_optimizer.MADGRAD" and int(row[1]) <= 40
    f32, f64 = float(row[3]), float(row[4])
    assert 0 <= f64 < f32 < 1e-5  # float32 rounds more; both far below the moved distance


def test_cpu_bench_reports_lamb_on_many_tensors_and_muon() -> None:
    """``tools.bench --cpu``'s report of the per-tensor-sum sections, of Muon and of Adafactor
    on bfloat16 (figures made up: a full run takes minutes): LAMB against its NumPy backend,
    Muon and Adafactor against torch's."""
    from tools.bench_cpu_report import report

    labels = ["generated.torch.LAMB (numba)", "generated.torch.LAMB (NumPy)"]
    block = {labels[0]: 2.0, labels[1]: 8.0, "generated.torch.Adam (numba)": 1.0}
    r = {
        "torch_threads": 2,
        "numba_threads": 2,
        "cpu_count": 2,
        "statistic": "median",
        "steps": 20,
        "warmup": 3,
        "load_average": (0.5, 0.5, 0.5),
        "lamb_gpt2_small": {"tensors": 148, "n": 2_543_360, **block},
        "lamb_1000": {"tensors": 1000, "n": 4_096_000, **block},
        "muon_matrices": {
            "tensors": 50,
            "n": 2_523_136,
            "generated Muon (float32 NS)": 90.0,
            "generated Muon (bfloat16 NS)": 67.5,
            "torch Muon (bfloat16 NS)": 45.0,
        },
        "adafactor_bfloat16": {
            "tensors": 148,
            "n": 2_543_360,
            "generated Adafactor": 10.0,
            "generated, full steps": 17.5,
            "torch Adafactor foreach": 10.0,
        },
        "rules": [],
    }
    out = report(r)
    assert "LAMB (per-tensor norms), GPT-2-small-shaped list: 148 tensors, 2,543,360" in out
    assert "LAMB (per-tensor norms), 64 x 64 each: 1000 tensors, 4,096,000" in out
    assert out.count("0.25x") == 2 and out.count("0.12x") == 2  # numba/NumPy, Adam/NumPy
    assert "Muon (Newton-Schulz, 5 steps), the GPT-2-small-shaped list's matrices: 50" in out
    assert out.count("2.00x") == 1  # the drop-in against torch's Muon
    assert out.count("1.50x") == 1  # its bfloat16 iteration
    assert "Adafactor (row and column factors), bfloat16 parameters, the GPT-2" in out
    assert out.count("1.75x") == 1  # Adafactor's full steps against torch's on bfloat16


def test_bench_cpu_refuses_a_rule_without_a_row() -> None:
    """``--rule`` names rows of the table "every compiled rule": a matrix rule (its products
    are the Muon block's) or an unknown name is refused naming it, before anything runs."""
    from tools import bench_cpu

    for name in ("muon", "adam,nosuchrule"):
        with pytest.raises(SystemExit, match=f"{name.split(',')[-1]} has no row"):
            bench_cpu.run(True, 1, name)
    assert "muon" not in bench_cpu.table_rules() and "adam" in bench_cpu.table_rules()
