"""The GPU check's report (``python -m tools.gpu_check``): ``markdown`` renders a run's result,
the bit checks, the pytest run, the distributed run, the benchmarks and Muon, as tables, then the
raw figures as JSON; tools/gpu_check.py writes it to ``--out`` after every part."""

from __future__ import annotations

import json
from typing import Any

from tools.gpu_bench import MUON_LABEL


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
