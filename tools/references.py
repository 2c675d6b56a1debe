"""Generated rules against independent reference optimizers, side by side: one table entry a rule.

python -m tools.references            # the report: rule | spec lines | reference | errors
python -m tools.references adan       # some rules only

Each entry (:data:`REFERENCES`) names a rule, the reference optimizer (a pytorch-optimizer 4.1.0
class, pinned as a dev dependency, or a torch.optim one), how our hyperparameters map to its
keyword arguments, and the settings to run (ours; ``{}`` is the defaults). :func:`compare` runs
the reference and our rule for :data:`STEPS` steps on the same weights and the same seeded random
gradients, through the NumPy module (``init_state``/``step``) and through the torch class (CPU
tensors), in float32 and float64, on a 1-D and a 2-D weight, and returns the largest relative
error of the final weights, max|ours - theirs| / max|theirs| (max-norm), and how far the weights
moved (relative to their size) so that a bound far below the movement means the updates agree.
``tests/test_references.py`` asserts the bounds (:data:`BOUNDS`) for every entry and setting.

A reference that needs more than ``p.grad`` (a Hessian, a closure) gets a ``reference_step``
hook: it is called instead of setting the gradients and calling ``step()``.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import io
import os
import tokenize
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TRITON_INTERPRET", "1")  # the Triton column runs on CPU tensors

import torch

ROOT = Path(__file__).resolve().parent.parent
STEPS = 20
SHAPES: tuple[tuple[int, ...], ...] = ((37,), (6, 9))
DTYPES = (np.float32, np.float64)
# Relative error bounds per dtype (max-norm, relative to the weights' size): each step rounds
# the weight update in a different order from the reference (torch's lerp/addcdiv forms, host
# scalars folded differently), about an ulp of the weight per step, and the errors of the states
# feed later steps: 4 ulps of the weights per step, over STEPS steps. float32: 9.5e-6, float64:
# 1.8e-14 (measured for Adan and MADGRAD: 3e-7 and 1.2e-15, `python -m tools.references`). A rule
# whose reference rounds more may set its own (``Reference.bounds``).
ULPS_PER_STEP = 4
BOUNDS: dict[type, float] = {dt: ULPS_PER_STEP * float(np.finfo(dt).eps) * STEPS for dt in DTYPES}


def default_step(
    optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[np.ndarray], t: int
) -> None:
    """One reference step: the gradients as ``p.grad`` (fresh copies: references may write
    them, as MADGRAD's weight decay does), then ``step()``."""
    for p, g in zip(params, grads, strict=True):
        p.grad = torch.from_numpy(g.copy())
    optimizer.step()


@dataclass(frozen=True)
class Reference:
    """One rule against one reference optimizer."""

    rule: str
    name: str  # how the report names the reference
    factory: Callable[..., torch.optim.Optimizer]  # factory(params, **their_kwargs)
    # ours -> theirs; "betas[1]" is item 1 of the tuple keyword betas (as torch_equivalent)
    mapping: dict[str, str]
    settings: tuple[dict[str, Any], ...] = ({},)  # our hyperparameters; {} = our defaults
    fixed: dict[str, Any] = field(default_factory=dict)  # their keywords, always passed
    reference_step: Callable[..., None] = default_step  # the hook for extra inputs
    bounds: dict[type, float] = field(default_factory=lambda: dict(BOUNDS))  # per dtype

    def kwargs(self, hp: dict[str, Any]) -> dict[str, Any]:
        """The reference's keyword arguments for our (complete) hyperparameters ``hp``."""
        out: dict[str, Any] = dict(self.fixed)
        tuples: dict[str, dict[int, Any]] = {}
        for ours, theirs in self.mapping.items():
            if "[" in theirs:
                key, index = theirs[:-1].split("[")
                tuples.setdefault(key, {})[int(index)] = hp[ours]
            else:
                out[theirs] = hp[ours]
        for key, items in tuples.items():
            out[key] = tuple(items[i] for i in range(len(items)))
        return out


def _pytorch_optimizer(name: str) -> Callable[..., torch.optim.Optimizer]:
    def factory(params: list[torch.Tensor], **kwargs: Any) -> torch.optim.Optimizer:
        import pytorch_optimizer

        return getattr(pytorch_optimizer, name)(params, **kwargs)

    return factory


def _torch_optim(name: str) -> Callable[..., torch.optim.Optimizer]:
    """A torch.optim class as a factory (Adafactor, say): ``_torch_optim("Adafactor")``."""

    def factory(params: list[torch.Tensor], **kwargs: Any) -> torch.optim.Optimizer:
        return getattr(torch.optim, name)(params, **kwargs)

    return factory


ADAN = {
    "lr": "lr",
    "beta1": "betas[0]",
    "beta2": "betas[1]",
    "beta3": "betas[2]",
    "wd": "weight_decay",
    "weight_decouple": "weight_decouple",
    "epsilon": "eps",
}
MADGRAD = {
    "lr": "lr",
    "momentum": "momentum",
    "wd": "weight_decay",
    "weight_decouple": "weight_decouple",
    "epsilon": "eps",
}

REFERENCES: tuple[Reference, ...] = (
    Reference(
        "adan",
        "pytorch_optimizer.Adan",
        _pytorch_optimizer("Adan"),
        ADAN,
        (
            {},
            {"lr": 0.01, "wd": 0.05},  # the paper's decay: divide by 1 + lr * wd
            {"lr": 0.01, "wd": 0.05, "weight_decouple": True},
            {"beta1": 0.9, "beta2": 0.8, "beta3": 0.95, "epsilon": 1e-3},
        ),
    ),
    Reference(
        "madgrad",
        "pytorch_optimizer.MADGRAD",
        _pytorch_optimizer("MADGRAD"),
        MADGRAD,
        (
            {},
            {"momentum": 0.0},  # x0 recovered from the weight each step
            {"lr": 0.01, "wd": 0.05},
            {"lr": 0.01, "wd": 0.05, "weight_decouple": True},
            {"lr": 0.01, "wd": 0.05, "weight_decouple": True, "momentum": 0.0},
            {"momentum": 0.5, "epsilon": 1e-3},
        ),
    ),
)
BY_RULE: dict[str, Reference] = {r.rule: r for r in REFERENCES}


@dataclass(frozen=True)
class Result:
    """Largest relative errors (max-norm) of the final weights, and how far they moved."""

    numpy: float  # the NumPy module against the reference
    torch_class: float  # the torch class (CPU tensors) against the reference
    moved: float  # max|w_T - w_0| / max|w_0| of the reference


def _rel(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def data(shape: tuple[int, ...], dtype: type, seed: int = 0) -> tuple[np.ndarray, list]:
    """The initial weight and STEPS gradients, from a seeded generator."""
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal(shape).astype(dtype)
    return w0, [rng.standard_normal(shape).astype(dtype) for _ in range(STEPS)]


def compare(
    entry: Reference, setting: dict[str, Any], shape: tuple[int, ...], dtype: type
) -> Result:
    """Our rule and the reference on the same data, ``STEPS`` steps from the same weight."""
    from generated.torch import RULES as CLASSES

    module = importlib.import_module(f"generated.numpy.{entry.rule}")
    unknown = set(setting) - set(module.HYPERPARAMS)
    if unknown:
        raise KeyError(f"{entry.rule}: setting {setting} names unknown {sorted(unknown)}")
    hp = {**module.HYPERPARAMS, **setting}
    w0, grads = data(shape, dtype)

    theirs = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    optimizer = entry.factory([theirs], **entry.kwargs(hp))
    for t, g in enumerate(grads, start=1):
        entry.reference_step(optimizer, [theirs], [g], t)
    reference = theirs.detach().numpy()

    w = w0.copy()
    state = module.init_state(w, **hp)
    for t, g in enumerate(grads, start=1):
        module.step(w, g.copy(), state, t, **hp)

    param = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    cls = CLASSES[entry.rule]([param], **setting)
    for g in grads:
        param.grad = torch.from_numpy(g.copy())
        cls.step()

    moved = _rel(reference, w0) if np.any(w0) else float("nan")
    return Result(_rel(w, reference), _rel(param.detach().numpy(), reference), moved)


def triton_vs_numpy(rule: str, setting: dict[str, Any], shape: tuple[int, ...]) -> float:
    """The Triton kernel (float32, Triton's interpreter on CPU unless TRITON_INTERPRET=0) against
    the NumPy module in float32, same data: the largest relative error (max-norm)."""
    numpy_module = importlib.import_module(f"generated.numpy.{rule}")
    triton_module = importlib.import_module(f"generated.triton.{rule}")
    hp = {**numpy_module.HYPERPARAMS, **setting}
    w0, grads = data(shape, np.float32)
    w = w0.copy()
    state = numpy_module.init_state(w, **hp)
    tw = torch.from_numpy(w0.copy())
    tstate = triton_module.init_state(tw, **hp)
    for t, g in enumerate(grads, start=1):
        numpy_module.step(w, g.copy(), state, t, **hp)
        triton_module.step(tw, torch.from_numpy(g.copy()), tstate, t, **hp)
    return _rel(tw.numpy(), w)


def spec_lines(rule: str) -> int:
    """Lines of code in specs/<rule>.py: not blank, not comments, not the docstring."""
    source = (ROOT / "specs" / f"{rule}.py").read_text()
    code: set[int] = set()
    first = True
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.STRING and first:
            first = False  # the module docstring
            continue
        if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.ENDMARKER):
            continue
        if tok.type not in (tokenize.INDENT, tokenize.DEDENT):
            first = False
            code.update(range(tok.start[0], tok.end[0] + 1))
    return len(code)


def report(rules: list[str]) -> list[dict[str, Any]]:
    """One row per rule: the worst error over its settings and shapes, per dtype and path."""
    rows = []
    for rule in rules:
        entry = BY_RULE[rule]
        row: dict[str, Any] = {"rule": rule, "spec_lines": spec_lines(rule), "ref": entry.name}
        for dtype in DTYPES:
            results = [compare(entry, s, shape, dtype) for s in entry.settings for shape in SHAPES]
            key = np.dtype(dtype).name
            row[key] = max(max(r.numpy, r.torch_class) for r in results)
            row[f"{key}_moved"] = min(r.moved for r in results)
        row["triton"] = max(triton_vs_numpy(rule, s, SHAPES[0]) for s in entry.settings)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.references", description=__doc__)
    parser.add_argument("rules", nargs="*", help="rules (default: every entry)")
    args = parser.parse_args(argv)
    for rule in args.rules:
        if rule in BY_RULE:
            continue
        from generated.rules import MATRIX_RULES, RULES

        entries = f"this tool's entries: {', '.join(BY_RULE)}"
        if rule in RULES or rule in MATRIX_RULES:
            parser.error(
                f"{rule} has no entry here (its tests check it against torch.optim or MXNet's "
                f"goldens); {entries}"
            )
        close = difflib.get_close_matches(rule.lower(), [*RULES, *MATRIX_RULES], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        parser.error(f"no rule named {rule!r}{hint}; {entries}")
    rows = report(args.rules or list(BY_RULE))
    print(
        f"{STEPS} steps, shapes {list(SHAPES)}, every setting of the entry; max relative error "
        "(max-norm) of the final weights, NumPy module and torch class (CPU); bounds "
        f"float32 {BOUNDS[np.float32]:.2g}, float64 {BOUNDS[np.float64]:.2g}; 'moved': the "
        "smallest max|w_T - w_0| / max|w_0| over the settings; Triton: float32 kernel vs NumPy"
    )
    print(
        f"{'rule':10s} {'spec lines':>10s}  {'reference':28s} {'f32':>9s} {'f64':>9s} "
        f"{'moved':>7s} {'Triton':>9s}"
    )
    for r in rows:
        print(
            f"{r['rule']:10s} {r['spec_lines']:10d}  {r['ref']:28s} {r['float32']:9.2e} "
            f"{r['float64']:9.2e} {r['float64_moved']:7.3f} {r['triton']:9.2e}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
