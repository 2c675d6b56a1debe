"""Distributed training on CPU: two processes (gloo, 127.0.0.1), one process group running
every check of ``tests/distributed_checks.py`` (DDP, ZeRO, FSDP2 and torch.distributed.checkpoint
for every generated class), bounded in time: the processes are killed after ``TIMEOUT`` s."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from distributed_checks import (
    FLAT_DROP_INS,
    SAVE_LOAD,
    SPARSE_DDP,
    STRIDED,
    TRITON,
    ZERO_DROP_INS,
)

from generated.torch import RULES
from tools.ranks import free_port, run_ranks

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # seconds for the whole run (about a minute on two cores)
WORLD = 2


def launch(args: list[str], tmp: Path, timeout: float = TIMEOUT) -> list[str]:
    """Run ``python args`` as ranks 0 and 1 of a gloo group on 127.0.0.1 (``tools.ranks``;
    the Triton checks under the interpreter unless the environment says otherwise); both are
    killed when ``timeout`` runs out. Returns their outputs; every rank must exit with 0."""
    env = {"TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")}
    ranks = run_ranks(args, tmp, timeout, env, WORLD)
    for code, log in zip(ranks.returncodes, ranks.logs, strict=True):
        assert code == 0, f"a rank exited with {code}:\n{log[-4000:]}"
    return ranks.logs


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("distributed")
    launch([str(ROOT / "tests" / "distributed_checks.py"), str(tmp / "report.json")], tmp)
    return json.loads((tmp / "report.json").read_text())


CHECKS = [
    f"{kind}/{name}"
    for name in sorted(RULES)
    for kind in ("ddp", "ddp_dcp", "zero", "fsdp", "fsdp_dcp")
]
CHECKS += [f"dcp_save_load/{name}" for name in SAVE_LOAD]
CHECKS += [f"fsdp_triton/{name}" for name in TRITON] + ["refusals"]
CHECKS += [f"ddp_strided/{name}" for name in STRIDED]
CHECKS += [f"ddp_sparse/{key}" for key in SPARSE_DDP]
CHECKS += [f"zero_resume/{name}" for name in ZERO_DROP_INS]
CHECKS += [f"fsdp_flat_dcp/{name}" for name in FLAT_DROP_INS]


@pytest.mark.parametrize("check", CHECKS)
def test_distributed(report: dict[str, Any], check: str) -> None:
    result = report[check]
    assert result is None or isinstance(result, float), result


def test_the_readme_example_runs_under_torchrun() -> None:
    """``tools/dist_example.py`` as the README runs it (torchrun, 2 CPU processes, FSDP2,
    LAMB, a DCP checkpoint halfway): it finishes and the loss falls."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD)]
    command += ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    command += [str(ROOT / "tools" / "dist_example.py"), "--steps", "10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # its own session, so that a timeout kills torchrun's workers too
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    losses = [float(line.split()[-1]) for line in out.splitlines() if "loss" in line]
    assert len(losses) == 3 and losses[-1] < losses[0], out
