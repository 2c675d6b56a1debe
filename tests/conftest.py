"""Shared fixtures: rule discovery (new specs are picked up automatically) and tolerances."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

# Kernels run in Triton's CPU interpreter unless a GPU run asks otherwise: on a machine with a
# GPU, `TRITON_INTERPRET=0 pytest tests/test_triton.py` runs the same tests on CUDA tensors.
os.environ.setdefault("TRITON_INTERPRET", "1")

from codegen.load import SPECS_DIR, load_rules

DEVICE = "cpu" if os.environ["TRITON_INTERPRET"] not in ("", "0") else "cuda"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A GPU run (TRITON_INTERPRET=0) on a machine without CUDA skips, saying why, rather than
    failing every kernel launch."""
    if DEVICE != "cuda":
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="TRITON_INTERPRET=0 asks for CUDA; torch sees no CUDA device")
    for item in items:
        item.add_marker(skip)


# OPTGEN_ROOT=<dir with specs/ and generated/> runs the suite on another tree (used to show that a
# new spec is picked up by every parametrized test without touching this repository).
_ROOT = os.environ.get("OPTGEN_ROOT")
if _ROOT:
    sys.path.insert(0, _ROOT)
ALL_RULES = {rule.name: rule for rule in load_rules(Path(_ROOT) / "specs" if _ROOT else SPECS_DIR)}
# Rules with matrix equations (codegen/matrix.py: Muon, AdaMuon) have their own targets
# (codegen/matrix_targets.py); the rule-parametrized suites run the per-element rules, and
# tests/test_matrix_rules.py runs what applies of them on every matrix rule (with the list of
# what does not, and why).
RULES = {name: rule for name, rule in ALL_RULES.items() if not rule.matrix_values}
RULE_NAMES = sorted(RULES)
MATRIX_RULES = {name: rule for name, rule in ALL_RULES.items() if rule.matrix_values}
MATRIX_RULE_NAMES = sorted(MATRIX_RULES)


def numpy_module(name: str) -> ModuleType:
    return importlib.import_module(f"generated.numpy.{name}")


def triton_module(name: str) -> ModuleType:
    return importlib.import_module(f"generated.triton.{name}")


def numba_module(name: str) -> ModuleType:
    return importlib.import_module(f"generated.numba.{name}")


# Where a test's torch.optim side is not what the spec's torch_equivalent maps the rule to:
# rule -> (the rule whose mapping builds it, torch settings set on top); see
# tests/test_torch_optim.py's docstring for why.
TORCH_DIFFERS: dict[str, tuple[str, dict[str, Any]]] = {
    "nag": ("sgd_mom", {"nesterov": True}),  # no mapping declared: equal while lr is constant
    "adamax": ("adamax", {"eps": 1e-12}),  # eps inside (torch) or outside (ours) the max: tiny
}


def torch_peer(
    rule: str, params: Any, hp: dict[str, Any], differs: dict[str, Any] | None = None
) -> Any:
    """The real torch.optim optimizer over ``params`` that runs ``rule`` with our ``hp``, built
    from the spec's ``torch_equivalent`` by ``optgen_runtime.optim.torch_optimizer``, changed as
    ``differs`` (``TORCH_DIFFERS``, say) says for the rule."""
    from generated.torch import RULES as CLASSES
    from optgen_runtime.optim import torch_optimizer

    like, override = (differs or {}).get(rule, (rule, {}))
    return torch_optimizer(CLASSES[like], params, override=override, **hp)


# Rounding budget of one step, in units of the dtype's machine epsilon: each of the ~20
# operations a rule performs per element rounds once (half an ulp), with room for the different
# but equally valid orders two implementations may pick (fused multiply-add on a GPU).
ULPS_PER_STEP = 32


def float32_newton_schulz(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.optim.Muon's own Newton-Schulz, run in float32: its bfloat16 cast becomes a
    float32 copy (a copy, as the cast is: torch divides the result in place)."""
    import torch

    monkeypatch.setattr(torch.Tensor, "bfloat16", lambda self: self.to(torch.float32, copy=True))


def eps(dtype: object) -> float:
    """Machine epsilon of a NumPy or torch floating dtype (bfloat16 through torch.finfo)."""
    if "torch." in str(dtype):
        import torch

        return float(torch.finfo(dtype).eps)
    return float(np.finfo(dtype).eps)


def tolerance(dtype: object, steps: int = 1, scale: float = 1.0) -> dict[str, float]:
    """rtol/atol for comparing two implementations that both round in ``dtype``.

    ``ULPS_PER_STEP`` machine epsilons per step, growing linearly with the number of steps;
    ``atol`` is that relative error at ``scale``, the magnitude of the operands (a result that
    cancels to ~0 is only as accurate as the values it was computed from).
    """
    rtol = ULPS_PER_STEP * eps(dtype) * max(steps, 1)
    return {"rtol": rtol, "atol": rtol * scale}


def ulp(x: np.ndarray, dtype: object) -> np.ndarray:
    """Spacing of ``dtype``'s floating-point grid at ``|x|`` (its subnormal spacing near 0)."""
    if "torch." in str(dtype):
        import torch

        info = torch.finfo(dtype)
    else:
        info = np.finfo(dtype)
    x = np.abs(np.asarray(x, dtype=np.float64))
    smallest = float(info.tiny) * float(info.eps)  # subnormal spacing
    _, exponent = np.frexp(x)  # x = m * 2**exponent, 0.5 <= m < 1
    return np.maximum(float(info.eps) * np.ldexp(1.0, exponent - 1), smallest)


def assert_matches_float32(
    got: np.ndarray, want: np.ndarray, dtype: object, scale: object, err_msg: str = ""
) -> None:
    """``got`` (a kernel's output stored in ``dtype``, upcast) is NumPy's float32 ``want``.

    Allowed: one ulp of ``dtype`` at ``|want|`` (``got`` is one of the two grid points around
    ``want``: round-to-nearest, as a GPU's ``cvt.rn`` stores, and truncation both qualify), plus
    the float32 rounding budget ``tolerance(float32)`` at ``max(|want|, scale)``, ``scale`` being
    the magnitude the value was computed from (the value before the step; an array or a number).

    The kernels round to nearest even on a store (a GPU's ``cvt.rn``; the interpreter's bf16
    casts through optgen_runtime.triton_compat since 2026-12-07: Triton 3.8's truncated, about
    half of all bf16 weights 1 ulp below round-to-nearest), so a result a half-ulp from a grid
    point may fall either way after the float32 budget: one ulp covers it. For float32 outputs
    it is the last rounding.
    """
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        slack = tolerance(np.float32)["rtol"] * np.maximum(np.abs(want), np.abs(scale))
        error = np.abs(got - want)
        ok = (error < ulp(want, dtype) + slack) | (got == want)  # ==: infinities
    bad = ~(ok | (np.isnan(got) & np.isnan(want)))
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise AssertionError(
            f"{err_msg}: {int(bad.sum())} of {bad.size} elements differ from the float32 result "
            f"by more than 1 ulp of {dtype}; first at [{i}]: got {got.flat[i]!r}, float32 "
            f"{want.flat[i]!r}, 1 ulp = {float(ulp(want.flat[i], dtype))!r}"
        )


def input_names(source: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(per-element inputs, scalar inputs) a rule's step takes besides the gradient, from a
    generated module (``INPUTS``, ``STEP_SCALARS``) or a spec's Rule."""
    if hasattr(source, "INPUTS"):
        return tuple(source.INPUTS), tuple(source.STEP_SCALARS)
    return tuple(source.inputs), tuple(source.scalars)


def states_present(module: Any) -> dict[str, float]:
    """Hyperparameters under which every state of ``module``'s rule exists: a state absent at
    some value (``absent_when``: torch_sgd's momentum buffer at momentum=0) is neither read nor
    checked there, so a test of bad states sets that value plus 0.5 (a flag: the other value,
    torch_adam's amsgrad)."""
    rules = importlib.import_module(f"generated.rules.{module.RULE}")
    flags = {h for h, v in rules.HYPERPARAMS.items() if isinstance(v, bool)}
    return {
        h: (not v) if h in flags else v + 0.5
        for when in rules.ABSENT.values()
        for h, v in when.items()
    }


def step_inputs(source: Any, like: Any, t: int, seed: int = 0) -> dict[str, Any]:
    """The keyword inputs of step ``t`` (per-element inputs shaped like ``like``, scalar
    inputs), drawn from (seed, t, name) alone: every side of a comparison (NumPy, Triton, the
    40-digit equations, a torch class) feeds the same data without passing it around. Arrays
    take ``like``'s type (NumPy array or torch tensor), dtype and device; {} for most rules."""
    arrays, scalars = input_names(source)
    out: dict[str, Any] = {}
    for name in (*arrays, *scalars):
        rng = np.random.default_rng([seed, t, zlib.crc32(name.encode())])
        if name in scalars:
            out[name] = float(rng.uniform(0.5, 2.0))
            continue
        x = rng.standard_normal(tuple(like.shape))
        if isinstance(like, np.ndarray):
            out[name] = x.astype(like.dtype)
        else:
            import torch

            out[name] = torch.from_numpy(x).to(device=like.device, dtype=like.dtype)
    return out


def class_inputs(opt: Any, t: int = 1) -> dict[str, Any]:
    """A torch class's ``step()`` inputs besides the gradients: per-element inputs as a list,
    one tensor per parameter in param_groups order (parameter i's as ``step_inputs`` draws with
    seed i), scalar inputs as numbers; {} for most rules (and for a torch.optim optimizer)."""
    if not hasattr(opt, "META"):
        return {}
    params = [p for group in opt.param_groups for p in group["params"]]
    each = [step_inputs(opt.META, p.detach(), t, seed=i) for i, p in enumerate(params)]
    out: dict[str, Any] = {k: [e[k] for e in each] for k in opt.META.INPUTS}
    if opt.META.STEP_SCALARS and params:
        out.update({k: each[0][k] for k in opt.META.STEP_SCALARS})
    return out


@pytest.fixture(params=RULE_NAMES)
def rule_name(request: pytest.FixtureRequest) -> str:
    return request.param


@contextlib.contextmanager
def temporary_rule(root: Path, name: str, spec: str) -> Iterator[dict[str, ModuleType]]:
    """A spec written under ``root``, generated and importable as ``generated.<target>.<name>``
    while the context lasts; yields its {"rules", "numpy", "triton", "numba"} modules."""
    from codegen.generate import generate_all, write

    (root / "specs").mkdir(parents=True, exist_ok=True)
    (root / "specs" / f"{name}.py").write_text(spec)
    write(generate_all(root / "specs"), root / "out")
    targets = ("rules", "numpy", "triton", "numba")
    packages = [importlib.import_module(f"generated.{t}") for t in targets]
    for package, target in zip(packages, targets, strict=True):
        package.__path__.append(str(root / "out" / target))
    try:
        yield {t: importlib.import_module(f"generated.{t}.{name}") for t in targets}
    finally:
        for package, target in zip(packages, targets, strict=True):
            package.__path__.remove(str(root / "out" / target))
            sys.modules.pop(f"generated.{target}.{name}", None)
