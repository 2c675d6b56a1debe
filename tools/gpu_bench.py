"""The GPU check's benchmarks (``python -m tools.gpu_check``, parts 4 and 5): the generated torch
classes on GPT-2 small's parameter list and on one big tensor against torch.optim's fused and
foreach optimizers and a device copy (ms per step, ratios, effective bandwidth), and Muon."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from tools.gpu_bits import OURS

TORCH: dict[str, tuple[str, dict[str, float]] | None] = {
    "adam": ("Adam", {"lr": 1e-3}),
    "adamw": ("AdamW", {"lr": 1e-3, "weight_decay": 0.01}),
    "sgd_mom": ("SGD", {"lr": 1e-2, "momentum": 0.9}),
    "lamb": None,
    "sgld": None,
}


def gpt2_small_shapes() -> list[tuple[int, ...]]:
    from tools.host_bench import gpt2_small_shapes as shapes

    return shapes()


def sixteenth(shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """``--quick``'s sizes: each side a sixteenth (at least 1)."""
    return [tuple(max(1, d // 16) for d in s) for s in shapes]


def conv_stack_shapes() -> list[tuple[int, ...]]:
    from tools.bench_cases import conv_stack_shapes as shapes

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
