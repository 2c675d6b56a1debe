"""The GPU check's bit checks (``python -m tools.gpu_check``, part 1): on CUDA tensors, a rule's
``step_multi`` over tensors of both alignment classes against one ``step`` per tensor and against
the scalar variant, fp32 Adam against the NumPy reference, the reductions' partials combined on
the device against the host's, and GradScaler's flags."""

from __future__ import annotations

from typing import Any

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
