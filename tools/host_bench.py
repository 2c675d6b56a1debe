"""Host time of an optimizer step, launches stubbed: ``python -m tools.bench --host``.

    python -m tools.bench --host                 # Adam; 10, 148 (GPT-2 small) and 1,000 tensors
    python -m tools.bench --host --steps 50 --json host.json

The step of ``generated.torch.Adam`` (the Triton backend: checks, chunk table, host scalars,
table upload) against ``torch.optim.Adam(foreach=True)``'s (state lookups, step counters, bias
corrections, grouping by device and dtype) on the same parameter list, in the same run, both
with the device work stubbed: our multi-tensor launch (``ChunkTable._launch``) and torch's
``torch._foreach_*`` calls on parameter-sized tensors return at once (its step counters, CPU
scalars, still advance). What is left is the host work a GPU would wait on
(or overlap): it must not grow per tensor with the step once nothing changed, since the chunk
table is cached (``ChunkTable.cached``) and the host scalars computed once per distinct step count
(``computed_each``). Parameters are CPU tensors (``TRITON_INTERPRET=1`` lets the Triton backend
take them; nothing is interpreted, as nothing is launched); on CUDA the one small table upload per
step adds a pinned host-to-device copy. Medians of ``--steps`` steps after 3 warm-up steps; the
first step (tables built) is reported on its own.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tools.bench import WARMUP
from tools.bench import timed as each_call


def gpt2_small_shapes() -> list[tuple[int, ...]]:
    """GPT-2 small's 148 parameter tensors (124 M parameters; Hugging Face's layout): token and
    position embeddings, 12 blocks of 12 (two layer norms, attention and MLP weights and
    biases), the final layer norm."""
    block = [
        (768,),
        (768,),
        (768, 2304),
        (2304,),
        (768, 768),
        (768,),
        (768,),
        (768,),
        (768, 3072),
        (3072,),
        (3072, 768),
        (768,),
    ]
    return [(50257, 768), (1024, 768), *block * 12, (768,), (768,)]


LISTS: dict[str, Callable[[], list[tuple[int, ...]]]] = {
    "10 tensors (10 x 65,536)": lambda: [(256, 256)] * 10,
    "148 tensors (GPT-2 small)": gpt2_small_shapes,
    "1,000 tensors (1,000 x 4,096)": lambda: [(64, 64)] * 1000,
}


@contextmanager
def stubbed() -> Iterator[dict[str, int]]:
    """Our launches and torch's foreach kernels return at once; counts what was stubbed."""
    import torch

    from optgen_runtime.triton_support import ChunkTable

    counts = {"ours": 0, "torch": 0}
    saved_launch = ChunkTable._launch

    def launch(self: Any, kernel: Any, group: Any, *tables: Any) -> None:
        counts["ours"] += 1
        self.launches += 1

    def foreach(name: str) -> Callable[..., Any]:
        real = getattr(torch, name)

        def stub(*args: Any, **kwargs: Any) -> Any:
            first = args[0] if args else None
            if isinstance(first, (list, tuple)) and all(x.dim() == 0 for x in first):
                return real(*args, **kwargs)  # the step counters: host scalars, kept
            counts["torch"] += 1
            return first if isinstance(first, (list, tuple)) else None

        return stub

    names = [n for n in dir(torch) if n.startswith("_foreach_")]
    saved = {n: getattr(torch, n) for n in names}
    ChunkTable._launch = launch  # type: ignore[method-assign]
    for n in names:
        setattr(torch, n, foreach(n))
    try:
        yield counts
    finally:
        ChunkTable._launch = saved_launch  # type: ignore[method-assign]
        for n, f in saved.items():
            setattr(torch, n, f)


def timed_steps(step: Callable[[], object], steps: int) -> tuple[float, float]:
    """(first step, median of ``steps`` after WARMUP more: ``tools.bench.timed``) in ms."""
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    return first * 1e3, statistics.median(each_call(step, steps))


def bench_list(shapes: list[tuple[int, ...]], steps: int) -> dict[str, Any]:
    """Both optimizers on one list of parameters (uninitialised: only the host work counts)."""
    import torch

    from generated.torch import Adam

    params = [torch.nn.Parameter(torch.empty(s)) for s in shapes]
    for p in params:
        p.grad = torch.empty_like(p)
    hp = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8}
    out: dict[str, Any] = {"tensors": len(params), "parameters": sum(p.numel() for p in params)}
    with stubbed() as counts:
        ours = Adam(params, lr=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8, backend="triton")
        out["ours_first_ms"], out["ours_ms"] = timed_steps(ours.step, steps)
        out["ours_launches"] = counts["ours"] / (1 + WARMUP + steps)
        del ours
        peer = torch.optim.Adam(params, foreach=True, **hp)
        out["torch_first_ms"], out["torch_ms"] = timed_steps(peer.step, steps)
        out["torch_foreach_calls"] = counts["torch"] / (1 + WARMUP + steps)
        del peer
    out["ratio"] = out["ours_ms"] / out["torch_ms"]
    out["ours_us_per_tensor"] = out["ours_ms"] * 1e3 / len(params)
    return out


def run(steps: int) -> list[dict[str, Any]]:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # CPU tensors in the Triton backend's checks
    rows = []
    for name, shapes in LISTS.items():
        rows.append({"list": name, **bench_list(shapes(), steps)})
    return rows


def report(rows: list[dict[str, Any]], steps: int) -> str:
    lines = [
        f"Host time of Adam's step(), launches stubbed (median of {steps} steps; first step "
        "apart):",
        f"{'list':32s} {'ours ms':>8s} {'torch ms':>9s} {'ratio':>6s} {'us/tensor':>9s} "
        f"{'ours 1st':>9s} {'torch 1st':>9s}",
    ]
    for r in rows:
        lines.append(
            f"{r['list']:32s} {r['ours_ms']:8.3f} {r['torch_ms']:9.3f} {r['ratio']:6.2f} "
            f"{r['ours_us_per_tensor']:9.2f} {r['ours_first_ms']:9.2f} {r['torch_first_ms']:9.2f}"
        )
    lines.append(
        "ours: generated.torch.Adam(backend='triton'); torch: torch.optim.Adam(foreach=True); "
        "ratio = ours / torch"
    )
    return "\n".join(lines)
