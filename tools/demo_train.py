"""Train a small network with several generated optimizers side by side (CPU, < 1 minute).

``python -m tools.demo_train``: a 2-layer MLP learns a built-in synthetic regression task
(y = sin(x . a) + 0.5 cos(x . b), fixed seed, no downloads) with mini-batches, each optimizer
from the same initial weights, on the CPU (the generated NumPy reference path on zero-copy views
of the parameters). Prints progress (a bar on a terminal; in a log, one line per optimizer and
quarter of the epochs, no carriage returns) and the loss table per optimizer.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from generated.torch import RULES
from tools.cli import positive_int

# (label, rule, hyperparameters): rates picked for this task, everything else at the defaults.
OPTIMIZERS = [
    ("SGD momentum", "sgd_mom", {"lr": 0.05, "momentum": 0.9}),
    ("NAG", "nag", {"lr": 0.05, "momentum": 0.9}),
    ("Adam", "adam", {"lr": 0.003}),
    ("AdamW", "adamw", {"lr": 0.003, "wd": 0.01}),
    ("RMSprop", "rmsprop", {"lr": 0.001}),
    ("Adagrad", "adagrad", {"lr": 0.05}),
    ("Lion", "lion", {"lr": 0.0003}),
    ("LAMB", "lamb", {"lr": 0.01}),
]


def task(n: int = 2048, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=gen)
    a, b = torch.randn(dim, generator=gen) / 4, torch.randn(dim, generator=gen) / 4
    y = torch.sin(x @ a) + 0.5 * torch.cos(x @ b)
    return x, y.unsqueeze(1)


def model() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))


def bar(done: int, total: int, label: str, loss: float) -> None:
    if not sys.stdout.isatty():  # a log: whole lines, at each quarter of the run
        if done == total or done % max(1, total // 4) == 0:
            print(f"  {label:14s} epoch {done:3d}/{total}  loss {loss:.4f}", flush=True)
        return
    width = 30
    filled = width * done // total
    sys.stdout.write(f"\r  {label:14s} [{'#' * filled}{'.' * (width - filled)}] {done:3d}/{total}"
                     f"  loss {loss:.4f}")  # fmt: skip
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.demo_train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--epochs", type=positive_int, default=20, help="passes over the data (20)")
    parser.add_argument("--batch", type=positive_int, default=64, help="mini-batch size (64)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the optimizers' NumPy path runs its own threads
    x, y = task()
    batches = [(x[i : i + args.batch], y[i : i + args.batch]) for i in range(0, len(x), args.batch)]
    print(f"MLP 16-64-1 on {len(x)} synthetic samples, {args.epochs} epochs of "
          f"{len(batches)} mini-batches; generated optimizers on the CPU")  # fmt: skip
    table = []
    for label, rule, hp in OPTIMIZERS:
        if rule not in RULES:
            continue
        net = model()
        opt = RULES[rule](net.parameters(), **hp)
        start = time.perf_counter()
        epoch_losses = []
        for epoch in range(args.epochs):
            total = 0.0
            for xb, yb in batches:
                opt.zero_grad()
                loss = (net(xb) - yb).pow(2).mean()
                loss.backward()
                opt.step()
                total += loss.item()
            epoch_losses.append(total / len(batches))
            bar(epoch + 1, args.epochs, label, epoch_losses[-1])
        if sys.stdout.isatty():
            print()  # end the bar's line
        with torch.no_grad():
            final = (net(x) - y).pow(2).mean().item()
        table.append((label, epoch_losses[0], epoch_losses[len(epoch_losses) // 2], final,
                      time.perf_counter() - start))  # fmt: skip
    print(f"\n{'optimizer':14s} {'epoch 1':>9s} {'midway':>9s} {'final':>9s} {'time':>7s}")
    for label, first, mid, final, seconds in table:
        print(f"{label:14s} {first:9.4f} {mid:9.4f} {final:9.4f} {seconds:6.1f}s")
    print(
        "\nepoch 1, midway: mean squared error over that epoch's mini-batches (midway: epoch "
        f"{args.epochs // 2 + 1});\nfinal: over all {len(x)} samples after the last epoch; "
        "time: wall-clock seconds of the training loop"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
