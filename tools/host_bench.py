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
table is cached (``prepared_table``) and the host scalars computed once per distinct step
count (``step_rows``). Each list is timed twice: with the gradients kept from step to step
(``zero_grad(set_to_none=False)``), and with new gradient tensors before every step, at new
addresses (what ``zero_grad()`` and a backward pass give; made untimed, the last step's kept
alive so the new ones land elsewhere); ``module ms`` is the generated module's ``step_multi``
alone on the same tensors. Parameters are CPU tensors (``TRITON_INTERPRET=1`` lets the Triton
backend take them; nothing is interpreted, as nothing is launched); on CUDA the one small table
upload per step adds a pinned host-to-device copy. Medians of ``--steps`` steps after 3 warm-up
steps, ours, torch's and the module's taking turns, 5 steps each; the first step (tables built)
is reported on its own.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tools.bench import WARMUP
from tools.bench_cases import BLOCK


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

    from optgen_runtime.triton_chunks import ChunkTable

    counts = {"ours": 0, "torch": 0}
    saved_launch = ChunkTable._launch

    def launch(self: Any, kernel: Any, group: Any, *tables: Any, **copy: Any) -> None:
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
    names.append("_amp_foreach_non_finite_check_and_unscale_")  # GradScaler.unscale_'s kernel
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


# A variant of one comparison: its step, and what comes (untimed) before each call.
Variant = tuple[Callable[[], object], Callable[[], object] | None]


def taking_turns(
    variants: dict[str, Variant], steps: int, counts: dict[str, int]
) -> dict[str, tuple[float, float, dict[str, int]]]:
    """Per variant: (its first step in ms, the median ms of ``steps`` more after WARMUP
    untimed ones, the stubbed launches per call by kind, from ``counts``). The variants take
    turns, BLOCK calls each (``tools.bench_cases.timed_together``): a change of load during the
    run falls on all of them alike, not on whichever ran last."""
    first: dict[str, float] = {}
    times: dict[str, list[float]] = {label: [] for label in variants}
    calls = dict.fromkeys(variants, 0)
    launched = {label: dict.fromkeys(counts, 0) for label in variants}

    def call(label: str) -> float:
        step, setup = variants[label]
        if setup is not None:
            setup()
        before = dict(counts)
        start = time.perf_counter()
        step()
        ms = (time.perf_counter() - start) * 1e3
        calls[label] += 1
        for kind in counts:
            launched[label][kind] += counts[kind] - before[kind]
        return ms

    for label in variants:
        first[label] = call(label)
    for label in variants:
        for _ in range(WARMUP):
            call(label)
    while any(len(t) < steps for t in times.values()):
        for label in variants:
            for _ in range(min(BLOCK, steps - len(times[label]))):
                times[label].append(call(label))
    return {
        label: (
            first[label],
            statistics.median(times[label]),
            {kind: n / calls[label] for kind, n in launched[label].items()},
        )
        for label in variants
    }


# The ways gradients reach a step: suffix of the result keys, and the report's word. "amp":
# new gradients and torch.amp.GradScaler (ours: grad_scale and found_inf set as GradScaler.step
# sets them for an optimizer with _step_supports_amp_scaling; torch's foreach Adam has none:
# GradScaler unscales its gradients with one kernel, reads found_inf on the host, then steps).
SCENARIOS = {"": "kept", "_new": "new", "_amp": "amp"}


def module_step(params: list[Any], setup: Callable[[], object] | None) -> Variant:
    """The generated Triton module's ``step_multi`` alone (its own checks, the chunk table,
    the host scalars; launches stubbed by the caller) on ``params`` and their gradients: the
    module's share of the class's step."""
    import torch

    from generated.triton import adam

    weights = [p.detach() for p in params]
    states = [adam.init_state(w) for w in weights]
    grads: list[torch.Tensor] = []
    count = [0]

    def gather() -> None:
        if setup is not None:
            setup()
        grads[:] = [p.grad for p in params]
        count[0] += 1

    def step() -> None:
        adam.step_multi(weights, grads, states, count[0], lr=1e-3)

    return step, gather


def bench_list(shapes: list[tuple[int, ...]], steps: int) -> dict[str, Any]:
    """Both optimizers on one list of parameters (uninitialised: only the host work counts)."""
    import torch

    from generated.torch import Adam

    params = [torch.nn.Parameter(torch.empty(s)) for s in shapes]
    for p in params:
        p.grad = torch.empty_like(p)
    hp = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8}
    out: dict[str, Any] = {"tensors": len(params), "parameters": sum(p.numel() for p in params)}
    held: list[torch.Tensor] = []

    def new_grads() -> None:
        held[:] = [p.grad for p in params]  # alive: the new gradients land elsewhere
        for p in params:
            p.grad = torch.empty_like(p)

    scale, found_inf = torch.full((), 2.0**16), torch.zeros(())

    def scaled(opt: Any) -> Callable[[], None]:
        def step() -> None:  # as GradScaler.step for an optimizer that takes the scale
            opt.grad_scale, opt.found_inf = scale * 1.0, found_inf * 1.0
            opt.step()
            del opt.grad_scale, opt.found_inf

        return step

    def unscaled(opt: Any) -> Callable[[], None]:
        def step() -> None:  # as GradScaler.unscale_ and step for torch's foreach Adam
            found = torch.zeros(())
            grads = [p.grad for p in params]
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found, scale.reciprocal())
            if not found.item():
                opt.step()

        return step

    for key in SCENARIOS:
        setup = new_grads if key else None
        amp = key == "_amp"
        with stubbed() as counts:
            ours = Adam(params, lr=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8, backend="triton")
            peer = torch.optim.Adam(params, foreach=True, **hp)
            variants: dict[str, Variant] = {
                "ours": (scaled(ours) if amp else ours.step, setup),
                "torch": (unscaled(peer) if amp else peer.step, setup),
            }
            if not amp:
                variants["module"] = module_step(params, setup)
            timed = taking_turns(variants, steps, counts)
            del ours, peer
        for label in ("ours", "torch"):
            out[f"{label}_first_ms{key}"], out[f"{label}_ms{key}"], _ = timed[label]
        out[f"ours_launches{key}"] = timed["ours"][2]["ours"]
        out[f"torch_foreach_calls{key}"] = timed["torch"][2]["torch"]
        out[f"module_ms{key}"] = timed["module"][1] if "module" in timed else None
        held.clear()
        out[f"ratio{key}"] = out[f"ours_ms{key}"] / out[f"torch_ms{key}"]
        out[f"ours_us_per_tensor{key}"] = out[f"ours_ms{key}"] * 1e3 / len(params)
    return out


@contextmanager
def combined_on_the_host_for_free() -> Iterator[None]:
    """The partials of a reduction combined "on the device" (as on CUDA) by a stub that returns
    distinct sums per tensor at once (tensor j: j + 1, 2j + 2, ...): what remains is the host
    work a step with per-tensor sums adds, a row of host scalars per tensor (all at once:
    ``host_scalars_rows``, ``triton_rows.sum_rows``). (The copy of the sums
    to the host and the wait for the reduction kernel are not counted.)"""
    import numpy as np

    from optgen_runtime import triton_chunks, triton_reduce

    def combine(partials: Any, plan: Any, kinds: Any, names: Any) -> Any:
        rows = plan[-1][1]
        return np.arange(1.0, rows + 1.0)[:, None] * np.arange(1.0, len(names) + 1.0)

    # ChunkTable.reduce_rows (the multi-tensor path) looks both up in triton_chunks
    saved = triton_chunks.combine_on_device, triton_chunks.device_plan
    triton_chunks.combine_on_device = combine
    triton_chunks.device_plan = lambda starts, counts, device: [(None, len(starts))]
    triton_reduce.DEVICE_COMBINE.add("cpu")
    try:
        yield
    finally:
        triton_chunks.combine_on_device, triton_chunks.device_plan = saved
        triton_reduce.DEVICE_COMBINE.discard("cpu")


def bench_reductions(shapes: list[tuple[int, ...]], steps: int) -> dict[str, float]:
    """LAMB's step() (per-tensor norms: a reduction launch, the sums, then per-tensor host
    scalars) and Adam's, both generated.torch classes on the Triton backend, launches and the
    device combine stubbed, taking turns: the host cost of per-tensor sums."""
    import torch

    from generated.torch import LAMB, Adam

    params = [torch.nn.Parameter(torch.empty(s)) for s in shapes]
    for p in params:
        p.grad = torch.empty_like(p)
    with stubbed() as counts, combined_on_the_host_for_free():
        lamb, adam = LAMB(params, backend="triton"), Adam(params, backend="triton")
        timed = taking_turns({"lamb": (lamb.step, None), "adam": (adam.step, None)}, steps, counts)
    return {"lamb_ms": timed["lamb"][1], "adam_ms": timed["adam"][1]}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def run(steps: int) -> list[dict[str, Any]]:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # CPU tensors in the Triton backend's checks
    rows = []
    for name, shapes in LISTS.items():
        rows.append({"list": name, **bench_list(shapes(), steps)})
        rows[-1].update(bench_reductions(shapes(), steps))
    return rows


def report(rows: list[dict[str, Any]], steps: int) -> str:
    lines = [
        f"Host time of Adam's step(), launches stubbed (median of {steps} steps; first step "
        "apart):",
        f"{'list':32s} {'grads':5s} {'ours ms':>8s} {'torch ms':>9s} {'ratio':>6s} "
        f"{'us/tensor':>9s} {'ours 1st':>9s} {'torch 1st':>9s} {'module ms':>9s}",
    ]
    for r in rows:
        for key, word in SCENARIOS.items():
            lines.append(
                f"{r['list'] if not key else '':32s} {word:5s} {r[f'ours_ms{key}']:8.3f} "
                f"{r[f'torch_ms{key}']:9.3f} {r[f'ratio{key}']:6.2f} "
                f"{r[f'ours_us_per_tensor{key}']:9.2f} {r[f'ours_first_ms{key}']:9.2f} "
                f"{r[f'torch_first_ms{key}']:9.2f} {_ms(r[f'module_ms{key}']):>9s}"
            )
    lines.append(
        "ours: generated.torch.Adam(backend='triton'); torch: torch.optim.Adam(foreach=True); "
        "ratio = ours / torch; grads kept from step to step, or new tensors before every step,\n"
        "or new ones under torch.amp.GradScaler (amp: ours takes grad_scale and found_inf on the "
        "device; torch's foreach Adam: GradScaler's unscale kernel, found_inf read, step);\n"
        "module: generated.triton.adam.step_multi alone on the same tensors (its own checks)"
    )
    lines += [
        "",
        "Per-tensor sums (LAMB's norms: a row of host scalars per tensor, by host_scalars_rows), "
        "launches and the device combine stubbed, grads kept:",
        f"{'list':32s} {'LAMB ms':>8s} {'Adam ms':>8s} {'LAMB us/tensor':>15s}",
    ]
    for r in rows:
        per = r["lamb_ms"] * 1e3 / r["tensors"]
        lines.append(f"{r['list']:32s} {r['lamb_ms']:8.3f} {r['adam_ms']:8.3f} {per:15.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(
        "tools.host_bench is a helper module, not a command: run python -m tools.bench --host"
    )
