"""The cases of ``python -m tools.bench --cpu`` (tools/bench_cpu.py) besides the per-rule table:
Adam through the torch class on one tensor, the GPT-2-small-shaped list, a conv stack, in
bfloat16, float16 and complex64; LAMB, Adafactor and Muon (sparse gradients and whole loops:
tools/bench_loops.py). Each returns ms per step per variant, the variants timed in turns
(``timed_together``)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tools.bench import timed as each_call

STAT = os.environ.get("OPTGEN_BENCH_STAT", "median")


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


def make_params(
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
        label: make(make_params(shapes, strided=strided, dtype=dtype))
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
