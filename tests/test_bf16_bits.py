"""bfloat16 and float16 parameters on the compiled CPU loops without working copies: the fast
step hands the loops the bits of a bfloat16 (float16) weight and gradient
(``numba_support.view_bits``: uint16 (int16) arrays), which ``load`` widens to float32 and
``store`` rounds back to nearest, ties to even, once per step (float16 by the CPU's conversion
instructions, where it has them: ``HALF_NATIVE``).
The full step keeps its float32 working copies rounded by torch, so each fast step is checked
against it: to the bit, for every class whose numba module is compiled (its reduction loops
read the bits too), on random values and on values that round at ties, overflow, and hold
infinities and NaN (any NaN for a NaN: torch's conversion and ours may differ in its bits).
With a float32 master copy (``multi_precision=True``) the loop reads the bfloat16 gradient's
bits and rounds the parameter from the master, checked against the full step alike."""

from __future__ import annotations

import importlib
from typing import Any

import llvmlite.binding as llvm
import numba
import numpy as np
import pytest
import torch

import generated.torch as gt
from optgen_runtime import numba_bits
from optgen_runtime.numba_bits import load, store

SHAPES = [(40, 9), (70001,), (5,)]


def _bits_classes() -> list[str]:
    """generated.torch's classes whose numba module is compiled (its update's and reductions'
    loops take bfloat16 bits) and whose steps can be fast (no step inputs)."""
    names = []
    for name, cls in sorted(vars(gt).items()):
        if not (isinstance(cls, type) and hasattr(cls, "META")) or "DROP_IN" in cls.__dict__:
            continue
        if cls.META.INPUTS or cls.META.STEP_SCALARS:
            continue  # steps with inputs are full steps
        module = importlib.import_module(f"generated.numba.{cls.RULE}")
        if module.COMPILED and hasattr(module, "step_buffers"):  # (the row/column rules' loops
            names.append(name)  # take float32 and float64: their steps are full steps)
    return names


BITS_CLASSES = _bits_classes()


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to the bit, any NaN for a NaN."""
    nan = a.isnan()
    return torch.equal(nan, b.isnan()) and torch.equal(a[~nan], b[~nan])


def _equal(a: Any, b: Any) -> bool:
    """Two state values (or refusals' messages) alike: tensors of one dtype to the bit."""
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return a.dtype == b.dtype and _same(a, b)


DTYPES = [torch.bfloat16, torch.float16]
# the layouts of each dtype's parameters on their bits: without a master copy, with one
LAYOUTS = {torch.bfloat16: ("bits", "master"), torch.float16: ("half bits", "half master")}


def _run(
    cls: type, fast: bool, special: bool, master: bool = False, dtype: Any = torch.bfloat16
) -> tuple[list[torch.Tensor], Any]:
    """Five steps; the parameters and every state value after them, then the messages of the
    steps refused (a rule whose host states a NaN gradient would make NaN refuses that step,
    writing nothing: Prodigy)."""
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in SHAPES]
    opt = cls(params, backend="numba", multi_precision=master)
    taken: list[bool] = []  # each step's fast step: taken or not (a full step instead)
    plan_step = opt._fast_step
    opt._fast_step = lambda given: taken.append(fast and plan_step(given)) or taken[-1]
    refused = []
    for t in range(5):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(dtype)
            if special and t == 3:
                flat = p.grad.view(-1)
                flat[:4] = torch.tensor([float("inf"), -float("inf"), float("nan"), 3.3e38])
        try:
            opt.step()
        except ValueError as error:
            refused.append(str(error))
    out = [p.detach().clone() for p in params]
    out += [torch.as_tensor(v).clone() for p in params for v in opt.state[p].values()]
    assert taken.count(True) >= (3 if fast else 0) and (fast or not any(taken))
    return out + refused, opt


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("special", [False, True], ids=["random", "inf-nan"])
@pytest.mark.parametrize("name", BITS_CLASSES)
def test_bits_steps_equal_full_steps(name: str, special: bool, dtype: Any) -> None:
    cls = getattr(gt, name)
    got, opt = _run(cls, True, special, dtype=dtype)
    layout = LAYOUTS[dtype][0]
    assert opt._plan is not None and all(part.layouts == [layout] * 3 for part in opt._plan.groups)
    want, _ = _run(cls, False, special, dtype=dtype)
    assert len(want) == len(got) > len(SHAPES)
    assert all(_equal(x, y) for x, y in zip(want, got, strict=True))


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("special", [False, True], ids=["random", "inf-nan"])
@pytest.mark.parametrize("name", BITS_CLASSES)
def test_master_steps_equal_full_steps(name: str, special: bool, dtype: Any) -> None:
    """``multi_precision=True``: the bfloat16 (float16) gradients read as their bits by the loop
    that updates the float32 master copy, which rounds the parameter from it chunk by chunk
    (layout MASTER, HALF_MASTER), against the full step's float32 scratch and ``copy_`` from
    the master: the parameters, masters and states to the bit."""
    cls = getattr(gt, name)
    got, opt = _run(cls, True, special, master=True, dtype=dtype)
    plan = opt._plan
    layout = LAYOUTS[dtype][1]
    assert plan is not None and all(part.layouts == [layout] * 3 for part in plan.groups)
    assert not plan.masters and not any(part.converted[0] for part in plan.groups)
    want, _ = _run(cls, False, special, master=True, dtype=dtype)
    assert len(want) == len(got) > len(SHAPES)
    assert all(_equal(x, y) for x, y in zip(want, got, strict=True))


def test_float16_without_the_conversions_keeps_working_copies(monkeypatch) -> None:
    """A CPU without float16 conversion instructions (``HALF_NATIVE`` False): float16
    parameters take the float32 working copies and scratches, to the same bits."""
    monkeypatch.setattr(numba_bits, "HALF_NATIVE", False)
    for master in (False, True):
        got, opt = _run(gt.Adam, True, True, master=master, dtype=torch.float16)
        assert opt._plan is not None and opt._plan.groups[0].layouts == ["plain"] * 3
        want, _ = _run(gt.Adam, False, True, master=master, dtype=torch.float16)
        assert all(_equal(x, y) for x, y in zip(want, got, strict=True))


def test_the_sweep_covers_the_common_rules() -> None:
    common = {"Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Lion", "TorchAdam"}
    # per-tensor sums (reduction loops on the bits too), host states, group sums
    common |= {"LAMB", "LARS", "NAdam", "Prodigy"}
    assert common <= set(BITS_CLASSES)


@numba.njit
def _put(out: np.ndarray, values: np.ndarray) -> None:
    """``store`` of every value (compiled; ``py_func``: the Python bodies)."""
    for i in range(values.shape[0]):
        store(out, i, values[i])


@numba.njit
def _get(bits: np.ndarray, out: np.ndarray) -> None:
    """``load`` of every element."""
    for i in range(bits.shape[0]):
        out[i] = load(bits, i)


def test_store_rounds_as_torch() -> None:
    """``store`` of float32 values into bfloat16 bits, against torch's conversion: ties to
    even both ways, just above and below a tie, the largest finite values (one rounds to
    inf), subnormals, signed zeros, infinities; a NaN stays a NaN of its sign."""
    tie = 2.0**-8
    values = torch.tensor(
        [1 + tie, 1 + 3 * tie, 1 + tie + 2**-20, 1 + tie - 2**-20, -(1 + tie), 3.3895e38,
         3.4e38, -3.4e38, 1e-40, -1e-45, 0.0, -0.0, float("inf"), -float("inf")],
        dtype=torch.float32,
    )  # fmt: skip
    rng = torch.Generator().manual_seed(1)
    values = torch.cat(
        [
            values,
            torch.randn(10_000, generator=rng)
            * 10.0 ** torch.randint(-30, 30, (10_000,), generator=rng),
        ]
    )
    bits = np.zeros(len(values), dtype=np.uint16)
    _put(bits, values.numpy())
    ours = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)
    assert torch.equal(ours.view(torch.int16), values.to(torch.bfloat16).view(torch.int16))
    back = np.zeros(len(values), dtype=np.float32)
    _get(bits, back)
    assert torch.equal(torch.from_numpy(back), ours.float())
    # the Python bodies (a chunk function run by Python: the compiled loops' reference)
    python = np.zeros(len(values), dtype=np.uint16)
    _put.py_func(python, values.numpy()[:2000])
    assert np.array_equal(python[:2000], bits[:2000])
    back_python = np.zeros(2000, dtype=np.float32)
    _get.py_func(bits[:2000], back_python)
    assert np.array_equal(back_python, back[:2000])
    nan = np.zeros(2, dtype=np.uint16)
    _put(nan, np.array([np.nan, -np.nan], dtype=np.float32))
    widened = torch.from_numpy(nan.view(np.int16)).view(torch.bfloat16).float()
    assert widened.isnan().all() and torch.signbit(widened).tolist() == [False, True]
    nan_python = np.zeros(2, dtype=np.uint16)
    _put.py_func(nan_python, np.array([np.nan, -np.nan], dtype=np.float32))
    assert np.array_equal(nan_python, nan)


def test_float16_store_rounds_as_torch() -> None:
    """``store`` of float32 values into float16 bits and ``load`` back, against torch's
    conversions: ties to even both ways, the largest finite value and the tie above it (65520
    rounds to inf), subnormals and their ties, values too small for a subnormal, signed zeros,
    infinities, NaN (the same bits as torch's: the same instructions), every float16 widened
    exactly; the Python bodies give the same bits (NumPy's conversions), but a NaN's payload."""
    if not numba_bits.HALF_NATIVE:
        pytest.skip("this CPU has no float16 conversion instructions: float16 takes copies")

    ulp = 2.0**-10
    values = torch.tensor(
        [1 + ulp / 2, 1 + 3 * ulp / 2, 1 + ulp / 2 + 2**-20, 1 + ulp / 2 - 2**-20, -(1 + ulp / 2),
         65504.0, 65519.99, 65520.0, -65520.0, 1e6, 2.0**-24, 2.0**-25, 3 * 2.0**-25,
         2.0**-26, 1e-45, 2.0**-14 * (1 - 2**-11), 0.0, -0.0, float("inf"), -float("inf"),
         float("nan"), -float("nan")],
        dtype=torch.float32,
    )  # fmt: skip
    rng = torch.Generator().manual_seed(1)
    scaled = torch.randn(20_000, generator=rng) * 10.0 ** torch.randint(
        -9, 6, (20_000,), generator=rng
    )
    values = torch.cat([values, scaled])
    bits = np.zeros(len(values), dtype=np.int16)
    _put(bits, values.numpy())
    assert torch.equal(torch.from_numpy(bits), values.to(torch.float16).view(torch.int16))
    every = np.arange(-(2**15), 2**15).astype(np.int16)
    back = np.zeros(len(every), dtype=np.float32)
    _get(every, back)
    want = torch.from_numpy(every.copy()).view(torch.float16).float()
    assert _same(torch.from_numpy(back), want)
    finite = ~values.isnan().numpy()
    python = np.zeros(len(values), dtype=np.int16)
    _put.py_func(python, values.numpy())
    assert np.array_equal(python[finite], bits[finite])
    assert np.isnan(python[~finite].view(np.float16)).all()
    sample = every[::21]  # (one in 21: the Python body is slow)
    back_python = np.zeros(len(sample), dtype=np.float32)
    _get.py_func(sample, back_python)
    assert _same(torch.from_numpy(back_python), want[::21])


def test_mixed_dtypes_in_one_group() -> None:
    """bfloat16 and float16 (each on its bits) and float32 parameters in one group: each its
    own group of the loops' buffers, every step to the bit the full step."""

    def run(fast: bool) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        dtypes = [torch.bfloat16, torch.float32, torch.float16, torch.bfloat16]
        params = [
            torch.nn.Parameter(torch.randn(s, generator=g).to(d))
            for s, d in zip([*SHAPES, (33,)], dtypes, strict=True)
        ]
        opt = gt.AdamW(params, lr=0.01, backend="numba")
        if not fast:
            opt._fast_step = lambda given: False
        for _ in range(4):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
            opt.step()
        if fast:
            half = "half bits" if numba_bits.HALF_NATIVE else "plain"
            layouts = ["bits", "plain", half, "bits"]
            assert opt._plan is not None and opt._plan.groups[0].layouts == layouts
        return [p.detach().clone() for p in params]

    assert all(torch.equal(x, y) for x, y in zip(run(False), run(True), strict=True))


def test_the_first_compile_warns_nothing() -> None:
    """The loops on bfloat16 and float16 bits compiled afresh (no cache) with numba's IR
    warnings as errors: ``store``'s rounding, inlined into numba's IR, once left phi nodes that
    numba's own check reported as a NumbaIRAssumptionWarning asking users to file a numba bug."""
    import os
    import subprocess
    import sys

    script = (
        "import warnings\n"
        "from numba.core.errors import NumbaIRAssumptionWarning\n"
        "warnings.simplefilter('error', NumbaIRAssumptionWarning)\n"
        "import torch, generated.torch as gt\n"
        "for dtype in (torch.bfloat16, torch.float16):\n"
        "    for master in (False, True):\n"
        "        ps = [torch.nn.Parameter(torch.randn(70001).to(dtype))]\n"
        "        opt = gt.Adam(ps, backend='numba', multi_precision=master)\n"
        "        for _ in range(3):\n"
        "            ps[0].grad = torch.randn(70001).to(dtype)\n"
        "            opt.step()\n"
        "        assert opt._plan.groups[0].layouts[0] != 'plain' or dtype == torch.float16\n"
    )
    env = {**os.environ, "OPTGEN_NUMBA_CACHE": "0"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_float16_on_the_bits_only_where_numba_targets_the_conversions() -> None:
    """``HALF_NATIVE``: AArch64; x86 with F16C when numba compiles for the host; a
    ``NUMBA_CPU_FEATURES`` list with ``+f16c``; never another named CPU. Under
    ``NUMBA_CPU_NAME=generic`` (no F16C) a float16 step takes the working copies: the
    conversions compiled for that target would call a helper the JIT cannot find and abort the
    process (``LLVM ERROR: Symbol not found: __extendhfsf2``)."""
    import os
    import subprocess
    import sys

    native = numba_bits._half_native
    assert native("aarch64", "generic", None) and native("arm64", None, None)
    assert native("x86_64", "generic", "+avx2,+f16c") and not native("x86_64", None, "+avx2")
    assert not native("x86_64", "generic", None) and not native("x86_64", "generic", "")
    host = bool(llvm.get_host_cpu_features().get("f16c"))
    assert native("x86_64", None, None) == native("x86_64", "host", None) == host
    script = (
        "import torch, generated.torch as gt\n"
        "from optgen_runtime import numba_bits\n"
        "assert not numba_bits.HALF_NATIVE\n"
        "ps = [torch.nn.Parameter(torch.randn(70001).half())]\n"
        "opt = gt.Adam(ps, backend='numba')\n"
        "for _ in range(3):\n"
        "    ps[0].grad = torch.randn(70001).half()\n"
        "    opt.step()\n"
        "assert opt._plan.groups[0].layouts == ['plain'], opt._plan.groups[0].layouts\n"
    )
    env = {**os.environ, "OPTGEN_NUMBA_CACHE": "0", "NUMBA_CPU_NAME": "generic"}
    env.pop("NUMBA_CPU_FEATURES", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
