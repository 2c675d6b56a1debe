"""CPU benchmark of the compiled numba target against torch.optim, every figure in one run.

    python -m tools.bench --cpu                   # everything below (a few minutes)
    python -m tools.bench --cpu --quick           # 100 000 parameters, Adam only (smoke test)
    python -m tools.bench --cpu --json cpu.json   # also write the figures
    python -m tools.bench --cpu --rule torch_sgd  # one rule's step at 1 M, 4 M and 10 M only
    python -m tools.bench --cpu --threads 1       # torch and numba on one thread each (a loaded
                                                  # machine: less waiting for a descheduled one)

1. Adam on 10 M float32 parameters in one tensor and on a GPT-2-small-shaped list of 148
   tensors, through the torch class (``generated.torch.Adam``: the numba module on CPU) against
   ``torch.optim.Adam(fused=True)`` and ``(foreach=True)`` on the same tensors.
   Beside it, LAMB (per-tensor norms) on the same list and on 1,000 tensors of 64 x 64, on the
   numba and NumPy backends, and Adam on numba: what per-tensor sums cost on many tensors; and
   Adam on a convolution stack's parameters in torch's channels_last memory format (weights,
   gradients and states strided), with our Adam on the same tensors contiguous beside it; and
   Adafactor (a factored rule: row and column factors of each trailing 3 x 3 kernel, on the
   NumPy module) on that stack, contiguous and channels_last, against torch.optim.Adafactor;
   and the drop-in SparseAdam against torch.optim.SparseAdam on an embedding table of 16 M
   parameters, 4,096 rows looked up per step, and RMSprop on that table's sparse gradients
   (every row updated: MXNet's storage fallback) against torch's foreach RMSprop given
   ``to_dense()`` of them; and Adam on the GPT-2-small-shaped list in
   complex64 (the fast step on real views, and full steps) against torch's foreach Adam.
2. The fixed cost of a step: one tensor of 1,000 elements, 2,000 steps, through the classes
   ``SGD``, ``TorchSGD`` and ``Adam`` against torch's foreach SGD and Adam.
3. Adam in a training loop (zero_grad, forward, backward, step of a 4 M-parameter MLP whose
   matrix products run on torch's threads): per iteration and per step, the class against
   torch's fused and foreach Adam (numba's OpenMP runtime and threads are not torch's: what
   switching between them costs shows here, not in a loop of steps alone).
4. Every compiled rule's numba ``step`` at 1 M, 4 M and 10 M float32 parameters against torch's
   foreach optimizer where torch has the rule (the spec's ``torch_equivalent``), else against
   the rule's NumPy module (the reference).

Milliseconds per step: the median of the timed steps after warm-up (their minimum with
OPTGEN_BENCH_STAT=min; compilation happens in the warm-up, and the compiled code is cached in
``generated/numba/__pycache__``), the compared variants taking turns, BLOCK steps each. Speed
is reported against peers measured in the same run, never asserted in tests.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from tools.bench import WARMUP
from tools.bench_cases import (
    STAT,
    adafactor_bfloat16,
    adafactor_class,
    adafactor_rows,
    adam_bfloat16,
    adam_class,
    adam_complex,
    conv_stack_shapes,
    gpt2_small_shapes,
    lamb_bfloat16,
    lamb_class,
    muon_class,
    timed_together,
)
from tools.bench_loops import (
    FIXED_STEPS,
    fixed_cost,
    rmsprop_dense_table,
    sparse_adam_table,
    training_loop,
)

SIZES = (1_000_000, 4_000_000, 10_000_000)
# Our hyperparameters where the defaults would make the peers do different work (torch's
# weight decay is a separate pass): as tools.bench's PEERS.
HYPERPARAMS: dict[str, dict[str, float]] = {
    "adamw": {"wd": 0.01},
    "sgd_mom": {"momentum": 0.9},
    "nag": {"momentum": 0.9},
}


def rule_size(name: str, n: int, steps: int) -> dict[str, Any]:
    """The numba module's step against the rule's peer on ``n`` parameters."""
    import torch

    from generated.torch import RULES as CLASSES
    from optgen_runtime.optim import torch_optimizer
    from optgen_runtime.optim.rows import ONLY_SPARSE

    nb = importlib.import_module(f"generated.numba.{name}")
    ref = importlib.import_module(f"generated.numpy.{name}")
    hp = HYPERPARAMS.get(name, {})
    rng = np.random.default_rng(0)
    # a rule of row and column factors on a matrix of n / 1000 rows (1-D: one row, unfactored)
    factored = importlib.import_module(f"generated.rules.{name}").STATE_AXES
    shape = (n // 1000, 1000) if factored else (n,)
    w = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    # a rule's inputs besides the gradient (AdaHessian's hessian), a loss for a scalar input
    extra = {**{k: np.abs(g) for k in nb.INPUTS}, **dict.fromkeys(nb.STEP_SCALARS, 1.0)}
    state = nb.init_state(w)
    counter = iter(range(1, 10**9))
    row: dict[str, Any] = {"rule": name, "n": n}
    fns: dict[str, Callable[[], object]] = {
        "numba_ms": lambda: nb.step(w, g, state, next(counter), **hp, **extra)
    }
    row["class_ms"] = None  # the torch class on the same loops (its fast step), as users run it
    if not extra:
        mine = torch.nn.Parameter(torch.from_numpy(w.copy()))
        mine.grad = torch.from_numpy(g.copy())
        fns["class_ms"] = CLASSES[name]([mine], **hp).step
    peer = CLASSES[name].TORCH
    # (torch's SparseAdam takes sparse gradients only: its rule is compared with its NumPy
    # module here, with torch's SparseAdam on a table in sparse_adam_table)
    if peer is not None and peer.class_name not in ONLY_SPARSE:
        p = torch.nn.Parameter(torch.from_numpy(w.copy()))
        p.grad = torch.from_numpy(g.copy())
        opt = torch_optimizer(CLASSES[name], [p], override={"foreach": True}, **hp)
        row["peer"] = f"torch.optim.{peer.class_name}(foreach=True)"
        fns["peer_ms"] = opt.step
    else:
        w2 = w.copy()
        state2 = ref.init_state(w2)
        counter2 = iter(range(1, 10**9))
        row["peer"] = "NumPy module"
        fns["peer_ms"] = lambda: ref.step(w2, g, state2, next(counter2), **hp, **extra)
    row |= timed_together(fns, steps)
    row["ratio"] = row["numba_ms"] / row["peer_ms"]
    row["class_ratio"] = None if row["class_ms"] is None else row["class_ms"] / row["peer_ms"]
    return row


def table_rules() -> list[str]:
    """The rules of the table "every compiled rule": each compiled one but the matrix rules
    (the Muon block; a 10 M-element matrix's Newton-Schulz products take seconds a step, not a
    memory-bound figure)."""
    from generated.numba import RULES as NAMES

    return [
        r
        for r in NAMES
        if importlib.import_module(f"generated.numba.{r}").COMPILED
        and not getattr(importlib.import_module(f"generated.rules.{r}"), "MATRIX_VALUES", ())
    ]


def run(
    quick: bool, steps: int | None, rule: str | None = None, threads: int | None = None
) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)
    import numba

    if threads:
        numba.set_num_threads(threads)

    n = 100_000 if quick else 10_000_000
    steps = steps or (3 if quick else 20)
    result: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "numba_threads": numba.get_num_threads(),
        "steps": steps,
        "warmup": WARMUP,
        "statistic": STAT,
        "load_average": os.getloadavg(),
    }
    if rule is not None:  # those rules' rows only (at n with --quick, else at every size)
        rows_of = table_rules()
        unknown = [name for name in rule.split(",") if name not in rows_of]
        if unknown:
            raise SystemExit(
                f"tools.bench --cpu --rule: {', '.join(unknown)} has no row (the rows: "
                f"{', '.join(rows_of)}; Muon's and AdaMuon's products are the full run's "
                "Muon block)"
            )
        sizes = (n,) if quick else SIZES
        rows = [rule_size(name, size, steps) for name in rule.split(",") for size in sizes]
        return result | {"rules": rows}
    result["adam_one_tensor"] = {"n": n, **adam_class([(n,)], steps)}
    shapes = gpt2_small_shapes()
    result["adam_gpt2_small"] = {
        "tensors": len(shapes),
        "n": int(sum(np.prod(s) for s in shapes)),
        **adam_class(shapes, steps),
    }
    if not quick:
        convs = conv_stack_shapes()
        result["adam_channels_last"] = {
            "tensors": len(convs),
            "n": int(sum(np.prod(s) for s in convs)),
            **adam_class(convs, steps, strided=True),
        }
        result["adam_bfloat16"] = {
            "tensors": len(shapes),
            "n": int(sum(np.prod(s) for s in shapes)),
            **adam_bfloat16(shapes, steps),
        }
        result["adam_float16"] = {
            "tensors": len(shapes),
            "n": int(sum(np.prod(s) for s in shapes)),
            **adam_bfloat16(shapes, steps, "float16"),
        }
        result["lamb_bfloat16"] = {
            "tensors": len(shapes),
            "n": int(sum(np.prod(s) for s in shapes)),
            **lamb_bfloat16(shapes, steps),
        }
        result["adam_complex"] = {
            "tensors": len(shapes),
            "n": int(sum(np.prod(s) for s in shapes)),
            **adam_complex(shapes, steps),
        }
        result["adafactor_convs"] = {
            "tensors": len(convs),
            "n": int(sum(np.prod(s) for s in convs)),
            **adafactor_class(convs, max(3, steps // 4)),  # 0.1-0.6 s a step
        }
        result["sparse_adam"] = sparse_adam_table(steps)
        result["rmsprop_dense_table"] = rmsprop_dense_table(steps)
        for key, listed in (("lamb_gpt2_small", shapes), ("lamb_1000", [(64, 64)] * 1000)):
            result[key] = {
                "tensors": len(listed),
                "n": int(sum(np.prod(s) for s in listed)),
                **lamb_class(listed, steps),
            }
        result["adafactor_rows"] = adafactor_rows(steps)
        result["adafactor_bfloat16"] = {
            "tensors": len(shapes),
            "n": int(sum(np.prod(s) for s in shapes)),
            **adafactor_bfloat16(shapes, steps),
        }
        matrices = [s for s in shapes if len(s) == 2]
        result["muon_matrices"] = {
            "tensors": len(matrices),
            "n": int(sum(np.prod(s) for s in matrices)),
            **muon_class(matrices, max(3, steps // 2)),  # 50-100 ms a step
        }
    result["fixed_cost"] = fixed_cost(steps if quick else FIXED_STEPS)
    result["training_loop"] = training_loop(steps)
    names = ["adam"] if quick else table_rules()
    sizes = (n,) if quick else SIZES
    result["rules"] = [rule_size(name, size, steps) for name in names for size in sizes]
    return result


if __name__ == "__main__":
    raise SystemExit(
        "tools.bench_cpu is a helper module, not a command: run python -m tools.bench --cpu"
    )
