"""The drop-in classes (``generated.torch.optim``) against torch.optim itself, on the CPU (and,
in a GPU run, ``TRITON_INTERPRET=0``, ``test_matches_torch`` on CUDA tensors: Triton against
torch's CUDA kernels; tools/gpu_check.py runs it so).

For every option combination torch documents: 50 steps of ours and of ``torch.optim.<name>``
(single-tensor path) from the same weights and gradients, two param groups; at step 25 each
saves a state_dict that a fresh optimizer of the other kind loads and continues from. All four
must stay within ``ULPS`` float32 ulps of torch's weights (and the state buffers likewise, by
their magnitude). Also: torch's signature and defaults, LR schedulers (lr and betas/momentum
cycling), the implementation switches, torch's argument checks.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import math
from typing import Any

import numpy as np
import pytest
import torch
from conftest import DEVICE, float32_newton_schulz, ulp

import generated.torch.optim as dropin

ULPS = 8  # largest error allowed after 50 steps, in float32 ulps of torch's value
# torch's CPU addcmul_ (the squares of RMSprop and Adadelta) is contracted into a fused
# multiply-add, one rounding where ours rounds ((1 - rho) * g) * g before the add: 9 and 11
# ulps after 50 steps in one case of each since their specs follow torch's order of
# operations (2026-12-06; that order keeps a gradient whose square overflows float32 from
# freezing its element: test_a_gradient_spike_whose_square_overflows_steps_as_torchs)
FMA_ULPS = {"RMSprop": 12, "Adadelta": 12}


def allowed(name: str) -> int:
    """The ulps a class's weights and states may drift from torch's in 50 steps."""
    return FMA_ULPS.get(name, ULPS)


STEPS, RESUME = 50, 25
SHAPES = [(3, 5), (7,), (2, 2, 3)]


def product(**options: list[Any]) -> list[dict[str, Any]]:
    keys = list(options)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*options.values())]


SGD_MOMENTUM = [
    {"momentum": 0.0},
    {"momentum": 0.9},
    {"momentum": 0.9, "dampening": 0.5},
    {"momentum": 0.9, "nesterov": True},
]
CASES: list[tuple[str, dict[str, Any]]] = [
    *(
        ("SGD", {**m, **o})
        for m in SGD_MOMENTUM
        for o in product(weight_decay=[0.0, 0.1], maximize=[False, True])
    ),
    *(
        ("Adam", o)
        for o in product(
            amsgrad=[False, True],
            maximize=[False, True],
            weight_decay=[0.0, 0.1],
            decoupled_weight_decay=[False, True],
        )
    ),
    *(("AdamW", o) for o in product(amsgrad=[False, True], maximize=[False, True])),
    *(
        ("Adagrad", o)
        for o in product(
            lr_decay=[0.0, 0.01],
            weight_decay=[0.0, 0.1],
            initial_accumulator_value=[0.0, 0.1],
            maximize=[False, True],
        )
    ),
    *(
        ("RMSprop", o)
        for o in product(
            centered=[False, True],
            momentum=[0.0, 0.9],
            weight_decay=[0.0, 0.1],
            maximize=[False, True],
        )
    ),
    *(
        ("Adadelta", o)
        for o in product(weight_decay=[0.0, 0.1], maximize=[False, True], rho=[0.9, 0.5])
    ),
    *(("Adamax", o) for o in product(weight_decay=[0.0, 0.1], maximize=[False, True])),
    *(
        ("NAdam", o)
        for o in product(
            weight_decay=[0.0, 0.1],
            decoupled_weight_decay=[False, True],
            maximize=[False, True],
            momentum_decay=[0.004, 0.1],
        )
    ),
    *(
        ("RAdam", o)
        for o in product(
            weight_decay=[0.0, 0.1],
            decoupled_weight_decay=[False, True],
            maximize=[False, True],
            betas=[(0.9, 0.999), (0.9, 0.9)],  # rectified from step 6 with beta2 = 0.9
        )
    ),
    *(
        ("ASGD", o)
        for o in product(weight_decay=[0.0, 0.1], maximize=[False, True], t0=[1e6, 10.0])
    ),
    *(
        ("Rprop", o)
        for o in product(
            maximize=[False, True],
            etas=[(0.5, 1.2), (0.3, 1.5)],
            step_sizes=[(1e-6, 50), (1e-3, 0.02)],
        )
    ),
]
CASES += [
    ("Adafactor", {**o, **other})
    for o in product(weight_decay=[0.0, 0.1], maximize=[False, True])
    for other in ({}, {"eps": (1e-20, 1e-2), "beta2_decay": -0.5, "d": 2.0})
]
CASES += [  # (the rule names two of these otherwise: wd, epsilon; see test_renamed_settings)
    ("Muon", o)
    for o in product(
        nesterov=[True, False], weight_decay=[0.0, 0.1], adjust_lr_fn=[None, "match_rms_adamw"]
    )
]
CASES += [
    (
        "Muon",
        {"momentum": 0.9, "ns_coefficients": (3.0, -3.2, 1.2), "eps": 1e-3, "ns_steps": 3},
    )
]
LR = {
    "SGD": 0.05,
    "Adam": 0.01,
    "AdamW": 0.01,
    "Adagrad": 0.05,
    "RMSprop": 0.005,
    "Adadelta": 1.0,
    "Adamax": 0.01,
    "NAdam": 0.01,
    "RAdam": 0.01,
    "ASGD": 0.05,
    "Rprop": 0.01,
    "Adafactor": 0.05,
    "Muon": 0.02,
}
MATRICES = [(6, 4), (3, 9), (5, 5)]  # Muon takes nothing else (torch's and ours refuse others)
NO_FOREACH = {"Muon"}  # torch.optim classes without the foreach switch


def shapes_of(name: str) -> list[tuple[int, ...]]:
    """The parameters' shapes: Adafactor's with a 0-d one too (a logit scale), whose torch
    state is its ``variance`` of shape () (this rule's one-column ``col``). Not the others':
    ``ulps`` scales by a tensor's largest magnitude, and a lone value that ends near 0 shows
    the rounding drift of 50 steps alone (SGD's: 12 ulps of 0.098, a step of ours and torch's
    differing in the last bit as often as in the other tensors)."""
    if name == "Muon":
        return MATRICES
    return [*SHAPES, ()] if name == "Adafactor" else SHAPES


def switches(name: str) -> dict[str, Any]:
    """torch's single-tensor path where the class has a choice."""
    return {} if name in NO_FOREACH else {"foreach": False}


def torch_in_float32(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.optim.Muon iterates Newton-Schulz in bfloat16, the rule in the weight's dtype
    (specs/muon.py): compared here with torch's own code run in float32 (test_muon.py bounds
    the bfloat16 difference)."""
    if name == "Muon":
        float32_newton_schulz(monkeypatch)


def case_id(case: tuple[str, dict[str, Any]]) -> str:
    name, options = case
    return name + "".join(f"-{k}={v}" for k, v in options.items())


def params_from(weights: list[torch.Tensor]) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(w.clone()) for w in weights]


def groups(params: list[torch.nn.Parameter], lr: float) -> list[dict[str, Any]]:
    return [{"params": params[:2]}, {"params": params[2:], "lr": lr / 2}]


def set_grads(params: list[torch.nn.Parameter], step: int) -> None:
    gen = torch.Generator().manual_seed(1000 + step)
    for p in params:  # a pull towards 0.5 plus noise: the weights move on every path
        # the same draws on any device (a complex parameter's: complex noise)
        noise = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device)
        p.grad = (p.detach() - 0.5) + noise


def ulps(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """The largest difference in float32 ulps at the tensor's largest magnitude (an element
    that crossed 0 is only as accurate as the values it was computed from)."""
    a = ours.detach().double().cpu().numpy()
    b = theirs.detach().double().cpu().numpy()
    assert np.isfinite(a).all() and np.isfinite(b).all()
    if not b.size:
        return 0.0
    return float(np.max(np.abs(a - b)) / ulp(np.abs(b).max(), np.float32))


def run(opts: list[tuple[torch.optim.Optimizer, list[torch.nn.Parameter]]], steps: range) -> None:
    for t in steps:
        for opt, params in opts:
            set_grads(params, t)
            opt.step()


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_matches_torch(case: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    """50 steps equal to torch's within ULPS; a checkpoint crosses over either way at step 25."""
    name, options = case
    torch_in_float32(name, monkeypatch)
    torch.manual_seed(0)
    weights = [torch.randn(s).to(DEVICE) for s in shapes_of(name)]
    kwargs = {"lr": LR[name], **switches(name), **options}
    theirs_p, ours_p = params_from(weights), params_from(weights)
    theirs = getattr(torch.optim, name)(groups(theirs_p, LR[name]), **kwargs)
    ours = getattr(dropin, name)(groups(ours_p, LR[name]), **kwargs)
    run([(theirs, theirs_p), (ours, ours_p)], range(1, RESUME + 1))
    # resume each from the other's checkpoint, on fresh parameters at the step-25 weights
    theirs2_p, ours2_p = params_from(list(ours_p)), params_from(list(theirs_p))
    theirs2 = getattr(torch.optim, name)(groups(theirs2_p, LR[name]), **kwargs)
    theirs2.load_state_dict(copy.deepcopy(ours.state_dict()))  # as saved: torch's loader
    # keeps same-dtype tensors it is given, so a live state dict would be shared
    ours2 = getattr(dropin, name)(groups(ours2_p, LR[name]), **kwargs)
    ours2.load_state_dict(copy.deepcopy(theirs.state_dict()))
    assert_same_state(ours, theirs)
    everyone = [(theirs, theirs_p), (ours, ours_p), (theirs2, theirs2_p), (ours2, ours2_p)]
    run(everyone, range(RESUME + 1, STEPS + 1))
    for other in (ours_p, theirs2_p, ours2_p):
        for a, b in zip(other, theirs_p, strict=True):
            assert ulps(a, b) <= allowed(name)
    assert all(not torch.equal(b, w) for b, w in zip(theirs_p, weights, strict=True))
    assert_same_state(ours, theirs)
    assert_same_state(ours2, theirs)


# torch's squares: addcmul_(g, g, value=1 - beta) forms ((1 - beta) * g) * g, never g**2
SPIKES = [
    ("Adam", {}),
    ("Adam", {"amsgrad": True}),
    ("AdamW", {}),
    ("NAdam", {}),
    ("RAdam", {}),
    ("RMSprop", {}),
    ("RMSprop", {"centered": True}),
    ("Adadelta", {}),
]


@pytest.mark.parametrize(("name", "options"), SPIKES, ids=[case_id(c) for c in SPIKES])
def test_a_gradient_spike_whose_square_overflows_steps_as_torchs(name, options) -> None:
    """One gradient element of 1e20, whose square overflows float32, then ordinary steps:
    torch's second moment stays finite (its factor times the gradient, times the gradient)
    and the element keeps training; ours the same (``as_is`` in the specs), within ULPS of
    torch's weights and states, inf where torch's is (Adadelta's E[g^2], its factor 0.1: the
    weight then stays, delta 0). Squaring first, the moment went inf and the element froze
    for good, and Adadelta's expanded delta**2, inf / inf, made the weight NaN (found by an
    audit, 2026-12-06)."""
    torch.manual_seed(0)
    weights = [torch.randn(4, 3)]
    theirs_p, ours_p = params_from(weights), params_from(weights)
    kwargs = {"lr": LR[name], "foreach": False, **options}
    theirs = getattr(torch.optim, name)(theirs_p, **kwargs)
    ours = getattr(dropin, name)(ours_p, **kwargs)
    for t in range(1, 12):
        set_grads(theirs_p, t)
        if t == 1:
            theirs_p[0].grad[0, 0] = 1e20
        for p, q in zip(ours_p, theirs_p, strict=True):
            p.grad = q.grad.clone()
        theirs.step()
        ours.step()
    assert_as_torchs(ours, theirs, ours_p, theirs_p)  # (Adadelta's E[g^2] is inf in both)
    assert torch.isfinite(ours_p[0]).all()


def assert_as_torchs(ours: Any, theirs: Any, ours_p: list[Any], theirs_p: list[Any]) -> None:
    """Weights and states: inf and NaN where torch's are (the same), the rest within ULPS."""
    mine, reference = ours.state_dict()["state"], theirs.state_dict()["state"]
    pairs = [(mine[i][k], v) for i, st in reference.items() for k, v in st.items()]
    for a, b in [*pairs, *zip(ours_p, theirs_p, strict=True)]:
        a, b = a.detach(), b.detach()
        finite = torch.isfinite(b)
        assert torch.equal(torch.isfinite(a), finite)
        assert torch.equal(a[~finite].nan_to_num(0.0), b[~finite].nan_to_num(0.0))
        assert ulps(a[finite], b[finite]) <= ULPS


LERPS = [  # betas=(0, 0.99), as in GAN training: torch's lerp at weight 1 is the gradient
    ("Adam", {"betas": (0.0, 0.99)}),
    ("AdamW", {"betas": (0.0, 0.99)}),
    ("NAdam", {"betas": (0.0, 0.99)}),
    ("RAdam", {"betas": (0.0, 0.99)}),
    ("Adamax", {"betas": (0.0, 0.99)}),
    ("Adam", {"betas": (0.3, 0.99)}),
    ("RMSprop", {"alpha": 0.3, "centered": True}),
]


@pytest.mark.parametrize(("name", "options"), LERPS, ids=[case_id(c) for c in LERPS])
def test_a_first_moment_at_lerp_weight_half_or_more_is_torchs(name, options) -> None:
    """torch's ``exp_avg.lerp_(g, 1 - beta1)`` computes ``g - (g - m) * beta1`` where the
    weight 1 - beta1 is 0.5 or more (ATen's lerp): at beta1 = 0 the moment is the gradient
    itself. ``m + (1 - beta1) * (g - m)`` cancelled to a rounding of the old m when |m| >>
    |g| (1e10, then 1e-3: a moment of 0, found by an audit). The moments within ULPS of
    torch's (at beta1 = 0: equal), the weights within 1e-5."""
    weights = [torch.ones(2)]
    theirs_p, ours_p = params_from(weights), params_from(weights)
    kwargs = {"lr": 0.01, "foreach": False, **options}
    theirs = getattr(torch.optim, name)(theirs_p, **kwargs)
    ours = getattr(dropin, name)(ours_p, **kwargs)
    key = "grad_avg" if name == "RMSprop" else "exp_avg"
    for g in ([1e10, 1.0], [1e-3, 1.0], [2e-3, -1.0]):
        for p in (*theirs_p, *ours_p):
            p.grad = torch.tensor(g)
        theirs.step()
        ours.step()
        mine, want = ours.state[ours_p[0]][key], theirs.state[theirs_p[0]][key]
        assert ulps(mine, want) <= ULPS, g
        if options.get("betas", (1.0,))[0] == 0.0:
            assert torch.equal(mine, torch.tensor(g)), g  # the gradient itself
    torch.testing.assert_close(ours_p[0].detach(), theirs_p[0].detach(), rtol=1e-5, atol=0.0)


@pytest.mark.parametrize("name", ["AdamW", "NAdam", "RAdam"])
def test_decoupled_weight_decay_keeps_an_infinite_weight_out_of_the_moments(name) -> None:
    """Decoupled weight decay multiplies the weight and never adds it to the gradient: an
    infinite weight stays inf and its moments finite, as torch's (the spec's 0 * w in the
    gradient made them NaN; found by an audit)."""
    extra = {} if name == "AdamW" else {"decoupled_weight_decay": True}
    kwargs = {"lr": 1e-3, "weight_decay": 0.01, "foreach": False, **extra}
    theirs_p = params_from([torch.tensor([math.inf, 1.0])])
    ours_p = params_from([torch.tensor([math.inf, 1.0])])
    theirs = getattr(torch.optim, name)(theirs_p, **kwargs)
    ours = getattr(dropin, name)(ours_p, **kwargs)
    for _ in range(2):
        for p in (*theirs_p, *ours_p):
            p.grad = torch.ones(2)
        theirs.step()
        ours.step()
    assert_as_torchs(ours, theirs, ours_p, theirs_p)
    assert (
        math.isinf(ours_p[0][0].item()) and torch.isfinite(ours.state[ours_p[0]]["exp_avg"]).all()
    )


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_a_state_written_in_torchs_format_steps_as_a_loaded_one(case, monkeypatch) -> None:
    """ZeroRedundancyOptimizer.load_state_dict writes the saved (torch-format) state of each
    parameter straight into its optimizer's ``state``, never calling its ``load_state_dict``:
    the next step takes such a state as ``load_state_dict`` takes it, to the bit."""
    name, options = case
    torch_in_float32(name, monkeypatch)
    torch.manual_seed(0)
    weights = [torch.randn(s).to(DEVICE) for s in shapes_of(name)]
    kwargs = {"lr": LR[name], **switches(name), **options}
    first_p = params_from(weights)
    first = getattr(dropin, name)(groups(first_p, LR[name]), **kwargs)
    run([(first, first_p)], range(1, 3))
    saved = first.state_dict()
    loaded_p, written_p = params_from(list(first_p)), params_from(list(first_p))
    loaded = getattr(dropin, name)(groups(loaded_p, LR[name]), **kwargs)
    loaded.load_state_dict(copy.deepcopy(saved))
    written = getattr(dropin, name)(groups(written_p, LR[name]), **kwargs)
    for index, state in copy.deepcopy(saved)["state"].items():
        written.state[written_p[index]] = state  # as ZeRO's load_state_dict
    run([(loaded, loaded_p), (written, written_p)], range(3, 5))
    assert all(torch.equal(a, b) for a, b in zip(loaded_p, written_p, strict=True))
    mine, want = written.state_dict(), loaded.state_dict()
    assert mine["param_groups"] == want["param_groups"]
    assert mine["state"].keys() == want["state"].keys()
    for index, st in want["state"].items():
        assert mine["state"][index].keys() == st.keys()
        assert all(torch.equal(mine["state"][index][k], v) for k, v in st.items())
    assert any(not torch.equal(a, b) for a, b in zip(written_p, first_p, strict=True))


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("Adafactor", {}),
    ],
)
def test_a_buffer_torch_does_not_keep_loads_as_a_first_step_makes_it(
    name: str, options: dict[str, Any]
) -> None:
    """A state dict of torch's that lacks a buffer of ours (used by neither at these settings:
    Adafactor's factors of another rank; RMSprop's mean gradient with momentum alone and its
    momentum with centering alone were such until 2026-12-06, now absent as in torch) loads it
    as our first step would make it: the NumPy module's ``init_state`` of that parameter, in
    float32, where the parameter lives."""
    torch.manual_seed(0)
    weights = [torch.randn(s) for s in SHAPES]
    theirs_p, ours_p = params_from(weights), params_from(weights)
    kwargs = {"lr": LR[name], "foreach": False, **options}
    theirs = getattr(torch.optim, name)(groups(theirs_p, LR[name]), **kwargs)
    run([(theirs, theirs_p)], range(1, 3))
    ours = getattr(dropin, name)(groups(ours_p, LR[name]), **kwargs)
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    meta, filled = type(ours).META, 0
    for p, q in zip(ours_p, theirs_p, strict=True):
        group = next(g for g in ours.param_groups if any(x is p for x in g["params"]))
        init = type(ours).NUMPY.init_state(
            p.detach().numpy().copy(), **{k: group[k] for k in meta.INIT_HYPERPARAMS}
        )
        kept = {key for key, theirs_key in ours._layout(p, group).items() if theirs_key}
        assert {ours._layout(p, group)[k] for k in kept} <= set(theirs.state[q])
        for key in set(init) - kept:  # (a state absent at these settings is not in init)
            got = ours.state[p][key]
            assert got.dtype == torch.float32 and got.device == p.device, key
            assert torch.equal(got, torch.from_numpy(init[key])), key
            filled += 1
    assert filled  # the case has a buffer torch does not keep


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("NAdam", {"lr": 0.01}),
        ("NAdam", {"lr": 0.01, "momentum_decay": 0.1}),
        ("ASGD", {"lr": 0.05, "t0": 10.0}),
        ("ASGD", {"lr": 0.05, "lambd": 0.01, "t0": 5.0}),
    ],
)
def test_float64_weights_step_with_torchs_float32_host_states(
    name: str, options: dict[str, Any]
) -> None:
    """torch keeps NAdam's ``mu_product`` and ASGD's ``eta`` and ``mu`` as float32 tensors
    (its default scalar dtype) whatever the weights' dtype; the specs round them so (``f32``):
    float64 weights stay within 4 float64 ulps of torch's over 50 steps (as float64 host states
    they were 3e5 to 4.5e7 ulps away)."""
    torch.manual_seed(0)
    weights = [torch.randn(16, 8, dtype=torch.float64) for _ in range(2)]
    theirs_p, ours_p = params_from(weights), params_from(weights)
    theirs = getattr(torch.optim, name)(theirs_p, foreach=False, **options)
    ours = getattr(dropin, name)(ours_p, **options)
    run([(theirs, theirs_p), (ours, ours_p)], range(1, 51))
    for a, b in zip(ours_p, theirs_p, strict=True):
        assert (a - b).abs().max() <= 4 * torch.finfo(torch.float64).eps * b.abs().max()


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("Adam", {}),
        ("AdamW", {}),
        ("Adam", {"amsgrad": True}),
        ("RMSprop", {}),
        ("RMSprop", {"momentum": 0.9}),
        ("RMSprop", {"centered": True}),
        ("RMSprop", {"momentum": 0.9, "centered": True, "weight_decay": 0.1}),
        ("SGD", {"momentum": 0.9}),
        ("Adagrad", {}),
        ("NAdam", {}),
    ],
)
def test_state_memory_is_torchs(name: str, options: dict[str, Any]) -> None:
    """After a step each parameter holds the buffers torch's holds, no more (Adam without
    amsgrad: no ``max_exp_avg_sq``; RMSprop at its defaults: ``square_avg`` alone, with
    momentum alone no ``grad_avg``, centered alone no ``momentum_buffer``: until 2026-12-06 it
    kept the other one unused): the same bytes of state as the torch.optim class replaced."""

    def buffer_bytes(opt: torch.optim.Optimizer, p: torch.Tensor) -> int:
        st = opt.state[p]
        return sum(
            v.numel() * v.element_size() for v in st.values() if torch.is_tensor(v) and v.dim()
        )

    sizes = []
    for module in (dropin, torch.optim):
        p = torch.nn.Parameter(torch.randn(64, 8))
        opt = getattr(module, name)([p], **options)
        p.grad = torch.randn(64, 8)
        opt.step()
        sizes.append(buffer_bytes(opt, p))
    assert sizes[0] == sizes[1] > 0


def assert_same_state(ours: torch.optim.Optimizer, theirs: torch.optim.Optimizer) -> None:
    """Our state_dict has torch's keys, group settings and (within ULPS) values."""
    mine, reference = ours.state_dict(), theirs.state_dict()
    assert mine.keys() - {"optgen_rule"} == reference.keys()
    own = type(ours)._own()  # the rule's settings torch lacks (Muon's ns_dtype), where given
    for a, b in zip(mine["param_groups"], reference["param_groups"], strict=True):
        assert a.keys() - own == b.keys()
        for key in b:
            assert a[key] == b[key], key
    assert mine["state"].keys() == reference["state"].keys()
    for index, st in reference["state"].items():
        assert mine["state"][index].keys() == st.keys()
        for key, value in st.items():
            got = mine["state"][index][key]
            # host states (NAdam's mu_product, ASGD's eta and mu): float64 here, float32 there
            host = key in type(ours).META.HOST_STATES and got.dtype == torch.float64
            assert got.dtype == value.dtype or host, key
            assert got.shape == value.shape, key
            assert ulps(got, value) <= allowed(type(ours).__name__), key


@pytest.mark.parametrize("name", sorted(dropin.__all__))
def test_signature_is_torchs(name: str) -> None:
    """torch's arguments, in order, of the same kinds and defaults; ours adds keyword-only
    the rule's hyperparameters torch lacks (Muon's ``ns_dtype``), ``multi_precision`` and
    ``backend`` after them."""
    theirs = list(inspect.signature(getattr(torch.optim, name)).parameters.values())
    ours = list(inspect.signature(getattr(dropin, name)).parameters.values())
    cls = getattr(dropin, name)
    own = [h for h in cls.META.HYPERPARAMS if h not in cls.TORCH.hyper]
    assert own == (["ns_dtype"] if name == "Muon" else [])
    assert [p.name for p in ours] == [p.name for p in theirs] + own + ["multi_precision", "backend"]
    for p in ours[len(theirs) :]:
        assert p.kind == p.KEYWORD_ONLY, p.name
    for a, b in zip(ours, theirs, strict=False):
        assert a.kind == b.kind, a.name
        assert a.default == b.default, a.name
        assert type(a.default) is type(b.default) or isinstance(b.default, (int, float)), a.name
    assert issubclass(getattr(dropin, name), torch.optim.Optimizer)


def test_defaults_match_torch() -> None:
    """A default-constructed drop-in's groups hold torch's settings (and the tuple items)."""
    for name in dropin.__all__:
        p = torch.nn.Parameter(torch.zeros(2, 2))
        ours = getattr(dropin, name)([p]).state_dict()["param_groups"][0]
        theirs = getattr(torch.optim, name)([p]).state_dict()["param_groups"][0]
        assert ours == theirs, name


@pytest.mark.parametrize(
    ("name", "scheduler"),
    [
        ("Adam", lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=30)),
        ("SGD", lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=30)),
        ("RMSprop", lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10)),
        ("Adagrad", lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.5)),
    ],
)
def test_lr_schedulers(name: str, scheduler: Any) -> None:
    """A scheduler drives ours as it drives torch's (OneCycleLR cycles Adam's betas and SGD's
    momentum too)."""
    torch.manual_seed(0)
    weights = [torch.randn(s) for s in SHAPES]
    kwargs = {"foreach": False, **({"momentum": 0.9} if name in ("SGD", "RMSprop") else {})}
    theirs_p, ours_p = params_from(weights), params_from(weights)
    theirs = getattr(torch.optim, name)(theirs_p, lr=0.01, **kwargs)
    ours = getattr(dropin, name)(ours_p, lr=0.01, **kwargs)
    schedules = [scheduler(theirs), scheduler(ours)]
    for t in range(1, 30):
        for opt, params, s in ((theirs, theirs_p, schedules[0]), (ours, ours_p, schedules[1])):
            set_grads(params, t)
            opt.step()
            s.step()
        assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"]
    for a, b in zip(ours_p, theirs_p, strict=True):
        assert ulps(a, b) <= ULPS
    assert_same_state(ours, theirs)


def test_switches() -> None:
    """foreach/fused accepted (no effect); capturable/differentiable refused, with the reason."""
    p = torch.nn.Parameter(torch.ones(3))
    for kwargs in ({"foreach": True}, {"fused": True}, {"foreach": False, "fused": False}):
        opt = dropin.Adam([p], **kwargs)
        assert all(opt.param_groups[0][k] == v for k, v in kwargs.items())
    for key in ("capturable", "differentiable"):
        with pytest.raises(ValueError, match=f"Adam: {key}=True is not supported"):
            dropin.Adam([p], **{key: True})
        opt = dropin.Adam([p])
        with pytest.raises(ValueError, match=f"{key}=True is not supported"):
            opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))], key: True})
        saved = opt.state_dict()
        saved["param_groups"][0][key] = True
        with pytest.raises(ValueError, match=f"param group 0: {key}=True is not supported"):
            opt.load_state_dict(saved)


def test_torch_argument_checks() -> None:
    """torch's own checks, with torch's messages, named by our class."""
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="SGD: Nesterov momentum requires"):
        dropin.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="Adam: Invalid beta parameter at index 1"):
        dropin.Adam([p], betas=(0.9, 1.5))
    with pytest.raises(ValueError, match="betas must be a tuple of 2 values"):
        dropin.Adam([p], betas=(0.9, 0.99, 0.5))


def test_every_drop_in_is_compared() -> None:
    """Each class of generated.torch.optim has trajectory cases above (a new drop-in adds its
    option combinations there), but SparseAdam, which takes sparse gradients only: its own in
    tests/test_sparse_adam.py."""
    assert {name for name, _ in CASES} == set(dropin.__all__) - {"SparseAdam"}


SPEC = '''
"""A test rule."""
import sympy as sp
from codegen.spec import Rule, nonnegative, unit
RULE = Rule("bad", __doc__)
lr = RULE.hyper("lr", 0.1, nonnegative())
beta1 = RULE.hyper("beta1", 0.9, unit())
m = RULE.state("m", 0)
RULE.update(m, beta1 * m + RULE.grad)
RULE.update(RULE.weight, RULE.weight - lr * RULE.new(m))
'''
MAPPED = 'RULE.torch_equivalent("SGD", {"beta1": "lr"}, {m: ("momentum_buffer", 1)})'
TUPLE = 'RULE.torch_equivalent("Adam", {"lr": "lr", "beta1": "betas[0]"}, {m: ("exp_avg", 1)})'
SPEC_ERRORS = {
    "no torch_equivalent": ('RULE.drop_in("SGD", "lr")', r"bad.py:11: drop_in\('SGD'\) needs"),
    "renamed to another's name": (
        MAPPED + '\nRULE.drop_in("SGD", "lr")',
        r"bad.py:12: drop_in: hyperparameter 'beta1' maps to torch's 'lr', which is the name "
        "of another hyperparameter",
    ),
    "unknown argument": (
        TUPLE + '\nRULE.drop_in("Adam", "lr, betas, amsgrad")',
        r"bad.py:12: drop_in signature names 'amsgrad', which is neither",
    ),
    "argument missing": (
        TUPLE + '\nRULE.drop_in("Adam", "lr, *, foreach")',
        r"bad.py:12: drop_in signature lacks \['betas'\]",
    ),
    "twice": (
        TUPLE + '\nRULE.drop_in("Adam", "lr, betas")\nRULE.drop_in("Adam", "lr, betas")',
        r"bad.py:13: drop_in 'Adam' is declared twice",
    ),
}


@pytest.mark.parametrize("case", sorted(SPEC_ERRORS))
def test_malformed_drop_in_is_refused(tmp_path: Any, case: str) -> None:
    """A malformed ``RULE.drop_in`` is refused naming the spec file, line and culprit."""
    from codegen.load import load_rule
    from codegen.spec import SpecError

    body, message = SPEC_ERRORS[case]
    (tmp_path / "specs").mkdir()
    path = tmp_path / "specs" / "bad.py"
    path.write_text(SPEC + body + "\n")
    with pytest.raises(SpecError, match=message):
        load_rule(path)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_a_state_dicts_wrong_entries_are_named(amsgrad: bool) -> None:
    """A saved state without ``step``, or with an entry torch's Adam does not keep, is refused
    naming them in torch's names (the message listed the converted state's keys, a buffer the
    dict never had among them, and pointed to ``load_torch_state_dict``, the same loader);
    nothing written. The rule's own class names them too, in the rule's names."""
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    theirs = torch.optim.Adam([p], lr=0.1, amsgrad=amsgrad)
    theirs.step()
    ours = dropin.Adam([torch.nn.Parameter(torch.ones(3))], amsgrad=amsgrad)
    before = copy.deepcopy(ours.state_dict())
    lacking = copy.deepcopy(theirs.state_dict())
    del lacking["state"][0]["step"]
    with pytest.raises(ValueError, match=r"not a state_dict of Adam .*: state 0 lacks \['step'\]$"):
        ours.load_state_dict(lacking)
    extra = copy.deepcopy(theirs.state_dict())
    extra["state"][0]["ema"] = extra["state"][0].pop("exp_avg")
    message = r"state 0 lacks \['exp_avg'\] and has \['ema'\], which this optimizer does not keep$"
    with pytest.raises(ValueError, match=message):
        ours.load_state_dict(extra)
    assert ours.state_dict() == before
    from generated.torch import Adam

    rule = Adam([p], lr=0.1)
    rule.step()
    saved = rule.state_dict()
    saved["state"][0]["ema"] = saved["state"][0].pop("mean")
    with pytest.raises(ValueError, match=r"state 0 lacks \['mean'\] and has \['ema'\]"):
        Adam([torch.nn.Parameter(torch.ones(3))]).load_state_dict(saved)


def test_another_optimizers_state_dict_is_refused() -> None:
    """torch's SGD state_dict does not load into the Adam drop-in (nothing written); torch's
    Adam one loads into AdamW, as it does in torch."""
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    sgd = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    sgd.step()
    ours = dropin.Adam([torch.nn.Parameter(torch.ones(3))])
    before = copy.deepcopy(ours.state_dict())
    with pytest.raises(ValueError, match=r"Adam\.load_state_dict: not a state_dict of Adam"):
        ours.load_state_dict(sgd.state_dict())
    assert ours.state_dict() == before
    adam = torch.optim.Adam([p], lr=0.1)
    adam.step()
    adamw = dropin.AdamW([torch.nn.Parameter(torch.ones(3))])
    adamw.load_state_dict(copy.deepcopy(adam.state_dict()))
    assert adamw.param_groups[0]["decoupled_weight_decay"] is False  # the saved group, as torch


def test_spec_named_factored_class_points_to_the_drop_in() -> None:
    """``generated.torch.Adafactor`` (optgen's class of the same rule) does not export torch's
    layout itself: it names the drop-in that does."""
    from generated.torch import Adafactor

    opt = Adafactor([torch.nn.Parameter(torch.ones(2, 3))])
    with pytest.raises(NotImplementedError, match=r"generated\.torch\.optim\.Adafactor"):
        opt.to_torch_state_dict()


def test_renamed_settings_follow_torchs_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Muon's rule names two settings otherwise (``wd``, ``epsilon``; specs/muon.py): the
    drop-in's groups hold torch's ``weight_decay`` and ``eps`` alone, as torch's do (DCP's
    flattened load rebuilds a state dict from the live keys). Editing torch's name between
    steps (as a user or a weight-decay schedule does) changes the step as it changes torch's;
    a group given the rule's name is refused before anything is written (it would change
    nothing), in a step and in ``add_param_group``; optgen's own class keeps the rule's."""
    from generated.torch import Muon

    float32_newton_schulz(monkeypatch)
    torch.manual_seed(0)
    weights = [torch.randn(s) for s in MATRICES]
    theirs_p, ours_p = params_from(weights), params_from(weights)
    theirs = torch.optim.Muon(theirs_p, lr=0.02, weight_decay=0.05)
    ours = dropin.Muon(ours_p, lr=0.02, weight_decay=0.05)
    assert {"wd", "epsilon", "ns_a"}.isdisjoint(ours.param_groups[0])
    for t in range(1, 13):
        if t in (4, 8):  # torch's name, as a schedule edits it
            weight_decay = 0.3 if t == 4 else 0.0
            theirs.param_groups[0]["weight_decay"] = weight_decay
            ours.param_groups[0]["weight_decay"] = weight_decay
        run([(theirs, theirs_p), (ours, ours_p)], range(t, t + 1))
    for a, b in zip(ours_p, theirs_p, strict=True):
        assert ulps(a, b) <= ULPS
    assert_same_state(ours, theirs)
    before = [p.detach().clone() for p in ours_p]
    saved = copy.deepcopy(ours.state_dict())
    ours.param_groups[0]["wd"] = 0.4
    with pytest.raises(
        ValueError, match=r"Muon: param group has 'wd', the rule's name of torch's "
    ):
        run([(ours, ours_p)], range(13, 14))
    assert all(torch.equal(a, b) for a, b in zip(ours_p, before, strict=True))
    buffer = ours.state[ours_p[0]]["momentum_buffer"]
    assert torch.equal(buffer, saved["state"][0]["momentum_buffer"])
    del ours.param_groups[0]["wd"]
    extra = torch.nn.Parameter(torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"param group has 'wd'.*; set weight_decay"):
        ours.add_param_group({"params": [extra], "weight_decay": 0.1, "wd": 0.2})
    with pytest.raises(ValueError, match=r"Muon: eps must be a single value, got \(1e-07,\)"):
        dropin.Muon([extra], eps=(1e-7,))
    assert len(ours.param_groups) == 1
    mine = Muon([extra], wd=0.2)
    assert "weight_decay" not in mine.param_groups[0] and mine.param_groups[0]["wd"] == 0.2


SPARSE_CASES = [
    ("SGD", {}),
    ("SGD", {"momentum": 0.9}),
    ("SGD", {"momentum": 0.9, "nesterov": True}),
    ("SGD", {"momentum": 0.9, "dampening": 0.5, "maximize": True}),
    ("Adagrad", {}),
    ("Adagrad", {"lr_decay": 0.01, "initial_accumulator_value": 0.1, "maximize": True}),
]


def _sparse_run(
    pairs: list[tuple[torch.optim.Optimizer, torch.nn.Embedding]], steps: range
) -> None:
    for t in steps:  # rows 1 and 2 (twice: a duplicate index) every step, one of 5-7 in turn
        rows = torch.tensor([1, 2, 2, 5 + t % 3])
        for opt, table in pairs:
            opt.zero_grad()
            (table(rows) ** 2 - table(rows)).sum().backward()
            grad = table.weight.grad
            assert grad is not None and grad.is_sparse
            kept = grad._values().clone()
            opt.step()
            assert table.weight.grad is grad and torch.equal(grad._values(), kept)


def _table(weights: torch.Tensor) -> torch.nn.Embedding:
    table = torch.nn.Embedding(*weights.shape, sparse=True)
    with torch.no_grad():
        table.weight.copy_(weights)
    return table


@pytest.mark.parametrize(("name", "options"), SPARSE_CASES, ids=[case_id(c) for c in SPARSE_CASES])
def test_sparse_gradients(name: str, options: dict[str, Any]) -> None:
    """torch's SGD and Adagrad take sparse gradients (``nn.Embedding(sparse=True)``): so do
    ours, densified for the step (the parameter's sparse grad is left as it was). 12 steps
    within ULPS of torch's sparse path, the rows without a gradient included, with a
    checkpoint crossing either way at step 6 (torch's SGD keeps a sparse momentum buffer)."""
    torch.manual_seed(0)
    weights = torch.randn(10, 3)
    kwargs = {"lr": 0.1, **options}
    tables = [_table(weights) for _ in range(4)]
    theirs = getattr(torch.optim, name)(tables[0].parameters(), **kwargs)
    ours = getattr(dropin, name)(tables[1].parameters(), **kwargs)
    _sparse_run([(theirs, tables[0]), (ours, tables[1])], range(6))
    theirs2 = getattr(torch.optim, name)(tables[2].parameters(), **kwargs)
    ours2 = getattr(dropin, name)(tables[3].parameters(), **kwargs)
    with torch.no_grad():
        tables[2].weight.copy_(tables[0 if options.get("nesterov") else 1].weight)
        tables[3].weight.copy_(tables[0].weight)
    # torch's Nesterov step adds its buffer to a sparse gradient: sparse + dense, which torch
    # refuses (add(sparse, dense)), so it cannot continue from a dense buffer: ours, or its own
    # of dense gradients; it continues from its own sparse one there
    nesterov = options.get("nesterov", False)
    theirs2.load_state_dict(copy.deepcopy((theirs if nesterov else ours).state_dict()))
    ours2.load_state_dict(copy.deepcopy(theirs.state_dict()))
    pairs = [(theirs, tables[0]), (ours, tables[1]), (theirs2, tables[2]), (ours2, tables[3])]
    _sparse_run(pairs, range(6, 12))
    reference = tables[0].weight
    for table in tables[1:]:
        assert ulps(table.weight, reference) <= ULPS
    assert not torch.equal(reference[1:], weights[1:])  # it moved, but never row 0 (no grad)
    assert all(torch.equal(table.weight[0], weights[0]) for table in tables)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("SGD", {"weight_decay": 0.1}, r"SGD: parameter 1's grad is sparse and weight_decay=0.1"),
        ("Adagrad", {"weight_decay": 0.1}, r"parameter 1's grad is sparse and weight_decay=0.1"),
        ("Adagrad", {"eps": 0.0}, r"Adagrad: parameter 1's grad is sparse and eps=0.0 \(rows"),
        ("Adam", {}, r"Adam: parameter 1's grad is sparse \(torch.sparse_coo\)"),
    ],
)
def test_sparse_gradients_refused(name: str, options: dict[str, Any], message: str) -> None:
    """Where torch refuses a sparse gradient (weight decay; every class but SGD and Adagrad) or
    the dense update would differ from torch's sparse one (Adagrad at eps=0: 0/0 on rows
    without a gradient), ours refuses it naming the parameter and setting, before anything is
    written: weights, state and every grad as they were."""
    torch.manual_seed(0)
    dense = torch.nn.Parameter(torch.randn(4))
    table = _table(torch.randn(10, 3))
    opt = getattr(dropin, name)([dense, table.weight], lr=0.1, **options)
    dense.grad = torch.ones(4)
    table(torch.tensor([1, 2])).sum().backward()
    before = [dense.detach().clone(), table.weight.detach().clone()]
    grad = table.weight.grad
    with pytest.raises(RuntimeError, match=message):  # torch's type (and ours: Value/TypeError)
        opt.step()
    assert torch.equal(dense, before[0]) and torch.equal(table.weight, before[1])
    assert table.weight.grad is grad and grad.is_sparse and not opt.state


COMPLEX_CASES = [
    (name, options)
    for name, options in [
        ("SGD", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1}),
        ("Adam", {"amsgrad": True, "weight_decay": 0.1}),
        ("AdamW", {}),
        ("Adagrad", {"initial_accumulator_value": 0.1, "lr_decay": 0.01}),
        ("RMSprop", {"centered": True, "momentum": 0.5}),
        ("Adadelta", {}),
        ("Adamax", {}),
        ("NAdam", {}),
        ("RAdam", {}),
        ("ASGD", {"t0": 5.0}),
        ("Rprop", {}),
    ]
]


def _parts(x: torch.Tensor) -> torch.Tensor:
    """A complex tensor's real and imaginary parts (``ulps`` compares real tensors)."""
    return torch.view_as_real(x.detach()) if x.is_complex() else x


@pytest.mark.parametrize(("name", "options"), COMPLEX_CASES, ids=[c[0] for c in COMPLEX_CASES])
def test_complex_parameters(name: str, options: dict[str, Any]) -> None:
    """torch.optim updates a complex parameter on its real view (real and imaginary parts
    alone; complex state; Adagrad's and Rprop's initial values in both parts): so do the
    drop-ins, a real parameter in the same group. 20 steps within ULPS of torch's, complex
    state of torch's dtype, a checkpoint crossing either way at step 10."""
    torch.manual_seed(0)
    weights = [torch.randn(3, 4, dtype=torch.complex64), torch.randn(5), torch.randn(7).cfloat()]
    kwargs = {"lr": LR[name], "foreach": False, **options}
    made = [params_from(weights) for _ in range(4)]
    theirs = getattr(torch.optim, name)(made[0], **kwargs)
    ours = getattr(dropin, name)(made[1], **kwargs)
    run([(theirs, made[0]), (ours, made[1])], range(1, 11))
    buffers = [v for v in ours.state[made[1][0]].values() if torch.is_tensor(v) and v.dim()]
    assert buffers and all(v.dtype == torch.complex64 for v in buffers)
    theirs2 = getattr(torch.optim, name)(made[2], **kwargs)
    ours2 = getattr(dropin, name)(made[3], **kwargs)
    with torch.no_grad():
        for a, b, c, d in zip(*made, strict=True):
            c.copy_(b)
            d.copy_(a)
    theirs2.load_state_dict(copy.deepcopy(ours.state_dict()))
    ours2.load_state_dict(copy.deepcopy(theirs.state_dict()))
    run([(o, p) for o, p in zip((theirs, ours, theirs2, ours2), made, strict=True)], range(11, 21))
    for params in made[1:]:
        for a, b in zip(params, made[0], strict=True):
            assert ulps(_parts(a), _parts(b)) <= ULPS
    assert not torch.equal(made[0][0], weights[0])


def test_torch_optims_other_names_are_its_own() -> None:
    """``import generated.torch.optim as optim`` serves code written against torch.optim: every
    name torch.optim exports resolves (ours where a rule is a drop-in, else torch's own:
    lr_scheduler, swa_utils, Optimizer, LBFGS), and a name neither has is refused as such."""
    import generated.torch.optim as optim

    for name in torch.optim.__all__:
        ours = getattr(optim, name)
        assert (ours is getattr(torch.optim, name)) == (name not in dropin.__all__), name
    assert optim.lr_scheduler is torch.optim.lr_scheduler and optim.LBFGS is torch.optim.LBFGS
    p = torch.nn.Parameter(torch.ones(2))
    opt = optim.SGD([p], lr=0.1)
    schedule = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    p.grad = torch.ones(2)
    opt.step()
    schedule.step()
    assert isinstance(opt, optim.Optimizer) and opt.param_groups[0]["lr"] == 0.05
    with pytest.raises(AttributeError, match=r"no attribute 'Adamm', and neither has torch.optim"):
        optim.Adamm  # noqa: B018 (the attribute lookup is the test)


def lockstep(
    theirs: Any,
    ours: Any,
    t: int,
    nan: list[int] | None = None,
    value: float = math.nan,
    first: int | None = None,
) -> None:
    """One step of torch's optimizer and of ours on the same gradients (``set_grads``'s at t),
    with ``value`` put at the flat indices ``nan`` of the first ``first`` parameters' (all)."""
    theirs_p = [p for g in theirs.param_groups for p in g["params"]]
    ours_p = [p for g in ours.param_groups for p in g["params"]]
    set_grads(theirs_p, t)
    for p in theirs_p[:first] if nan else ():
        p.grad.view(-1)[nan] = value
    for p, q in zip(ours_p, theirs_p, strict=True):
        p.grad = q.grad.clone()
    theirs.step()
    ours.step()


@pytest.mark.parametrize("foreach", [False, True])
def test_a_nan_gradient_element_steps_as_torchs(foreach: bool) -> None:
    """Rprop: torch's sign is 0 at NaN, so a NaN gradient element leaves its weight and step
    size as they were (and its NaN, kept as ``prev``, the next step size too); ours the same,
    element for element, NaN where torch has NaN."""
    torch.manual_seed(0)
    weights = [torch.randn(s) for s in SHAPES]
    theirs_p, ours_p = params_from(weights), params_from(weights)
    theirs = torch.optim.Rprop(theirs_p, lr=0.01, foreach=foreach)
    ours = dropin.Rprop(ours_p, lr=0.01, foreach=foreach)
    for t in range(1, 6):
        lockstep(theirs, ours, t, nan=[0, 1] if t in (2, 4) else None)
        for p, q in zip(ours_p, theirs_p, strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=0, equal_nan=True)
    assert all(torch.isfinite(p).all() for p in ours_p)


@pytest.mark.parametrize("foreach", [False, True])
def test_adafactor_keeps_a_1d_weights_nan_to_its_element_as_torch(foreach: bool) -> None:
    """torch's Adafactor takes its step size's and update clip's maxima with Python's ``max``,
    which drops a NaN norm: a NaN or inf gradient element of a 1-D weight is NaN in that element
    only (the NaN-propagating max spread it to the whole weight); a matrix's factors spread it
    to all of it in both. Element for element as torch, NaN where torch has NaN."""
    torch.manual_seed(0)
    weights = [torch.randn(s) for s in [(7,), (3, 4), (), (5,)]]
    theirs_p, ours_p = params_from(weights), params_from(weights)
    theirs = torch.optim.Adafactor(theirs_p, lr=0.01, foreach=foreach)
    ours = dropin.Adafactor(ours_p, lr=0.01, foreach=foreach)
    for t in range(1, 5):
        lockstep(theirs, ours, t, nan=[t % 2], value=math.nan if t == 1 else math.inf, first=2)
        for p, q in zip(ours_p, theirs_p, strict=True):
            assert torch.equal(p.isnan(), q.isnan())
            torch.testing.assert_close(p, q, equal_nan=True)
    assert int(ours_p[0].isnan().sum()) == 2 and ours_p[1].isnan().all()
    assert torch.isfinite(ours_p[3]).all()


def test_state_dicts_run_no_step_the_global_hooks_see() -> None:
    """``state_dict()`` learns which buffers torch creates for the settings from a step of a
    private torch optimizer; the user's global step hooks (``register_optimizer_step_*_hook``)
    saw that step as one of torch's RMSprop. Now they see only the user's steps."""
    from torch.optim import optimizer as torch_optimizer

    from optgen_runtime.optim import exchange

    exchange._torch_creates.cache_clear()
    seen: list[str] = []
    handles = [
        torch_optimizer.register_optimizer_step_pre_hook(lambda o, a, k: seen.append("pre")),
        torch_optimizer.register_optimizer_step_post_hook(
            lambda o, a, k: seen.append(type(o).__module__)
        ),
    ]
    try:
        p = torch.nn.Parameter(torch.ones(3))
        opt = dropin.RMSprop([p], momentum=0.5)
        p.grad = torch.ones(3)
        opt.step()
        assert seen == ["pre", "generated.torch.optim"]
        state = opt.state_dict()
        opt.load_state_dict(state)
        assert seen == ["pre", "generated.torch.optim"]
        assert "momentum_buffer" in state["state"][0]
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("backend", ["auto", "numpy"])
def test_tensor_betas_changed_in_place_change_the_step(backend: str) -> None:
    """torch keeps ``betas`` as given (a tuple of the user's 0-d tensors) and reads them at each
    step, so ``b1.fill_(0.5)`` between steps changes beta1; the drop-in turned them into floats
    in its constructor and kept stepping with 0.9. Against torch with the same values as floats
    (torch's tensor path computes its bias corrections in float32), the fast step included."""
    torch.manual_seed(0)
    weights = [torch.randn(s) for s in SHAPES]
    theirs_p, ours_p = params_from(weights), params_from(weights)
    b1, b2 = torch.tensor([0.9]), torch.tensor(0.999)
    theirs = torch.optim.Adam(theirs_p, lr=0.01)
    ours = dropin.Adam(ours_p, lr=0.01, betas=[b1, b2], backend=backend)
    group = ours.param_groups[0]
    assert type(group["betas"]) is tuple and group["betas"][1] is b2
    assert group["betas"][0].data_ptr() == b1.data_ptr()  # torch's 0-d view of it
    for t in range(1, 7):
        if t in (3, 5):
            b1.fill_(0.5 if t == 3 else 0.0)
            b2.fill_(0.99)
        theirs.param_groups[0]["betas"] = (float(b1), float(b2))
        lockstep(theirs, ours, t)
        for p, q in zip(ours_p, theirs_p, strict=True):
            torch.testing.assert_close(p, q)
    assert ours.state_dict()["param_groups"][0]["betas"][0].item() == 0.0


def test_state_dict_hooks_see_torchs_format() -> None:
    """A ``register_state_dict_post_hook`` sees the state dict torch's Adagrad hands its own
    (``sum``, a float32 ``step``; groups without the rule's names) and may replace it; a
    ``register_load_state_dict_pre_hook`` sees the dict as given (torch's), and what it returns
    is loaded."""
    seen: dict[str, Any] = {}

    def post(name: str) -> Any:
        def hook(opt: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
            seen[name] = copy.deepcopy(state_dict)
            return {**state_dict, "marked": name}

        return hook

    def pre(opt: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
        seen["pre"] = copy.deepcopy(state_dict)
        loaded = copy.deepcopy(state_dict)
        loaded["param_groups"][0]["lr"] = 0.5
        return loaded

    torch.manual_seed(0)
    weights = [torch.randn(s) for s in SHAPES]
    theirs_p, ours_p = params_from(weights), params_from(weights)
    theirs = torch.optim.Adagrad(theirs_p, lr=0.1)
    ours = dropin.Adagrad(ours_p, lr=0.1)
    run([(theirs, theirs_p), (ours, ours_p)], range(1, 3))
    theirs.register_state_dict_post_hook(post("theirs"))
    ours.register_state_dict_post_hook(post("ours"))
    assert ours.state_dict()["marked"] == "ours"
    theirs.state_dict()
    mine, reference = seen["ours"], seen["theirs"]
    assert mine["param_groups"][0].keys() == reference["param_groups"][0].keys()
    for index, st in reference["state"].items():
        assert mine["state"][index].keys() == st.keys()
        assert all(mine["state"][index][k].dtype == v.dtype for k, v in st.items())
    fresh = dropin.Adagrad(params_from(weights), lr=0.1)
    fresh.register_load_state_dict_pre_hook(pre)
    fresh.load_state_dict(copy.deepcopy(theirs.state_dict()))
    assert "sum" in seen["pre"]["state"][0] and fresh.param_groups[0]["lr"] == 0.5


# torch.distributed.checkpoint's flattened load rebuilds a state dict from the live group keys
# and state names: Adafactor's ('row_var'/'col_var', the rule's 'row'/'col') differ from its
# state_dict's (Adagrad's did until 2026-12-06: its state is named 'sum' now, as torch's)
FLATTEN_REFUSED = {"Adafactor": "row"}
FLATTEN_CASES = [
    *((name, {}) for name in sorted(dropin.__all__) if name != "SparseAdam"),
    ("Adam", {"amsgrad": True}),
    ("RMSprop", {"momentum": 0.9}),
    ("RMSprop", {"centered": True}),
    ("SGD", {"momentum": 0.9}),
]


def _flat_model(name: str) -> torch.nn.Module:
    bias = name != "Muon"  # (Muon takes matrices alone)
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 3, bias=bias), torch.nn.Tanh(), torch.nn.Linear(3, 2, bias=bias)
    )


def _flat_train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for t in steps:
        x = torch.randn(5, 4, generator=torch.Generator().manual_seed(t))
        opt.zero_grad()
        model(x).square().sum().backward()
        opt.step()


def _flat_resume(name: str, make: Any, init_state: bool = False) -> None:
    """3 steps of ``make(params)``'s optimizer, its flattened DCP state dict
    (``flatten_optimizer_state_dict=True``) loaded into a fresh one (after ``init_state()`` if
    asked: DCP's own initialising step is at lr=0), 3 more steps: the weights of an unbroken
    run of 6, to the bit."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    flat = StateDictOptions(flatten_optimizer_state_dict=True)
    unbroken, saver = _flat_model(name), _flat_model(name)
    _flat_train(unbroken, make(unbroken.parameters()), range(1, 7))
    first = make(saver.parameters())
    _flat_train(saver, first, range(1, 4))
    saved = get_optimizer_state_dict(saver, first, options=flat)
    assert all(not isinstance(v, dict) for v in saved.values())  # flattened
    loader = copy.deepcopy(saver)
    resumed = make(loader.parameters())
    if init_state:
        resumed.init_state()
    set_optimizer_state_dict(loader, resumed, saved, options=flat)
    _flat_train(loader, resumed, range(4, 7))
    for a, b in zip(loader.parameters(), unbroken.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", FLATTEN_CASES, ids=case_id)
def test_dcp_flattened_state_dict_resumes(case: tuple[str, dict[str, Any]]) -> None:
    """torch.distributed.checkpoint with ``flatten_optimizer_state_dict=True`` (torchtitan's
    setting: its load rebuilds the state dict from the optimizer's live group keys and state
    names, so the drop-in's must be its state_dict's): saved after 3 steps and loaded into a
    fresh optimizer, 3 more steps equal an unbroken run to the bit; torch.optim's flattened
    state dict loads too (torch's values). Adafactor keeps its factors under other names than
    torch's: refused, naming the setting to use."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    name, options = case
    flat = StateDictOptions(flatten_optimizer_state_dict=True)
    settings = {"lr": LR[name], **options}

    def make(params: Any) -> torch.optim.Optimizer:
        return getattr(dropin, name)(params, **settings)

    if name in FLATTEN_REFUSED:
        with pytest.raises(ValueError, match=rf"'{FLATTEN_REFUSED[name]}' = \{{\}}.*=False"):
            _flat_resume(name, make)
        return
    _flat_resume(name, make)
    theirs_model = _flat_model(name)
    theirs = getattr(torch.optim, name)(theirs_model.parameters(), **settings)
    _flat_train(theirs_model, theirs, range(1, 4))
    mine = copy.deepcopy(theirs_model)
    ours = getattr(dropin, name)(mine.parameters(), **settings)
    torchs = get_optimizer_state_dict(theirs_model, theirs, options=flat)
    set_optimizer_state_dict(mine, ours, torchs, options=flat)
    assert_same_state(ours, theirs)


@pytest.mark.parametrize("dampening", [0.0, 0.5])
def test_sgd_momentum_switched_on_mid_run_starts_from_the_gradient(dampening: float) -> None:
    """torch's SGD makes its momentum buffer when momentum is first non-zero, from the gradient
    itself (``clone(grad)``: no dampening), at any step; so does the drop-in (it restarts the
    step count, which torch does not keep): within ULPS of torch after 3 steps without momentum
    and 6 with (the rule's running count made the first buffer ``(1 - dampening) * g``)."""
    torch.manual_seed(0)
    weights = [torch.randn(s) for s in SHAPES]
    theirs_p, ours_p = params_from(weights), params_from(weights)
    theirs = torch.optim.SGD(theirs_p, lr=0.05, foreach=False)
    ours = dropin.SGD(ours_p, lr=0.05, foreach=False)
    run([(theirs, theirs_p), (ours, ours_p)], range(1, 4))
    for opt in (theirs, ours):
        opt.param_groups[0].update(momentum=0.9, dampening=dampening)
    run([(theirs, theirs_p), (ours, ours_p)], range(4, 10))
    for a, b in zip(ours_p, theirs_p, strict=True):
        assert ulps(a, b) <= ULPS
    assert_same_state(ours, theirs)


@pytest.mark.parametrize("rule", ["Adam", "LAMB", "SGLD", "Adafactor", "SGDMomentum", "FTML"])
def test_dcp_flattened_state_dict_resumes_the_spec_named_classes(rule: str) -> None:
    """The spec-named classes (``generated.torch``: the rule's names in their groups and state,
    ``betas`` beside ``beta1``/``beta2`` where torch has it) under the same flattened DCP
    round trip: their live keys are their state_dict's, so 3 more steps equal an unbroken run
    to the bit (noise, per-tensor norms and row/column factors included)."""
    import generated.torch as classes

    cls = getattr(classes, rule)
    settings = {"lr": 1e-3} if rule == "SGLD" else {}
    # (FTML's lr=0 is outside its legal values: init_state() before DCP's initialising step)
    _flat_resume(rule, lambda params: cls(params, **settings), init_state=rule == "FTML")
