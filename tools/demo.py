"""A short demo: every generated rule, NumPy and Triton, on a small built-in least-squares problem.

    python -m tools.demo            # every rule (Triton in its CPU interpreter)
    python -m tools.demo adam lion  # named rules only

Minimises f(w) = |A w - b|^2 / 2 for a fixed random A (4n x n, n = 257 float32 parameters, the
Hessian A^T A has its eigenvalues in about [2.5, 22.5]) and b = A w_true, so the minimum is 0,
from a fixed random start, with STEPS steps of each rule. Every rule runs with its module's
default hyperparameters, except a larger rate (LR) where the default is too small to show
progress in STEPS steps, and momentum (MOMENTUM) where the default 0 would make the rule plain
SGD; rules not named there (new ones) run with their defaults. Prints the loss before and after
with the NumPy module and with the Triton kernel, and the largest difference between the two
final weights. Rules are discovered from generated.numpy.RULES and generated.triton.RULES.
"""

from __future__ import annotations

import argparse
import importlib
import os
import time
from collections.abc import Callable

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton import: CPU tensors work

import numpy as np
import torch

STEPS = 50
N, M = 257, 4 * 257  # an odd size: the Triton kernel's last block is partly masked

# Rates that show progress in STEPS steps on this problem, by rule family; rules not named here
# run at their default rate.
LR: dict[str, float] = {
    **dict.fromkeys(["adam", "adamw", "amsgrad", "adamax", "nadam", "radam", "adabelief"], 0.1),
    "lamb": 0.1,
    **dict.fromkeys(["rmsprop", "signsgd", "signum", "lion"], 0.1),
    "rmsprop_centered": 0.01,
    **dict.fromkeys(["adagrad", "ftrl"], 1.0),
    "ftml": 0.3,
    "lars": 10.0,  # the trust ratio (eta = 0.001) scales the rate down
}
# Momentum rules whose default momentum is 0 (plain SGD): run them with momentum.
MOMENTUM: dict[str, float] = dict.fromkeys(["sgd_mom", "nag", "lars"], 0.9)


class Problem:
    """f(w) = |A w - b|^2 / 2, its gradient A^T (A w - b), and a start point (fixed seed)."""

    def __init__(self, n: int = N, m: int = M, scale: float = 10.0) -> None:
        rng = np.random.default_rng(0)
        self.a = (rng.standard_normal((m, n)) * np.sqrt(scale / m)).astype(np.float32)
        self.b = self.a @ rng.standard_normal(n).astype(np.float32)
        self.w0 = rng.standard_normal(n).astype(np.float32)

    def loss(self, w: np.ndarray) -> float:
        r = self.a.astype(np.float64) @ w.astype(np.float64) - self.b
        return float(r @ r / 2)

    def grad(self, w: np.ndarray) -> np.ndarray:
        return self.a.T @ (self.a @ w - self.b)

    def inputs(self, module: object, w: np.ndarray) -> dict[str, object]:
        """A rule's step inputs besides the gradient: the Hessian diagonal (exact here:
        diag(A^T A), what a Hutchinson estimate averages to) and the loss."""
        known = {"hessian": lambda: (self.a * self.a).sum(axis=0), "loss": lambda: self.loss(w)}
        names = (*module.INPUTS, *module.STEP_SCALARS)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"the demo has no value for the input(s) {', '.join(unknown)}")
        return {n: known[n]() for n in names}


def hyperparams(rule: str, defaults: dict[str, object]) -> dict[str, float]:
    """The demo's overrides for ``rule``, restricted to what its module takes."""
    hp = {"lr": LR.get(rule), "momentum": MOMENTUM.get(rule)}
    return {k: v for k, v in hp.items() if v is not None and k in defaults}


def run_numpy(rule: str, problem: Problem) -> np.ndarray:
    module = importlib.import_module(f"generated.numpy.{rule}")
    hp = hyperparams(rule, module.HYPERPARAMS)
    w = problem.w0.copy()
    state = module.init_state(w)
    for t in range(1, STEPS + 1):
        module.step(w, problem.grad(w), state, t, **hp, **problem.inputs(module, w))
    return w


def run_triton(rule: str, problem: Problem) -> np.ndarray:
    module = importlib.import_module(f"generated.triton.{rule}")
    hp = hyperparams(rule, module.HYPERPARAMS)
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    device = "cuda" if torch.cuda.is_available() and not interpret else "cpu"
    w = torch.tensor(problem.w0, device=device)
    state = module.init_state(w)
    for t in range(1, STEPS + 1):
        grad = torch.from_numpy(problem.grad(w.cpu().numpy())).to(device)
        extra = {
            k: torch.from_numpy(v).to(device) if isinstance(v, np.ndarray) else v
            for k, v in problem.inputs(module, w.cpu().numpy()).items()
        }
        module.step(w, grad, state, t, **hp, **extra)
    return w.cpu().numpy()


def generated_rules() -> dict[str, tuple[str, ...]]:
    """The rules generated for each target (the package indexes list every spec)."""
    from generated.numpy import RULES as NUMPY_RULES
    from generated.triton import RULES as TRITON_RULES

    return {"numpy": tuple(NUMPY_RULES), "triton": tuple(TRITON_RULES)}


def attempt(fn: Callable[[], np.ndarray]) -> np.ndarray | str:
    try:
        return fn()
    except Exception as error:  # a demo reports a broken rule and goes on
        return f"{type(error).__name__}: {error}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("rules", nargs="*", help="rule names (default: every generated rule)")
    args = parser.parse_args(argv)
    known = generated_rules()
    every = sorted(set(known["numpy"]) | set(known["triton"]))
    unknown = [r for r in args.rules if r not in every]
    if unknown:
        parser.error(f"no generated rule named {', '.join(unknown)} (rules: {', '.join(every)})")
    runners = {"numpy": run_numpy, "triton": run_triton}

    problem = Problem()
    start_loss = problem.loss(problem.w0)
    mode = "interpreter" if os.environ.get("TRITON_INTERPRET") == "1" else "compiled"
    print(
        f"least squares |Aw - b|^2 / 2: {problem.w0.size} float32 parameters, {STEPS} steps per "
        f"rule, Triton: {mode}"
    )
    print("lr: the rate used (* = the demo's, not the default; - = the rule has none)")
    print(", ".join(f"{rule}: momentum {mu}" for rule, mu in MOMENTUM.items()))
    header = (
        f"{'rule':17s} {'loss start':>10s} {'NumPy end':>10s} {'Triton end':>10s} "
        f"{'max|NumPy-Triton|':>17s} {'lr':>7s} {'time':>5s}"
    )
    print(header)
    print("-" * len(header))
    failures = []
    total = time.perf_counter()
    for rule in args.rules or every:
        begin = time.perf_counter()
        results: dict[str, np.ndarray | str] = {}
        for target, run in runners.items():
            if rule in known[target]:
                results[target] = attempt(lambda run=run, rule=rule: run(rule, problem))
            else:
                results[target] = f"not generated for {target}"
        ends = {
            t: f"{problem.loss(w):10.4g}" if isinstance(w, np.ndarray) else f"{'-':>10s}"
            for t, w in results.items()
        }
        w_np, w_tr = results["numpy"], results["triton"]
        both = isinstance(w_np, np.ndarray) and isinstance(w_tr, np.ndarray)
        diff = f"{float(np.max(np.abs(w_np - w_tr))):17.2e}" if both else f"{'-':>17s}"
        target = "numpy" if rule in known["numpy"] else "triton"
        lr = importlib.import_module(f"generated.{target}.{rule}").HYPERPARAMS.get("lr")
        lr_text = "-" if lr is None else f"{LR.get(rule, lr):g}" + ("*" if rule in LR else "")
        print(
            f"{rule:17s} {start_loss:10.4g} {ends['numpy']} {ends['triton']} {diff} "
            f"{lr_text:>7s} {time.perf_counter() - begin:4.1f}s"
        )
        for target, w in results.items():
            if isinstance(w, str) and not w.startswith("not generated"):
                failures.append(f"{rule} ({target}): {w}")
    print(f"total {time.perf_counter() - total:.1f} s")
    from generated.numpy import MATRIX_RULES

    if MATRIX_RULES and not args.rules:  # said, not silently left out
        print(
            f"not on this vector problem: {', '.join(MATRIX_RULES)} (matrix rules, 2-D weights "
            "only; tests/test_matrix_rules.py and their own tests run them)"
        )
    for failure in failures:
        print(f"error: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
