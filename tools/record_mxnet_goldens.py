"""Record golden trajectories from the real ``mxnet==1.9.1`` package (the committed test oracle).

Runs only in a throwaway virtual environment (MXNet 1.9.1 needs ``numpy<2``), never in the
project's own environment:

    python3 -m venv /tmp/mxvenv
    /tmp/mxvenv/bin/pip install mxnet==1.9.1 numpy==1.23.5
    /tmp/mxvenv/bin/python tools/record_mxnet_goldens.py          # writes tests/goldens/mxnet/

For every case (tools/mxnet_cases.py) it creates ``mx.optimizer.create(name, **kwargs)``, one
float32 weight of 12 elements, and feeds fresh gradients (a new NDArray each step: AdaDelta
scales its gradient in place and LBSGD keeps the first one by reference) through
``create_state`` / ``update``. After every step it records the weight and every state buffer
under optgen's state names, plus what MXNet keeps outside the state: NAdam's schedule product
``opt.m_schedule`` (optgen's host state ``m_schedule``) and LBSGD's accumulated gradient
``opt.cumgrads`` (optgen's ``acc``). Inputs come from a NumPy generator seeded by the case's
name (adding a case changes no other case's data) and are stored in the file too, so the tests
replay exactly what MXNet saw. Some cases zero the whole gradient at given steps (division
guards of the per-tensor norms).

NAdam's file also holds ``shared_schedule``: two parameters updated alternately (each step
index 0, then index 1) by ONE optimizer, which shares its schedule product between them, and the
same inputs through one optimizer per parameter (optgen's per-parameter schedule).

``lazy_rows.json`` holds MXNet's updates of a dense 6 x 4 weight by row_sparse gradients: lazy
ones (``LAZY_CASES``: SGD, SGD with momentum, Adam, AdaGrad at wd = 0) and dense ones
(``DENSE_CASES``: SGD's and Adam's ``lazy_update=False``, the storage fallback of the rules
without a sparse kernel), each step's rows and values with the weight and state after it
(tests/test_lazy_rows.py).

Only this small JSON data is committed; the script uses only numpy and mxnet (and its cases,
tools/mxnet_cases.py, plain data).
"""

from __future__ import annotations

import json
import math
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

# run as a script too (the docstring's venv): the cases module is imported from the checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.mxnet_cases import (
    CASES,
    DENSE_CASES,
    EXTRA_HP,
    LAZY_CASES,
    LAZY_SHAPE,
    NADAM_SHARED,
    OPTIONS,
    RULES,
    Case,
)

try:
    import mxnet as mx
except ImportError:  # --help works without it; recording needs it (the docstring's venv)
    mx = None

OUT = Path(__file__).resolve().parent.parent / "tests" / "goldens" / "mxnet"
SIZE = 12


def flatten(state: Any) -> list[Any]:
    if state is None:
        return []
    if isinstance(state, (tuple, list)):
        return [x for s in state for x in flatten(s)]
    return [state]


def encode(values: np.ndarray) -> list[Any]:
    """float32 values as the shortest decimals that read back (via a double) to the same float32."""
    out: list[Any] = []
    for x in values.astype(np.float32).ravel():
        v = float(str(x))
        if not math.isfinite(v):
            out.append("nan" if math.isnan(v) else repr(v))
            continue
        if np.float32(v) != x:  # never seen; keep the exact double then
            v = float(x)
        out.append(v)
    return out


def gradients(rng: np.random.Generator, steps: int, zeros: bool) -> list[np.ndarray]:
    grads = []
    for _ in range(steps):
        g = (rng.standard_normal(SIZE) * 1.5).astype(np.float32)
        if zeros:
            g[rng.integers(0, SIZE, 2)] = 0.0  # exact zeros: sign(0), division guards
        grads.append(g)
    return grads


def hyperparams(rule: str, kwargs: dict[str, Any], opt: Any) -> dict[str, Any]:
    dropped = RULES[rule][2]
    hp = {("lr" if k == "learning_rate" else k): v for k, v in kwargs.items() if k not in dropped}
    hp.update(EXTRA_HP.get(rule, {}))
    if rule != "adadelta":
        hp.setdefault("lr", opt.lr)
    for key in ("wd", "rescale_grad", "clip_gradient"):
        hp.setdefault(key, {"wd": 0.0, "rescale_grad": 1.0, "clip_gradient": None}[key])
    return hp


def snapshot(rule: str, opt: Any, index: int, state: Any) -> dict[str, list[Any]]:
    """The state after an update, under optgen's names (buffers as float32, host states as is)."""
    buffers = flatten(state)
    names = RULES[rule][1] if buffers else ()  # no momentum buffer at momentum 0
    assert len(buffers) == len(names), (rule, len(buffers))
    out = {n: encode(b.asnumpy()) for n, b in zip(names, buffers, strict=True)}
    if rule == "nadam":
        out["m_schedule"] = [float(opt.m_schedule)]  # a Python float (double) in MXNet too
    if rule == "lbsgd":
        acc = opt.cumgrads[index]["cum_grad"]  # the int 0 after a completed macro-batch
        out["acc"] = encode(acc.asnumpy() if isinstance(acc, mx.nd.NDArray) else np.zeros(SIZE))
    return out


def record(case: Case) -> dict[str, Any]:
    rule, name, kwargs, steps, zero_steps, zero_weight0 = case
    mx_name = RULES[rule][0]
    rng = np.random.default_rng(zlib.crc32(f"{rule}/{name}".encode()))
    w0 = rng.standard_normal(SIZE).astype(np.float32)
    if zero_weight0:
        w0[:] = 0.0
    grads = gradients(rng, steps, zeros=rule != "adamax")
    for s in zero_steps:
        grads[s - 1][:] = 0.0
    opt = mx.optimizer.create(mx_name, **kwargs)
    weight = mx.nd.array(w0, dtype="float32")
    state = opt.create_state(0, weight)
    weights: list[list[Any]] = []
    states: dict[str, list[list[Any]]] = {}
    for g in grads:
        opt.update(0, weight, mx.nd.array(g.copy(), dtype="float32"), state)
        weights.append(encode(weight.asnumpy()))
        for n, values in snapshot(rule, opt, 0, state).items():
            states.setdefault(n, []).append(values)
    return {
        "name": name,
        "mxnet_optimizer": mx_name,
        "mxnet_kwargs": kwargs,
        "hyperparams": hyperparams(rule, kwargs, opt),
        "steps": steps,
        "weight0": encode(w0),
        "grads": [encode(g) for g in grads],
        "weights": weights,
        "states": states,
    }


def record_nadam_shared(steps: int = 10) -> dict[str, Any]:
    """Two parameters, each step update(0) then update(1): one optimizer, and one per parameter."""
    rng = np.random.default_rng(zlib.crc32(b"nadam/shared_schedule"))
    params = []
    for _ in range(2):
        w0 = rng.standard_normal(SIZE).astype(np.float32)
        params.append({"weight0": w0, "grads": gradients(rng, steps, zeros=True)})

    def run(shared: bool) -> list[dict[str, Any]]:
        opts = [mx.optimizer.create("nadam", **NADAM_SHARED) for _ in params]
        if shared:
            opts = [opts[0]] * len(params)
        weights = [mx.nd.array(p["weight0"], dtype="float32") for p in params]
        states = [o.create_state(i, w) for i, (o, w) in enumerate(zip(opts, weights, strict=True))]
        out: list[dict[str, Any]] = [{"weights": [], "states": {}} for _ in params]
        for t in range(steps):
            for i, p in enumerate(params):
                grad = mx.nd.array(p["grads"][t].copy(), dtype="float32")
                opts[i].update(i, weights[i], grad, states[i])
                out[i]["weights"].append(encode(weights[i].asnumpy()))
                for n, values in snapshot("nadam", opts[i], i, states[i]).items():
                    out[i]["states"].setdefault(n, []).append(values)
        return out

    kwargs = NADAM_SHARED
    return {
        "mxnet_kwargs": kwargs,
        "hyperparams": hyperparams("nadam", NADAM_SHARED, mx.optimizer.create("nadam", **kwargs)),
        "steps": steps,
        "call_order": "each step: update(0, ...) then update(1, ...)",
        "params": [{"weight0": encode(p["weight0"]), "grads": [encode(g) for g in p["grads"]]}
                   for p in params],
        "shared": run(shared=True),  # one optimizer for both parameters (1.9.1's Trainer)
        "separate": run(shared=False),  # one optimizer per parameter
    }  # fmt: skip


def record_lazy(case: Case, mode: str) -> dict[str, Any]:
    """One case's inputs and MXNet's weight and state after each step; ``mode``: "lazy" or
    "dense", what the case shows."""
    rule, name, kwargs, steps, _, _ = case
    mx_name = RULES[rule][0]
    rows_n, width = LAZY_SHAPE
    rng = np.random.default_rng(zlib.crc32(f"{rule}/{name}".encode()))
    w0 = rng.standard_normal(LAZY_SHAPE).astype(np.float32)
    opt = mx.optimizer.create(mx_name, **kwargs)
    weight = mx.nd.array(w0, dtype="float32")
    state = opt.create_state(0, weight)
    held: list[list[int]] = []
    values: list[list[Any]] = []
    weights: list[list[Any]] = []
    states: dict[str, list[list[Any]]] = {}
    for step in range(1, steps + 1):
        count = 0 if step == 3 else int(rng.integers(1, rows_n))
        rows = np.sort(rng.choice(rows_n, count, replace=False)).astype(np.int64)
        data = (rng.standard_normal((count, width)) * 1.5).astype(np.float32)
        grad = mx.nd.sparse.row_sparse_array((data, rows), shape=LAZY_SHAPE, dtype="float32")
        opt.update(0, weight, grad, state)
        held.append([int(r) for r in rows])
        values.append(encode(data))
        weights.append(encode(weight.asnumpy()))
        for n, b in zip(RULES[rule][1], flatten(state), strict=True):
            states.setdefault(n, []).append(encode(b.asnumpy()))
    hp = {k: v for k, v in kwargs.items() if k not in OPTIONS}
    return {
        "rule": rule,
        "name": name,
        "mode": mode,
        "mxnet_optimizer": mx_name,
        "mxnet_kwargs": kwargs,
        "hyperparams": hyperparams(rule, hp, opt),
        "options": {k: v for k, v in kwargs.items() if k in OPTIONS},
        "shape": list(LAZY_SHAPE),
        "weight0": encode(w0),
        "rows": held,
        "values": values,
        "weights": weights,
        "states": states,
    }


def main() -> None:
    assert mx.__version__ == "1.9.1", mx.__version__
    OUT.mkdir(parents=True, exist_ok=True)
    assert len({(c.rule, c.name) for c in CASES}) == len(CASES), "case names must be unique"
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for case in CASES:
        by_rule.setdefault(case.rule, []).append(record(case))
    for rule, cases in by_rule.items():
        data: dict[str, Any] = {
            "mxnet_version": mx.__version__,
            "numpy_version": np.__version__,
            "recorded_by": "tools/record_mxnet_goldens.py",
            "rule": rule,
            "cases": cases,
        }
        if rule == "nadam":
            data["shared_schedule"] = record_nadam_shared()
        path = OUT / f"{rule}.json"
        path.write_text(json.dumps(data, separators=(",", ":")) + "\n")
        print(f"wrote {path.relative_to(OUT.parent.parent.parent)} ({len(cases)} cases)")
    data = {
        "mxnet_version": mx.__version__,
        "numpy_version": np.__version__,
        "recorded_by": "tools/record_mxnet_goldens.py",
        "cases": [record_lazy(case, "lazy") for case in LAZY_CASES]
        + [record_lazy(case, "dense") for case in DENSE_CASES],
    }
    path = OUT / "lazy_rows.json"
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    count = len(data["cases"])
    print(f"wrote {path.relative_to(OUT.parent.parent.parent)} ({count} cases)")


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(
        prog="python -m tools.record_mxnet_goldens",
        description=(__doc__ or "").split("\n")[0],
        epilog="Run it with mxnet==1.9.1 installed (a throwaway venv, numpy<2): see the module's "
        "docstring.",
    ).parse_args()
    if mx is None:
        raise SystemExit(
            "error: mxnet is not installed: record in a throwaway venv with mxnet==1.9.1 and "
            "numpy<2 (the module's docstring says how)"
        )
    main()
