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
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tools.bench import WARMUP
from tools.bench import timed as each_call

STAT = os.environ.get("OPTGEN_BENCH_STAT", "median")
SIZES = (1_000_000, 4_000_000, 10_000_000)
# Our hyperparameters where the defaults would make the peers do different work (torch's
# weight decay is a separate pass): as tools.bench's PEERS.
HYPERPARAMS: dict[str, dict[str, float]] = {
    "adamw": {"wd": 0.01},
    "sgd_mom": {"momentum": 0.9},
    "nag": {"momentum": 0.9},
}


def gpt2_small_shapes(d: int = 128, layers: int = 12, vocab: int = 1024, ctx: int = 256) -> list:
    """The parameter list of GPT-2 small (token and position embeddings, per block: two layer
    norms, the attention's qkv and output projections, the MLP's two layers, each with its
    bias; a final layer norm): 148 tensors, with a narrow width (d=128: 2.5 M parameters)."""
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]
    block = [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,)]
    block += [(4 * d, d), (d,)]
    for _ in range(layers):
        shapes += block
    return [*shapes, (d,), (d,)]


# Timed calls of one variant in a row before the next variant's (``timed_together``).
BLOCK = 5


def timed_together(fns: dict[str, Callable[[], object]], steps: int) -> dict[str, float]:
    """Milliseconds per call of each of ``fns`` (compared variants), after WARMUP untimed calls
    of each: the median of ``steps`` calls, or their minimum with OPTGEN_BENCH_STAT=min (on a
    loaded machine a multi-threaded step waits whole scheduler slices for a descheduled thread,
    torch's and ours alike: the minimum is then the code's own time). The variants take turns,
    BLOCK calls each, so a change of load or clock during the run falls on all of them alike,
    not on whichever ran last."""
    for fn in fns.values():
        each_call(fn, 0)  # the warm-up calls
    times: dict[str, list[float]] = {label: [] for label in fns}
    while any(len(t) < steps for t in times.values()):
        for label, fn in fns.items():
            block = min(BLOCK, steps - len(times[label]))
            times[label] += _no_warmup(fn, block)
    pick = min if STAT == "min" else statistics.median
    return {label: pick(t) for label, t in times.items()}


def _no_warmup(fn: Callable[[], object], calls: int) -> list[float]:
    """Milliseconds of each of ``calls`` calls, none untimed."""
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def conv_stack_shapes() -> list[tuple[int, ...]]:
    """A VGG-like stack of eight 3 x 3 convolutions (64 to 512 channels) with batch norms: 32
    tensors, 4.7 M parameters, most in 4-D weights."""
    shapes: list[tuple[int, ...]] = []
    channels = 3
    for out in (64, 64, 128, 128, 256, 256, 512, 512):
        shapes += [(out, channels, 3, 3), (out,), (out,), (out,)]
        channels = out
    return shapes


def _params(
    shapes: list[tuple[int, ...]], seed: int = 0, strided: bool = False, dtype: Any = None
) -> list[Any]:
    """Parameters with gradients (float32, or ``dtype``); ``strided``: 4-D ones in
    channels_last, gradients alike (as ``model.to(memory_format=torch.channels_last)`` and a
    backward make them)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in shapes]
    for p in params:
        if strided and p.dim() == 4:
            p.data = p.data.to(memory_format=torch.channels_last)
        p.grad = torch.empty_like(p).copy_(torch.randn(p.shape, generator=g))
    return params


def _timed_classes(
    shapes: list[tuple[int, ...]],
    steps: int,
    variants: dict[str, tuple[Callable[..., Any], bool]],
    dtype: Any = None,
) -> dict[str, float]:
    """ms/step of each variant's optimizer, ``make(params)`` on parameters of its own (channels_
    last 4-D ones where its flag says so), the variants taking turns (``timed_together``)."""
    optimizers = {
        label: make(_params(shapes, strided=strided, dtype=dtype))
        for label, (make, strided) in variants.items()
    }
    return timed_together({label: opt.step for label, opt in optimizers.items()}, steps)


def adam_class(
    shapes: list[tuple[int, ...]], steps: int, strided: bool = False
) -> dict[str, float]:
    """ms/step of generated.torch.Adam (CPU: numba) and of torch's fused and foreach Adam
    (``strided``: on channels_last tensors, with our Adam on contiguous ones beside)."""
    import torch

    from generated.torch import Adam

    variants = {
        "generated.torch.Adam (numba)": (lambda ps: Adam(ps, lr=1e-3), strided),
        "generated.torch.Adam (NumPy)": (lambda ps: Adam(ps, lr=1e-3, backend="numpy"), strided),
        "torch Adam fused": (lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True), strided),
        "torch Adam foreach": (lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True), strided),
    }
    if strided:
        variants["generated (numba), contiguous"] = (lambda ps: Adam(ps, lr=1e-3), False)
    return _timed_classes(shapes, steps, variants)


def _bits_variants(cls: Any, name: str) -> dict[str, Any]:
    """The generated class ``cls`` on bfloat16 (or float16) parameters four ways: without a
    master copy on the bits and through float32 working copies, with one
    (``multi_precision=True``) on the gradients' bits (the parameters rounded from the masters
    in the loop) and through a float32 scratch of each gradient and a copy from the masters
    after the step."""

    def copies(ps: list[Any], master: bool = False) -> Any:
        opt = cls(ps, lr=1e-3, multi_precision=master)
        # the fast step's float32 working copies or scratches (fast._bits_layout)
        opt._on_bits = False
        return opt

    return {
        f"generated.torch.{name}": (lambda ps: cls(ps, lr=1e-3), False),
        "generated, working copies": (copies, False),
        "generated, multi_precision": (lambda ps: cls(ps, lr=1e-3, multi_precision=True), False),
        "multi_precision, scratch": (lambda ps: copies(ps, True), False),
    }


def adam_bfloat16(
    shapes: list[tuple[int, ...]], steps: int, dtype: str = "bfloat16"
) -> dict[str, float]:
    """ms/step on bfloat16 (``dtype``: or float16) parameters: generated.torch.Adam without a
    master copy (computed in float32 and rounded once per step, the Triton kernels' semantics)
    and with one, each on the bits and as before (``_bits_variants``), and torch's fused
    and foreach Adam (arithmetic in the parameters' dtype)."""
    import torch

    from generated.torch import Adam

    variants = {
        **_bits_variants(Adam, "Adam"),
        "torch Adam fused": (lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True), False),
        "torch Adam foreach": (lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True), False),
    }
    return _timed_classes(shapes, steps, variants, dtype=getattr(torch, dtype))


def lamb_bfloat16(shapes: list[tuple[int, ...]], steps: int) -> dict[str, float]:
    """ms/step of generated.torch.LAMB on bfloat16 parameters (``_bits_variants``: its
    reduction loops read the bits too); torch has no LAMB."""
    import torch

    from generated.torch import LAMB

    return _timed_classes(shapes, steps, _bits_variants(LAMB, "LAMB"), dtype=torch.bfloat16)


def _full_steps(make: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Any]:
    """``make``, its optimizer stepping in full every time (its fast step turned off)."""

    def full(ps: list[Any]) -> Any:
        opt = make(ps)
        opt._fast_step = lambda given: False  # every step the full step
        return opt

    return full


def adam_complex(shapes: list[tuple[int, ...]], steps: int) -> dict[str, float]:
    """ms/step on complex64 parameters (torch's fused Adam takes none): generated.torch.Adam
    (its fast step takes them as their real views), the same stepping in full every time, and
    torch's foreach and for-loop Adam."""
    import torch

    from generated.torch import Adam

    variants = {
        "generated.torch.Adam": (lambda ps: Adam(ps, lr=1e-3), False),
        "generated, full steps": (_full_steps(lambda ps: Adam(ps, lr=1e-3)), False),
        "torch Adam foreach": (lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True), False),
        "torch Adam for-loop": (lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=False), False),
    }
    return _timed_classes(shapes, steps, variants, dtype=torch.complex64)


def adafactor_class(shapes: list[tuple[int, ...]], steps: int) -> dict[str, float]:
    """ms/step of the drop-in Adafactor and of torch.optim.Adafactor, on contiguous and on
    channels_last tensors."""
    import torch

    from generated.torch.optim import Adafactor

    return _timed_classes(
        shapes,
        steps,
        {
            "generated Adafactor": (lambda ps: Adafactor(ps, lr=1e-2), False),
            "torch Adafactor": (lambda ps: torch.optim.Adafactor(ps, lr=1e-2), False),
            "generated, channels_last": (lambda ps: Adafactor(ps, lr=1e-2), True),
            "torch, channels_last": (lambda ps: torch.optim.Adafactor(ps, lr=1e-2), True),
        },
    )


# Adafactor's factored update on matrices (its purpose), and on one long vector (unfactored: its
# column factor is the full second moment, as large as the weight): one tensor of each shape.
ADAFACTOR_SHAPES = {"matrix": (3162, 3162), "tall": (10_000, 1000), "vector": (10_000_000,)}


def adafactor_rows(steps: int) -> dict[str, dict[str, Any]]:
    """ms/step of generated.torch.Adafactor on the numba and NumPy backends and of
    torch.optim.Adafactor (foreach) on the GPT-2-small-shaped list and on each of
    ADAFACTOR_SHAPES."""
    import torch

    from generated.torch import Adafactor

    variants = {
        "generated Adafactor (numba)": (lambda ps: Adafactor(ps, lr=1e-2), False),
        "generated Adafactor (NumPy)": (lambda ps: Adafactor(ps, lr=1e-2, backend="numpy"), False),
        "torch Adafactor foreach": (
            lambda ps: torch.optim.Adafactor(ps, lr=1e-2, foreach=True),
            False,
        ),
    }
    lists = {"GPT-2-small-shaped list": gpt2_small_shapes()}
    lists |= {f"one {kind}, {' x '.join(map(str, s))}": [s] for kind, s in ADAFACTOR_SHAPES.items()}
    return {
        label: {
            "tensors": len(shapes),
            "n": int(sum(np.prod(s) for s in shapes)),
            **_timed_classes(shapes, steps, variants),
        }
        for label, shapes in lists.items()
    }


def adafactor_bfloat16(shapes: list[tuple[int, ...]], steps: int) -> dict[str, float]:
    """ms/step on bfloat16 parameters: generated.torch.Adafactor (its fast step's plan: float32
    working copies and gradient scratches of its own), the same stepping in full every time
    (temporaries each step), and torch.optim.Adafactor (foreach; arithmetic in bfloat16)."""
    import torch

    from generated.torch import Adafactor

    variants = {
        "generated Adafactor": (lambda ps: Adafactor(ps, lr=1e-2), False),
        "generated, full steps": (_full_steps(lambda ps: Adafactor(ps, lr=1e-2)), False),
        "torch Adafactor foreach": (
            lambda ps: torch.optim.Adafactor(ps, lr=1e-2, foreach=True),
            False,
        ),
    }
    return _timed_classes(shapes, steps, variants, dtype=torch.bfloat16)


def muon_class(shapes: list[tuple[int, ...]], steps: int) -> dict[str, float]:
    """ms/step of the drop-in Muon (on CPU its NumPy module: Newton-Schulz in the weights'
    float32, NumPy's matmul; and at ``ns_dtype="bfloat16"``, torch's bfloat16 CPU ops) and of
    torch.optim.Muon (Newton-Schulz in bfloat16) on the same matrices."""
    import torch

    from generated.torch.optim import Muon

    return _timed_classes(
        shapes,
        steps,
        {
            "generated Muon (float32 NS)": (lambda ps: Muon(ps, lr=1e-3), False),
            "generated Muon (bfloat16 NS)": (
                lambda ps: Muon(ps, lr=1e-3, ns_dtype="bfloat16"),
                False,
            ),
            "torch Muon (bfloat16 NS)": (lambda ps: torch.optim.Muon(ps, lr=1e-3), False),
        },
    )


def lamb_class(shapes: list[tuple[int, ...]], steps: int) -> dict[str, float]:
    """ms/step of generated.torch.LAMB (per-tensor norms: a reduction pass, then each tensor's
    trust ratio) on the numba and the NumPy backend, beside generated.torch.Adam (numba) on the
    same tensors: what the per-tensor sums cost on a list of many tensors. Also LAMB with one
    gradient all zeros (at its default wd = 0: that tensor's update and norm are zero, its
    trust ratio 1, as for a parameter DDP finds unused)."""
    from generated.torch import LAMB, Adam

    def zero_gradient(ps: list[Any]) -> Any:
        ps[1].grad.zero_()
        return LAMB(ps, lr=1e-3)

    variants = {
        "generated.torch.LAMB (numba)": (lambda ps: LAMB(ps, lr=1e-3), False),
        "LAMB (numba), a zero gradient": (zero_gradient, False),
        "generated.torch.LAMB (NumPy)": (lambda ps: LAMB(ps, lr=1e-3, backend="numpy"), False),
        "generated.torch.Adam (numba)": (lambda ps: Adam(ps, lr=1e-3), False),
    }
    return _timed_classes(shapes, steps, variants)


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
    optimizers = {label: make(_params([(FIXED_N,)])) for label, make in variants.items()}
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


if __name__ == "__main__":
    raise SystemExit(
        "tools.bench_cpu is a helper module, not a command: run python -m tools.bench --cpu"
    )
