"""The report of ``python -m tools.bench --cpu`` (tools/bench_cpu.py's figures): ``report``
renders a run's result as text, a block per case (ms per step of each variant and its ratio to
the block's peer), the fixed cost, the training loop and the table of every compiled rule;
tools/bench.py prints it."""

from __future__ import annotations

from typing import Any

from tools.bench_cases import BLOCK
from tools.bench_loops import FIXED_N, LOOKUPS, LOOP_BATCH, LOOP_HIDDEN, LOOP_WIDTH, TABLE


def _block(title: str, block: dict[str, Any], peer: str, ratio: str) -> list[str]:
    """A block's lines: its title, then ms per step of each variant and its ratio to ``peer``'s
    (the block's ``n`` and ``tensors`` are the title's)."""
    width = max(11, len(ratio) + 1)
    lines = ["", title, f"  {'':30s} {'ms/step':>9s} {ratio:>{width}s}"]
    for label, ms in block.items():
        if label not in ("n", "tensors"):
            lines.append(f"  {label:30s} {ms:9.2f} {ms / block[peer]:{width - 1}.2f}x")
    return lines


def report(r: dict[str, Any]) -> str:
    lines = [
        f"threads: torch {r['torch_threads']}, numba {r['numba_threads']} "
        f"(os.cpu_count() = {r['cpu_count']}); {r['statistic']} of {r['steps']} steps after "
        f"{r['warmup']} warm-up, the variants taking turns, {BLOCK} steps each; float32; "
        f"load average {r['load_average'][0]:.2f} at the start",
    ]
    for key, title in (
        ("adam_one_tensor", "Adam, one tensor of {n:,} parameters"),
        ("adam_gpt2_small", "Adam, GPT-2-small-shaped list: {tensors} tensors, {n:,} parameters"),
        (
            "adam_channels_last",
            "Adam, a conv stack in channels_last: {tensors} tensors, {n:,} parameters",
        ),
        (
            "adam_bfloat16",
            "Adam, bfloat16 parameters, the GPT-2-small-shaped list: {tensors} tensors, "
            "{n:,} parameters",
        ),
        (
            "adam_float16",
            "Adam, float16 parameters, the GPT-2-small-shaped list: {tensors} tensors, "
            "{n:,} parameters",
        ),
    ):
        if key not in r:  # --rule: that rule only
            continue
        lines += _block(title.format(**r[key]), r[key], "torch Adam fused", "this/fused")
    for key, what in (
        ("lamb_gpt2_small", "GPT-2-small-shaped list"),
        ("lamb_1000", "64 x 64 each"),
    ):
        if key in r:
            title = f"LAMB (per-tensor norms), {what}: {{tensors}} tensors, {{n:,}} parameters"
            block = r[key]
            lines += _block(
                title.format(**block), block, "generated.torch.LAMB (NumPy)", "this/NumPy"
            )
    # blocks over one list of tensors: their key, title (of the block's tensors and n), peer
    for key, title, peer, ratio in (
        (
            "lamb_bfloat16",
            "LAMB, bfloat16 parameters, the GPT-2-small-shaped list: {tensors} tensors, {n:,} "
            "parameters (torch has no LAMB)",
            "generated, working copies",
            "this/copies",
        ),
        (
            "adam_complex",
            "Adam, complex64 parameters, the GPT-2-small-shaped list: {tensors} tensors, {n:,} "
            "parameters (torch's fused Adam takes no complex ones)",
            "torch Adam foreach",
            "this/foreach",
        ),
    ):
        if key in r:
            lines += _block(title.format(**r[key]), r[key], peer, ratio)
    if "sparse_adam" in r:
        title = (
            f"SparseAdam, an embedding table of {TABLE[0]:,} x {TABLE[1]} ({TABLE[0] * TABLE[1]:,} "
            f"parameters), {LOOKUPS:,} rows looked up per step"
        )
        lines += _block(title, r["sparse_adam"], "torch SparseAdam", "this/torch")
    if "rmsprop_dense_table" in r:
        title = (
            "RMSprop on sparse gradients (every row updated), the same table and lookups: "
            "MXNet's storage fallback"
        )
        peer = "torch foreach, to_dense()"
        lines += _block(title, r["rmsprop_dense_table"], peer, "this/torch")
    rows = r.get("adafactor_rows", {})
    for block, title, peer, ratio in (
        (
            r.get("adafactor_convs"),
            "Adafactor (factored over each 3 x 3 kernel), the conv stack: {tensors} tensors, "
            "{n:,} parameters",
            "torch Adafactor",
            "this/torch",
        ),
        *(
            (
                rows[label],
                f"Adafactor (row and column factors), {label}: {{tensors}} tensors, {{n:,}} "
                "parameters",
                "torch Adafactor foreach",
                "this/foreach",
            )
            for label in rows
        ),
        (
            r.get("adafactor_bfloat16"),
            "Adafactor (row and column factors), bfloat16 parameters, the GPT-2-small-shaped "
            "list: {tensors} tensors, {n:,} parameters",
            "torch Adafactor foreach",
            "this/foreach",
        ),
        (
            r.get("muon_matrices"),
            "Muon (Newton-Schulz, 5 steps), the GPT-2-small-shaped list's matrices: {tensors} "
            "tensors, {n:,} parameters",
            "torch Muon (bfloat16 NS)",
            "this/torch",
        ),
    ):
        if block is not None:
            lines += _block(title.format(**block), block, peer, ratio)
    if "fixed_cost" in r:
        lines += [
            "",
            f"fixed cost: one tensor of {FIXED_N:,} elements",
            f"  {'':30s} {'us/step':>9s}",
        ]
        lines += [f"  {label:30s} {us:9.1f}" for label, us in r["fixed_cost"].items()]
    if "training_loop" in r:
        params = 2 * LOOP_WIDTH * LOOP_HIDDEN + LOOP_WIDTH + LOOP_HIDDEN
        lines += [
            "",
            f"Adam in a training loop: MLP {LOOP_WIDTH}-{LOOP_HIDDEN}-{LOOP_WIDTH} ({params:,} "
            f"parameters), batch {LOOP_BATCH}: zero_grad, forward, backward, step",
            f"  {'':30s} {'ms/iter':>9s} {'ms/step':>9s} {'iter/fused':>11s}",
        ]
        fused = r["training_loop"]["torch Adam fused"]["iteration"]
        for label, ms in r["training_loop"].items():
            lines.append(
                f"  {label:30s} {ms['iteration']:9.2f} {ms['step']:9.2f} "
                f"{ms['iteration'] / fused:10.2f}x"
            )
    lines += [
        "",
        "every compiled rule: the numba module's step and the torch class's (numba backend)",
        "against torch foreach (else the NumPy module); ratio = this / peer; N parameters in",
        "one tensor (rules of row and column factors: a matrix of N / 1000 x 1000)",
        f"  {'rule':18s} {'N':>11s} {'numba ms':>9s} {'class ms':>9s} {'peer ms':>9s} "
        f"{'module':>7s} {'class':>7s}  peer",
    ]
    for row in r["rules"]:
        mine = row.get("class_ms")
        mine_ms = "-" if mine is None else f"{mine:.2f}"
        mine_ratio = "-" if mine is None else f"{row['class_ratio']:.2f}x"
        lines.append(
            f"  {row['rule']:18s} {row['n']:11,} {row['numba_ms']:9.2f} {mine_ms:>9s} "
            f"{row['peer_ms']:9.2f} {row['ratio']:6.2f}x {mine_ratio:>7s}  {row['peer']}"
        )
    return "\n".join(lines)
