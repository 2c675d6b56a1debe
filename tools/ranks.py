"""Two (or more) ranks of one gloo process group on 127.0.0.1, as torchrun starts them: the
launcher of ``tests/test_distributed.py`` and of ``tools/gpu_check.py``'s distributed part."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent


class Ranks(NamedTuple):
    """How the ranks ended: exit codes (None: killed at the timeout), their outputs."""

    returncodes: list[int | None]
    logs: list[str]
    timed_out: bool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(
    args: list[str], tmp: Path, timeout: float, env: dict[str, str] | None = None, world: int = 2
) -> Ranks:
    """Run ``python args`` as ranks 0..world-1 (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT set as torchrun sets them; OPTGEN_DCP_DIR ``tmp``, one OpenMP thread, a
    faulthandler, ``env`` on top), each writing ``tmp/rank<r>.log``; every rank is killed
    once ``timeout`` seconds have passed."""
    port = free_port()
    base = {
        **os.environ,
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "OPTGEN_DCP_DIR": str(tmp),
        "OMP_NUM_THREADS": "1",
        "PYTHONFAULTHANDLER": "1",  # a rank that aborts shows where
        **(env or {}),
    }
    procs = []
    for rank in range(world):
        out = open(tmp / f"rank{rank}.log", "w")  # noqa: SIM115 - closed below
        rank_env = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}
        command = [sys.executable, *args]
        procs.append(
            (subprocess.Popen(command, env=rank_env, stdout=out, stderr=out, cwd=ROOT), out)
        )
    timed_out = False
    try:
        for proc, _ in procs:
            proc.wait(timeout=timeout)  # the ranks finish together: one budget is enough
    except subprocess.TimeoutExpired:
        timed_out = True
        for proc, _ in procs:
            proc.kill()
        for proc, _ in procs:
            proc.wait()
    finally:
        for _, out in procs:
            out.close()
    logs = [(tmp / f"rank{rank}.log").read_text() for rank in range(world)]
    return Ranks([proc.returncode for proc, _ in procs], logs, timed_out)


if __name__ == "__main__":
    raise SystemExit(
        "tools.ranks is a helper module, not a command: "
        "run the distributed tests (tests/distributed_checks.py)"
    )
