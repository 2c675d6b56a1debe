"""The cases of ``python -m tools.bench --cpu`` on sparse gradients and whole loops: SparseAdam
and RMSprop on an embedding table's sparse gradients, the fixed cost of a step (one small
tensor), and Adam in a training loop (the step between torch's parallel regions)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from tools.bench import WARMUP
from tools.bench_cases import STAT, make_params, timed_together

TABLE = (250_000, 64)  # SparseAdam's embedding table: 16 M parameters
LOOKUPS = 4_096  # rows a batch looks up (some twice: the gradient is uncoalesced)


def _table_grads() -> tuple[Any, list[Any]]:
    """TABLE's embedding and 8 sparse gradients of ``nn.Embedding(sparse=True)`` (LOOKUPS rows
    looked up each, uncoalesced)."""
    import torch

    torch.manual_seed(0)
    table = torch.nn.Embedding(*TABLE, sparse=True)
    grads = []
    for _ in range(8):
        table.zero_grad()
        table(torch.randint(0, TABLE[0], (LOOKUPS,))).sum().backward()
        grads.append(table.weight.grad)
    return table, grads


def _table_steps(
    variants: dict[str, tuple[Callable[..., Any], bool]], steps: int
) -> dict[str, float]:
    """ms/step of each variant (its optimizer, and whether its step is given ``to_dense()`` of
    the gradient, made in the timed step) on a copy of TABLE's embedding of its own, the same
    sparse gradients in turn."""
    import torch

    table, grads = _table_grads()

    def stepping(make: Callable[..., Any], dense: bool) -> Callable[[], None]:
        weight = torch.nn.Parameter(table.weight.detach().clone())
        opt, turn = make([weight]), iter(range(1 << 62))

        def step() -> None:
            grad = grads[next(turn) % len(grads)]
            weight.grad = grad.to_dense() if dense else grad
            opt.step()

        return step

    steppers = {label: stepping(make, dense) for label, (make, dense) in variants.items()}
    return timed_together(steppers, steps)


def sparse_adam_table(steps: int) -> dict[str, float]:
    """ms/step of the drop-in SparseAdam (the rows a batch looked up, gathered, stepped by the
    numba or the NumPy module and written back) and of torch.optim.SparseAdam, on tables of
    their own, with the same sparse gradients of ``nn.Embedding(sparse=True)`` in turn."""
    import torch

    from generated.torch.optim import SparseAdam

    variants = {
        "generated SparseAdam (numba)": (lambda ps: SparseAdam(ps), False),
        "generated SparseAdam (NumPy)": (lambda ps: SparseAdam(ps, backend="numpy"), False),
        "torch SparseAdam": (lambda ps: torch.optim.SparseAdam(ps), False),
    }
    return _table_steps(variants, steps)


def rmsprop_dense_table(steps: int) -> dict[str, float]:
    """ms/step of ``generated.torch.RMSprop`` given the table's sparse gradients (MXNet's
    storage fallback: the coalesced gradient written into a zero buffer kept across steps),
    and given ``to_dense()`` of them, against torch's foreach RMSprop given ``to_dense()`` (it
    takes no sparse gradient)."""
    import warnings

    import torch

    from generated.torch import RMSprop

    warnings.filterwarnings("ignore", "RMSprop: a sparse gradient is stepped")
    variants = {
        "generated, sparse grads": (lambda ps: RMSprop(ps, lr=1e-3), False),
        "generated, to_dense()": (lambda ps: RMSprop(ps, lr=1e-3), True),
        "torch foreach, to_dense()": (
            lambda ps: torch.optim.RMSprop(ps, lr=1e-3, alpha=0.9, eps=1e-8, foreach=True),
            True,
        ),
    }
    return _table_steps(variants, steps)


FIXED_N = 1_000  # elements of the one tensor of the fixed-cost section: the step is all host work
FIXED_STEPS = 2_000


def fixed_cost(steps: int) -> dict[str, float]:
    """us/step on one tensor of FIXED_N elements: what a step costs besides its arithmetic
    (checks, scalars, the launch), ours through the torch classes' fast step against torch's
    foreach optimizers with the same settings."""
    import torch

    from generated.torch import SGD, Adam, TorchSGD

    variants = {
        "generated.torch.SGD": lambda ps: SGD(ps, lr=0.01),
        "generated.torch.TorchSGD": lambda ps: TorchSGD(ps, lr=0.01),
        "torch SGD foreach": lambda ps: torch.optim.SGD(ps, lr=0.01, foreach=True),
        "generated.torch.Adam": lambda ps: Adam(ps, lr=1e-3),
        "torch Adam foreach": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
    }
    optimizers = {label: make(make_params([(FIXED_N,)])) for label, make in variants.items()}
    times = timed_together({label: opt.step for label, opt in optimizers.items()}, steps)
    return {label: 1e3 * ms for label, ms in times.items()}


# The training loop's model: an MLP whose matrix products run on torch's threads, as a model's
# forward and backward passes do, so that the step runs between torch's parallel regions (numba
# has its own OpenMP runtime and threads: this shows what switching between them costs).
LOOP_WIDTH, LOOP_HIDDEN, LOOP_BATCH = 1024, 2048, 64


def training_loop(steps: int) -> dict[str, dict[str, float]]:
    """ms per iteration (zero_grad, forward, backward, step) and of its step alone, Adam through
    generated.torch.Adam (CPU: numba) against torch's fused and foreach Adam, each optimizer
    on its own copy of the same model, the optimizers taking turns."""
    import torch

    from generated.torch import Adam

    x = torch.randn(LOOP_BATCH, LOOP_WIDTH, generator=torch.Generator().manual_seed(1))
    variants = {
        "generated.torch.Adam (numba)": lambda ps: Adam(ps, lr=1e-3),
        "torch Adam fused": lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True),
        "torch Adam foreach": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
    }
    step_ms: dict[str, list[float]] = {label: [] for label in variants}

    def iteration(model: Any, opt: Any, label: str) -> Callable[[], None]:
        def run() -> None:
            opt.zero_grad()
            model(x).square().mean().backward()
            start = time.perf_counter()
            opt.step()
            step_ms[label].append((time.perf_counter() - start) * 1000)

        return run

    runs = {}
    for label, make in variants.items():
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(LOOP_WIDTH, LOOP_HIDDEN),
            torch.nn.GELU(),
            torch.nn.Linear(LOOP_HIDDEN, LOOP_WIDTH),
        )
        runs[label] = iteration(model, make(list(model.parameters())), label)
    iterations = timed_together(runs, steps)
    pick = min if STAT == "min" else statistics.median
    return {
        label: {"iteration": ms, "step": pick(step_ms[label][WARMUP:])}
        for label, ms in iterations.items()
    }
