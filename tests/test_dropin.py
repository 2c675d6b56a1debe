"""The drop-in classes (``generated.torch.optim``) against torch.optim itself, on the CPU (and,
in a GPU run, ``TRITON_INTERPRET=0``, ``test_matches_torch`` on CUDA tensors: Triton against
torch's CUDA kernels; tools/gpu_check.py runs it so).

For every option combination torch documents: 50 steps of ours and of ``torch.optim.<name>``
(single-tensor path) from the same weights and gradients, two param groups; at step 25 each
saves a state_dict that a fresh optimizer of the other kind loads and continues from. All four
must stay within ``ULPS`` float32 ulps of torch's weights (and the state buffers likewise, by
their magnitude). Also: values at the edges of float32 (a gradient whose square overflows, lerp
weights of 0.5 or more, an infinite weight, NaN gradient elements), sparse gradients, complex
parameters. Elsewhere, with this file's helpers: torch's signature and defaults, LR schedulers
(lr and betas/momentum cycling), the implementation switches, torch's argument checks, settings
changed between steps (tests/test_dropin_interface.py); the state: torch's format and memory,
state_dict refusals and hooks, DCP's flattened checkpoints (tests/test_dropin_state.py).
"""

from __future__ import annotations

import copy
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
            assert got.dtype == value.dtype, key
            assert got.shape == value.shape, key
            assert ulps(got, value) <= allowed(type(ours).__name__), key


def test_every_drop_in_is_compared() -> None:
    """Each class of generated.torch.optim has trajectory cases above (a new drop-in adds its
    option combinations there), but SparseAdam, which takes sparse gradients only: its own in
    tests/test_sparse_adam.py."""
    assert {name for name, _ in CASES} == set(dropin.__all__) - {"SparseAdam"}


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
    state = {p: copy.deepcopy(v) for p, v in opt.state.items()}  # Adagrad: made when built
    grad = table.weight.grad
    with pytest.raises(RuntimeError, match=message):  # torch's type (and ours: Value/TypeError)
        opt.step()
    assert torch.equal(dense, before[0]) and torch.equal(table.weight, before[1])
    assert table.weight.grad is grad and grad.is_sparse
    assert opt.state.keys() == state.keys()
    for p, entries in state.items():
        assert opt.state[p].keys() == entries.keys()
        assert all(torch.equal(opt.state[p][k], v) for k, v in entries.items())


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
