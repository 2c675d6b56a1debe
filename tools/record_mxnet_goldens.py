"""Record golden trajectories from the real ``mxnet==1.9.1`` package (the committed test oracle).

Runs only in a throwaway virtual environment (MXNet 1.9.1 needs ``numpy<2``), never in the
project's own environment:

    python3 -m venv /tmp/mxvenv
    /tmp/mxvenv/bin/pip install mxnet==1.9.1 numpy==1.23.5
    /tmp/mxvenv/bin/python tools/record_mxnet_goldens.py          # writes tests/goldens/mxnet/

For every case below it creates ``mx.optimizer.create(name, **kwargs)``, one float32 weight of 12
elements, and feeds fresh gradients (a new NDArray each step: AdaDelta scales its gradient in
place and LBSGD keeps the first one by reference) through ``create_state`` / ``update``. After
every step it records the weight and every state buffer under optgen's state names, plus what
MXNet keeps outside the state: NAdam's schedule product ``opt.m_schedule`` (optgen's host state
``m_schedule``) and LBSGD's accumulated gradient ``opt.cumgrads`` (optgen's ``acc``). Inputs come
from a NumPy generator seeded by the case's name (adding a case changes no other case's data) and
are stored in the file too, so the tests replay exactly what MXNet saw. Some cases zero the whole
gradient at given steps (division guards of the per-tensor norms).

NAdam's file also holds ``shared_schedule``: two parameters updated alternately (each step
index 0, then index 1) by ONE optimizer, which shares its schedule product between them, and the
same inputs through one optimizer per parameter (optgen's per-parameter schedule).

``lazy_rows.json`` holds MXNet's updates of a dense 6 x 4 weight by row_sparse gradients: lazy
ones (``LAZY_CASES``: SGD, SGD with momentum, Adam, AdaGrad at wd = 0) and dense ones
(``DENSE_CASES``: SGD's and Adam's ``lazy_update=False``, the storage fallback of the rules
without a sparse kernel), each step's rows and values with the weight and state after it
(tests/test_lazy_rows.py).

Only this small JSON data is committed; the script uses only numpy and mxnet.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

try:
    import mxnet as mx
except ImportError:  # --help works without it; recording needs it (the docstring's venv)
    mx = None

OUT = Path(__file__).resolve().parent.parent / "tests" / "goldens" / "mxnet"
SIZE = 12

# rule: (MXNet optimizer, optgen state names in MXNet's state order, kwargs optgen does not take)
RULES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "sgd": ("sgd", (), ("momentum",)),
    "sgd_mom": ("sgd", ("mom",), ()),
    "nag": ("nag", ("mom",), ()),
    "adam": ("adam", ("mean", "var"), ()),
    "adagrad": ("adagrad", ("history",), ()),
    "rmsprop": ("rmsprop", ("n",), ("centered",)),
    "rmsprop_centered": ("rmsprop", ("n", "g", "delta"), ("centered",)),
    "adadelta": ("adadelta", ("acc_g", "acc_delta"), ("learning_rate",)),
    "adamax": ("adamax", ("mean", "u"), ()),
    "nadam": ("nadam", ("mean", "var"), ()),
    "signum": ("signum", ("mom",), ()),
    "signsgd": ("signum", (), ("momentum",)),
    "dcasgd": ("dcasgd", ("prev_weight",), ()),
    "ftrl": ("ftrl", ("z", "n"), ()),
    "ftml": ("ftml", ("prev_d", "prev_v", "prev_z"), ()),
    "lbsgd": ("lbsgd", ("mom",), ()),
    "lamb": ("lamb", ("mean", "var"), ()),
    "lars": ("lars", ("mom",), ()),
}


class Case(NamedTuple):
    rule: str
    name: str
    kwargs: dict[str, Any]
    steps: int = 10
    zero_steps: tuple[int, ...] = ()  # steps (1-based) whose whole gradient is 0
    zero_weight0: bool = False  # start from an all-zero weight


COMMON = {"wd": 0.01, "rescale_grad": 0.7, "clip_gradient": 0.8}
STRONG = {"wd": 0.05, "rescale_grad": 2.0, "clip_gradient": 0.5}  # clips most elements
# The optgen hyperparameters are the kwargs renamed (learning_rate -> lr), less those in
# RULES[rule][2], plus the per-rule extras in EXTRA_HP. Every rule has at least two settings with
# wd, rescale_grad and clip_gradient all set and |rescale_grad * g| > clip_gradient somewhere.
LBSGD = {"learning_rate": 0.05, "warmup_epochs": 2, "updates_per_epoch": 3, **COMMON}
CASES: list[Case] = [
    Case("sgd", "defaults", {"momentum": 0.0}),
    Case("sgd", "wd-rescale-clip", {"momentum": 0.0, "learning_rate": 0.05, **COMMON}),
    Case("sgd", "wd-rescale-clip-strong", {"momentum": 0.0, "learning_rate": 0.1, **STRONG}),
    # clipping off: 1.9.1's SGD kernels scale by (lr * rescale_grad), one float32 product
    Case("sgd", "wd-rescale-noclip",
         {"momentum": 0.0, "learning_rate": 0.05, "wd": 0.01, "rescale_grad": 0.7}),
    Case("sgd_mom", "defaults-0.9", {"momentum": 0.9}),
    Case("sgd_mom", "wd-rescale-clip", {"momentum": 0.5, "learning_rate": 0.05, **COMMON}),
    Case("sgd_mom", "wd-rescale-clip-strong", {"momentum": 0.9, "learning_rate": 0.02, **STRONG}),
    Case("sgd_mom", "wd-rescale-noclip",
         {"momentum": 0.9, "learning_rate": 0.05, "wd": 0.01, "rescale_grad": 0.7}),
    Case("nag", "wd0", {"momentum": 0.9, "learning_rate": 0.05, "rescale_grad": 0.7}),
    Case("nag", "clip-wd0", {"momentum": 0.9, "clip_gradient": 0.8}),
    Case("nag", "rescale-clip-wd0",
         {"momentum": 0.7, "learning_rate": 0.05, "rescale_grad": 2.0, "clip_gradient": 0.5}),
    # wd > 0: optgen's documented fix of 1.9.1's in-place kernel (see the tests)
    Case("nag", "wd", {"momentum": 0.9, "learning_rate": 0.05, "wd": 0.05}),
    Case("nag", "wd-rescale-clip", {"momentum": 0.7, "learning_rate": 0.05, **STRONG}),
    Case("adam", "defaults", {}),
    Case("adam", "wd-rescale-clip", {"learning_rate": 0.01, "beta1": 0.8, "beta2": 0.9, **COMMON}),
    Case("adam", "epsilon-wd-rescale-clip",
         {"learning_rate": 0.05, "beta1": 0.5, "beta2": 0.99, "epsilon": 1e-2, **STRONG}),
    Case("adagrad", "defaults", {}),
    Case("adagrad", "wd-rescale-clip", {"learning_rate": 0.1, "eps": 1e-5, **COMMON}),
    Case("adagrad", "eps-wd-rescale-clip", {"learning_rate": 0.3, "eps": 0.1, **STRONG}),
    Case("rmsprop", "defaults", {"centered": False}),
    Case("rmsprop", "wd-rescale-clip-weights",
         {"centered": False, "learning_rate": 0.01, "gamma1": 0.8, "clip_weights": 0.9, **COMMON}),
    Case("rmsprop", "epsilon-wd-rescale-clip",
         {"centered": False, "learning_rate": 0.02, "gamma1": 0.5, "epsilon": 1e-2, **STRONG}),
    Case("rmsprop_centered", "defaults", {"centered": True}),
    Case("rmsprop_centered", "wd-rescale-clip-weights",
         {"centered": True, "learning_rate": 0.01, "gamma1": 0.8, "gamma2": 0.7,
          "clip_weights": 0.9, **COMMON}),
    Case("rmsprop_centered", "gammas-epsilon-wd-rescale-clip",
         {"centered": True, "learning_rate": 0.02, "gamma1": 0.5, "gamma2": 0.95,
          "epsilon": 1e-3, **STRONG}),
    Case("adadelta", "defaults", {}),
    Case("adadelta", "wd-rescale-clip", {"rho": 0.8, "epsilon": 1e-4, **COMMON}),
    Case("adadelta", "rho-epsilon-wd-rescale-clip", {"rho": 0.5, "epsilon": 1e-2, **STRONG}),
    Case("adamax", "defaults", {}),
    Case("adamax", "wd-rescale-clip", {"learning_rate": 0.01, "beta1": 0.8, **COMMON}),
    Case("adamax", "beta2-wd-rescale-clip",
         {"learning_rate": 0.05, "beta1": 0.5, "beta2": 0.9, **STRONG}),
    Case("nadam", "defaults", {}),
    Case("nadam", "wd-rescale-clip", {"learning_rate": 0.01, "schedule_decay": 0.01, **COMMON}),
    Case("nadam", "betas-epsilon-wd-rescale-clip",
         {"learning_rate": 0.02, "beta1": 0.7, "beta2": 0.9, "epsilon": 1e-3,
          "schedule_decay": 0.1, **STRONG}),
    Case("signum", "defaults", {}),
    Case("signum", "wd-wd_lh-rescale-clip", {"momentum": 0.8, "wd_lh": 0.02, **COMMON}),
    Case("signum", "wd-rescale-clip-strong", {"momentum": 0.5, "learning_rate": 0.05, **STRONG}),
    Case("signum", "wd-rescale-noclip", {"momentum": 0.8, "wd": 0.01, "rescale_grad": 0.7}),
    Case("signsgd", "defaults", {"momentum": 0.0}),
    Case("signsgd", "wd", {"momentum": 0.0, "learning_rate": 0.05, "wd": 0.05}),
    # MXNet's signsgd_update ignores rescale_grad and clip_gradient, even a negative rescale_grad
    Case("signsgd", "wd-rescale-clip", {"momentum": 0.0, "learning_rate": 0.05, **COMMON}),
    Case("signsgd", "wd-negative-rescale-clip",
         {"momentum": 0.0, "learning_rate": 0.05, "wd": 0.02, "rescale_grad": -1.5,
          "clip_gradient": 0.3}),
    Case("dcasgd", "defaults", {}),
    Case("dcasgd", "wd-rescale-clip", {"learning_rate": 0.05, "lamda": 0.1, **COMMON}),
    Case("dcasgd", "lamda-wd-rescale-clip", {"learning_rate": 0.1, "lamda": 1.0, **STRONG}),
    Case("ftrl", "defaults", {}),
    Case("ftrl", "wd-rescale-clip", {"learning_rate": 0.3, "lamda1": 0.05, "beta": 0.5, **COMMON}),
    Case("ftrl", "lamda1-beta-wd-rescale-clip",
         {"learning_rate": 0.5, "lamda1": 0.2, "beta": 2.0, **STRONG}),
    Case("ftml", "defaults", {}),
    Case("ftml", "wd-rescale-clip", {"learning_rate": 0.05, "beta1": 0.5, **COMMON}),
    Case("ftml", "beta2-epsilon-wd-rescale-clip",
         {"learning_rate": 0.02, "beta1": 0.8, "beta2": 0.9, "epsilon": 1e-4, **STRONG}),
    *[
        Case("lbsgd", f"{strategy}-b{scale}",
             {"momentum": 0.9, "warmup_strategy": strategy, "batch_scale": scale,
              "begin_epoch": 0, **LBSGD}, 12)
        for strategy, scale in (("linear", 2), ("power2", 3), ("sqrt", 2), ("lars", 2))
    ],
    # begin_epoch > 0: MXNet's call counter k starts at begin_epoch * updates_per_epoch + 1, which
    # moves the macro-batch boundaries (k = 5, 9: the first macro-batch holds 2 calls, 1 call) and
    # the warmup (N = 12 is passed at k = 12)
    *[
        Case("lbsgd", f"{strategy}-b3-begin{begin}",
             {"momentum": 0.9, "warmup_strategy": strategy, "batch_scale": 3,
              "begin_epoch": begin, **LBSGD, "warmup_epochs": 3, "updates_per_epoch": 4}, 12)
        for strategy, begin in (("linear", 1), ("linear", 2), ("power2", 1), ("sqrt", 2),
                                ("lars", 1), ("lars", 2))
    ],
    # momentum 0: MXNet calls sgd_update and keeps no momentum buffer
    *[
        Case("lbsgd", f"{strategy}-b2-momentum0",
             {"momentum": 0.0, "warmup_strategy": strategy, "batch_scale": 2, "begin_epoch": 1,
              **LBSGD, "learning_rate": 0.1, **STRONG}, 12)
        for strategy in ("linear", "lars")
    ],
    # warmup_epochs * updates_per_epoch = N <= 1: MXNet's `nwup <= 1` branch (mult 1) comes after
    # `nup >= nwup` and its counter is >= 1, so it is never taken: the multiplier is batch_scale
    # from the first call (power2 and sqrt take the same branch as linear)
    *[
        Case("lbsgd", f"{strategy}-b2-N{n}",
             {"momentum": 0.5, "warmup_strategy": strategy, "batch_scale": 2, "begin_epoch": 0,
              **LBSGD, "warmup_epochs": n, "updates_per_epoch": 1}, 12)
        for strategy, n in (("linear", 1), ("linear", 0), ("lars", 1))
    ],
    Case("lamb", "defaults", {}),
    Case("lamb", "bounds-no-bias-correction",
         {"learning_rate": 0.01, "lower_bound": 0.5, "upper_bound": 2.0, "bias_correction": False,
          **COMMON}),
    # ||w|| ~ 3.5 < lower_bound: the trust ratio's numerator is lower_bound at every step
    Case("lamb", "lower-bound-wd-rescale-clip",
         {"learning_rate": 0.02, "beta1": 0.8, "beta2": 0.95, "epsilon": 1e-4, "lower_bound": 6.0,
          "upper_bound": 20.0, **STRONG}),
    # whole gradient 0 at step 1 with wd = 0: u = 0, ||u|| = 0, the ratio's guard gives 1
    Case("lamb", "zero-grad",
         {"learning_rate": 0.01, "rescale_grad": 0.7, "clip_gradient": 0.8}, zero_steps=(1, 6)),
    Case("lamb", "zero-weight0-lower-bound",
         {"learning_rate": 0.01, "lower_bound": 0.5, **COMMON}, zero_weight0=True),
    Case("lars", "momentum", {"learning_rate": 0.1, "momentum": 0.9, "eta": 0.01}),
    Case("lars", "wd-rescale-clip", {"learning_rate": 0.1, "momentum": 0.5, "eta": 0.01, **COMMON}),
    # momentum 0 (no MXNet buffer), eps > 0, and a zero gradient (||g|| = 0: rate lr, not LARS's)
    Case("lars", "momentum0-eps-wd-rescale-clip",
         {"learning_rate": 0.5, "momentum": 0.0, "eta": 0.05, "eps": 1e-3, **STRONG},
         zero_steps=(4,)),
]  # fmt: skip

# optgen's fixes of 1.9.1 that change nothing for these cases: Adamax's epsilon set to 0 gives
# 1.9.1's exact update (the default 1e-8 is optgen's policy).
EXTRA_HP: dict[str, dict[str, Any]] = {"adamax": {"epsilon": 0.0}}

# NAdam, two parameters: 1.9.1 shares the schedule product between them (optgen: per parameter)
NADAM_SHARED = {"learning_rate": 0.01, "schedule_decay": 0.05, **COMMON}


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


# row_sparse gradients of a dense weight. Lazy updates (MXNet 1.9.1's ``lazy_update=True``, the
# default of SGD and Adam; AdaGrad's sparse kernel at wd = 0): only the rows a gradient holds
# touch the weight and state. Dense ones (``DENSE_CASES``): SGD's and Adam's standard update
# (``lazy_update=False``) and the storage fallback of the rules without a sparse kernel, every
# row updated (at wd > 0: AdaMax has no epsilon, and at wd = 0 divides 0 by 0 in a row that
# never had a gradient). One float32 weight of LAZY_SHAPE; each step's gradient holds a random
# set of rows (none at step 3).
LAZY_SHAPE = (6, 4)
LAZY_CASES: list[Case] = [
    Case("sgd", "lazy", {"momentum": 0.0, "learning_rate": 0.05, **COMMON}, 6),
    Case("sgd_mom", "lazy", {"momentum": 0.9, "learning_rate": 0.05, **COMMON}, 6),
    Case("adam", "lazy", {"learning_rate": 0.01, "beta1": 0.8, "beta2": 0.9, **COMMON}, 6),
    Case("adagrad", "lazy-wd0",
         {"learning_rate": 0.1, "eps": 1e-5, "rescale_grad": 0.7, "clip_gradient": 0.8}, 6),
]  # fmt: skip
# MXNet's keyword that is the torch class's option, not a hyperparameter
OPTIONS = ("lazy_update",)
DENSE_CASES: list[Case] = [
    Case("sgd", "standard",
         {"momentum": 0.0, "learning_rate": 0.05, "lazy_update": False, **COMMON}, 6),
    Case("sgd_mom", "standard",
         {"momentum": 0.9, "learning_rate": 0.05, "lazy_update": False, **COMMON}, 6),
    Case("adam", "standard",
         {"learning_rate": 0.01, "beta1": 0.8, "beta2": 0.9, "lazy_update": False, **COMMON}, 6),
    Case("nag", "fallback-wd0",  # (wd > 0: optgen's documented fix of 1.9.1's NAG)
         {"momentum": 0.9, "learning_rate": 0.05, "rescale_grad": 0.7, "clip_gradient": 0.8}, 6),
    Case("rmsprop", "fallback", {"centered": False, "learning_rate": 0.01, **COMMON}, 6),
    Case("rmsprop_centered", "fallback",
         {"centered": True, "learning_rate": 0.01, "gamma2": 0.7, **COMMON}, 6),
    Case("adadelta", "fallback", {"rho": 0.8, "epsilon": 1e-4, **COMMON}, 6),
    Case("adamax", "fallback", {"learning_rate": 0.01, "beta1": 0.8, **COMMON}, 6),
    Case("nadam", "fallback", {"learning_rate": 0.01, "schedule_decay": 0.01, **COMMON}, 6),
    Case("signum", "fallback", {"momentum": 0.8, "wd_lh": 0.02, **COMMON}, 6),
    Case("signsgd", "fallback", {"momentum": 0.0, "learning_rate": 0.05, **COMMON}, 6),
    Case("ftrl", "fallback", {"learning_rate": 0.3, "lamda1": 0.05, "beta": 0.5, **COMMON}, 6),
    Case("ftml", "fallback", {"learning_rate": 0.05, "beta1": 0.5, **COMMON}, 6),
    Case("lamb", "fallback", {"learning_rate": 0.01, "beta1": 0.8, **COMMON}, 6),
]  # fmt: skip


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
