"""The cases ``tools/record_mxnet_goldens.py`` records from MXNet 1.9.1: each rule's MXNet
optimizer and state names (``RULES``), the per-rule settings (``CASES``), NAdam's two-parameter
setting (``NADAM_SHARED``), and the row_sparse gradients' lazy and dense ones (``LAZY_CASES``,
``DENSE_CASES``). Plain data: imports neither numpy nor mxnet.
"""

from __future__ import annotations

from typing import Any, NamedTuple

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
