"""Every rule's path on three 2-D test functions, drawn from the generated NumPy modules:
``python -m tools.trajectories`` writes docs/trajectories/<rule>.gif (one animated GIF per rule,
the three functions side by side) and compare_<function>.png (every rule on one function).

The pictures are products of the code: regenerate them, never edit them. Deterministic: fixed
starts, float64 weights, SGLD's noise from its seed, the learning rate of each rule and function
chosen by the same rule every time (the grid value with the lowest mean log excess loss over the
``STEPS`` steps: fast and steady beats a lucky last step; the rule's other hyperparameters at
their defaults).
"""

from __future__ import annotations

import argparse
import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "trajectories"
STEPS = 120
FRAMES = 12  # GIF frames: the path after every STEPS / FRAMES steps
COLOURS = 16  # palette size of the pictures (small files)
LR_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


@dataclass(frozen=True)
class Function:
    name: str
    title: str
    start: tuple[float, float]
    box: tuple[float, float, float, float]  # x0, x1, y0, y1 of the picture
    minimum: tuple[float, float] | None
    lowest: float  # the function's minimum value (the saddle's is -1)

    def value(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.name == "quadratic":  # condition number 25
            return 0.5 * (x**2 + 25.0 * y**2)
        if self.name == "rosenbrock":
            return (1.0 - x) ** 2 + 100.0 * (y - x**2) ** 2
        return x**2 - y**2 + 0.25 * y**4  # saddle at 0, minima at (0, +-sqrt(2))

    def grad(self, w: np.ndarray) -> np.ndarray:
        x, y = w
        if self.name == "quadratic":
            return np.array([x, 25.0 * y])
        if self.name == "rosenbrock":
            return np.array([-2.0 * (1.0 - x) - 400.0 * x * (y - x**2), 200.0 * (y - x**2)])
        return np.array([2.0 * x, -2.0 * y + y**3])

    def hessian_diagonal(self, w: np.ndarray) -> np.ndarray:
        """The exact diagonal (AdaHessian's input; its Hutchinson estimate on a 2-D problem)."""
        x, y = w
        if self.name == "quadratic":
            return np.array([1.0, 25.0])
        if self.name == "rosenbrock":
            return np.array([2.0 - 400.0 * (y - x**2) + 800.0 * x**2, 200.0])
        return np.array([2.0, -2.0 + 3.0 * y**2])


FUNCTIONS = (
    Function(
        "quadratic", "ill-conditioned quadratic", (-4.0, 1.5), (-4.5, 1.5, -2.0, 2.0), (0, 0), 0.0
    ),
    Function("rosenbrock", "Rosenbrock", (-1.5, 2.0), (-2.0, 1.6, -0.8, 3.0), (1, 1), 0.0),
    Function("saddle", "saddle", (-2.0, 0.01), (-2.5, 1.0, -2.0, 2.0), (0, math.sqrt(2)), -1.0),
)


def rules() -> list[str]:
    """Every generated NumPy module (per-element and matrix rules alike), but the variants a
    rule runs at some of its hyperparameters' values (``SPECIAL``, ``WITHOUT``: its own module
    runs them, and its picture shows them)."""
    names = sorted(p.stem for p in (ROOT / "generated" / "numpy").glob("*.py") if p.stem[0] != "_")
    metas = [importlib.import_module(f"generated.rules.{n}") for n in names]
    variants = {v for meta in metas for v in [*meta.SPECIAL, *meta.WITHOUT.values()]}
    return [n for n in names if n not in variants]


def run(rule: str, fn: Function, lr: float | None, steps: int = STEPS) -> np.ndarray:
    """The path (steps + 1, 2) of ``rule`` from ``fn.start``; NaN from the first non-finite
    point on. A matrix rule (it needs a 2-D weight) runs on the point as a 1 x 2 matrix; a rule
    with a Hessian input gets the exact diagonal, a scalar ``loss`` input the function's value."""
    module = importlib.import_module(f"generated.numpy.{rule}")
    meta = importlib.import_module(f"generated.rules.{rule}")
    hp: dict[str, Any] = {} if lr is None else {"lr": lr}
    shape = (1, 2) if getattr(meta, "MATRIX_VALUES", ()) else (2,)
    w = np.array(fn.start, dtype=np.float64).reshape(shape)
    state = module.init_state(w)
    path = np.full((steps + 1, 2), np.nan)
    path[0] = fn.start
    for t in range(1, steps + 1):
        flat = w.reshape(2)
        extra: dict[str, Any] = {}
        for name in meta.INPUTS:
            if name != "hessian":
                raise NotImplementedError(f"{rule}: no value for the input {name!r}")
            extra[name] = fn.hessian_diagonal(flat).reshape(shape)
        for name in meta.STEP_SCALARS:
            if name != "loss":
                raise NotImplementedError(f"{rule}: no value for the scalar input {name!r}")
            extra[name] = float(fn.value(*flat))
        with np.errstate(all="ignore"):
            module.step(w, fn.grad(flat).reshape(shape), state, t, **extra, **hp)
        if not np.all(np.isfinite(w)) or np.abs(w).max() > 1e3:
            break
        path[t] = w.reshape(2)
    return path


def score(fn: Function, path: np.ndarray) -> float:
    """Mean of log10(f - min + 1e-12) along the path; inf when it left the finite box."""
    if not np.all(np.isfinite(path)):
        return math.inf
    excess = fn.value(path[:, 0], path[:, 1]) - fn.lowest
    return float(np.mean(np.log10(np.maximum(excess, 0.0) + 1e-12)))


def best(rule: str, fn: Function) -> tuple[float | None, np.ndarray]:
    """The learning rate from LR_GRID with the lowest :func:`score` (ties: the smaller rate),
    and its path; a rule without ``lr`` runs at its defaults."""
    meta = importlib.import_module(f"generated.rules.{rule}")
    if "lr" not in meta.HYPERPARAMS:
        return None, run(rule, fn, None)
    scored = []
    for lr in LR_GRID:
        if not meta.LEGAL["lr"].contains(lr):
            continue
        path = run(rule, fn, lr)
        scored.append((score(fn, path), lr, path))
    _, lr, path = min(scored, key=lambda s: (s[0], s[1]))
    return lr, path


def _contours(ax: Any, fn: Function) -> None:
    x0, x1, y0, y1 = fn.box
    x, y = np.meshgrid(np.linspace(x0, x1, 120), np.linspace(y0, y1, 120))
    z = fn.value(x, y)
    levels = np.quantile(z, np.linspace(0.0, 0.95, 14) ** 2)
    ax.contour(x, y, z, levels=np.unique(levels), colors="0.75", linewidths=0.6)
    if fn.minimum:
        ax.plot(*fn.minimum, marker="*", color="0.3", markersize=7, linestyle="none")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xticks([])
    ax.set_yticks([])


def _setup() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "optgen"
    import matplotlib.pyplot as plt

    return plt


def gif(rule: str, paths: dict[str, tuple[float | None, np.ndarray]], out: Path) -> Path:
    """One animated GIF: the three functions side by side, the path growing."""
    plt = _setup()
    from PIL import Image

    fig, axes = plt.subplots(1, len(FUNCTIONS), figsize=(7.2, 2.4), dpi=64)
    lines = []
    for ax, fn in zip(axes, FUNCTIONS, strict=True):
        _contours(ax, fn)
        lr, _ = paths[fn.name]
        ax.set_title(f"{fn.title}" + (f", lr {lr:g}" if lr is not None else ""), fontsize=8)
        (line,) = ax.plot([], [], "-", color="tab:red", linewidth=1.4)
        (dot,) = ax.plot([], [], "o", color="tab:red", markersize=3)
        lines.append((line, dot, paths[fn.name][1]))
    fig.suptitle(rule, fontsize=9, y=0.99)
    fig.tight_layout(pad=0.3)
    frames = []
    for k in range(FRAMES + 1):
        upto = round(k * STEPS / FRAMES) + 1
        for line, dot, path in lines:
            seen = path[:upto]
            line.set_data(seen[:, 0], seen[:, 1])
            finite = seen[np.all(np.isfinite(seen), axis=1)]
            dot.set_data(finite[-1:, 0], finite[-1:, 1])
        fig.canvas.draw()
        rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
        frames.append(
            Image.fromarray(rgb).quantize(colors=COLOURS, method=Image.Quantize.MEDIANCUT)
        )
    plt.close(fig)
    out.parent.mkdir(parents=True, exist_ok=True)
    durations = [150] * FRAMES + [1500]  # hold the last frame
    frames[0].save(
        out, save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=True
    )
    return out


def compare(fn: Function, paths: dict[str, tuple[float | None, np.ndarray]], out: Path) -> Path:
    """Every rule's whole path on ``fn``, one small panel each."""
    plt = _setup()
    names = sorted(paths)
    cols = 6
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.5, rows * 1.35), dpi=64)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names, strict=False):
        _contours(ax, fn)
        lr, path = paths[name]
        ax.plot(path[:, 0], path[:, 1], "-", color="tab:red", linewidth=1.0)
        ax.set_title(name + (f" ({lr:g})" if lr is not None else ""), fontsize=7, pad=2)
    fig.suptitle(f"{fn.title}: {STEPS} steps from {fn.start}, best lr of the grid", fontsize=9)
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 0.96))
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    plt.close(fig)
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(rgb).quantize(colors=COLOURS, method=Image.Quantize.MEDIANCUT)
    image.save(out, optimize=True)  # a palette PNG: a fraction of the RGB one's bytes
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.trajectories", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "rules", nargs="*", help="only these rules' GIFs (default: every rule, and the comparisons)"
    )
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder ({OUT})")
    args = parser.parse_args(argv)
    names = args.rules or rules()
    unknown = set(names) - set(rules())
    if unknown:
        parser.error(f"no generated module for {', '.join(sorted(unknown))}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out}: not a directory")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / ".write_test").touch()
        (args.out / ".write_test").unlink()
    except OSError as error:
        parser.error(f"--out {args.out}: cannot write there ({error.strerror or error})")
    by_fn: dict[str, dict[str, tuple[float | None, np.ndarray]]] = {f.name: {} for f in FUNCTIONS}
    for rule in names:
        paths = {fn.name: best(rule, fn) for fn in FUNCTIONS}
        for fn_name, result in paths.items():
            by_fn[fn_name][rule] = result
        path = gif(rule, paths, args.out / f"{rule}.gif")
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    if not args.rules:  # the comparisons show every rule: only a full run rewrites them
        for fn in FUNCTIONS:
            path = compare(fn, by_fn[fn.name], args.out / f"compare_{fn.name}.png")
            print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
