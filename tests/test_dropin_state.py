"""The drop-in classes' (``generated.torch.optim``) state against torch.optim's, on the CPU: a
state written in torch's format (as ZeroRedundancyOptimizer writes it), a buffer torch does not
keep, float32 host states, the same bytes of state; state dicts refused naming their wrong
entries, state_dict hooks and the global step hooks, and torch.distributed.checkpoint's
flattened state dicts. Cases, weights and comparisons from tests/test_dropin.py.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from conftest import DEVICE
from test_dropin import (
    CASES,
    LR,
    SHAPES,
    assert_same_state,
    case_id,
    groups,
    params_from,
    run,
    shapes_of,
    switches,
    torch_in_float32,
)

import generated.torch.optim as dropin


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


HOST_STATE_CASES = [  # (our class, its options, torch's class, its options)
    ("optim.NAdam", {"lr": 0.01}, "NAdam", {"lr": 0.01}),
    (
        "optim.NAdam",
        {"lr": 0.01, "momentum_decay": 0.1},
        "NAdam",
        {"lr": 0.01, "momentum_decay": 0.1},
    ),
    ("optim.ASGD", {"lr": 0.05, "t0": 2.0}, "ASGD", {"lr": 0.05, "t0": 2.0}),
    ("TorchNAdam", {"lr": 0.01}, "NAdam", {"lr": 0.01}),
    ("TorchASGD", {"lr": 0.05, "t0": 2.0}, "ASGD", {"lr": 0.05, "t0": 2.0}),
    ("NAdam", {"lr": 0.01}, "NAdam", {"lr": 0.01}),
]


@pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "foreach"])
@pytest.mark.parametrize("case", HOST_STATE_CASES, ids=lambda c: f"{c[0]}{c[1]}")
def test_torch_resumes_from_our_host_states_to_the_bit(case: tuple, foreach: bool) -> None:
    """A torch state dict passed through our class (loaded, then given back: the drop-in's
    ``state_dict``, a spec-named class's ``to_torch_state_dict``) holds NAdam's ``mu_product`` and
    ASGD's ``eta``/``mu`` as torch's own does, 0-d tensors of its dtype (until 2026-12-07: float64
    tensors from the drop-ins, Python floats from the spec-named classes; torch's loader casts
    either), and torch resumes from it to the bit. A spec-named class gives torch's default
    ``foreach`` (None: the for-loop on CPU), which the unbroken run takes too from then on."""
    import generated.torch as classes

    ours_name, ours_options, torch_name, torch_options = case
    make = getattr(dropin, ours_name[6:]) if ours_name.startswith("optim.") else None
    make = make or getattr(classes, ours_name)
    torch.manual_seed(0)
    weights = [torch.randn(16, 8), torch.randn(8)]
    unbroken_p, resumed_p = params_from(weights), params_from(weights)
    unbroken = getattr(torch.optim, torch_name)(unbroken_p, foreach=foreach, **torch_options)
    run([(unbroken, unbroken_p)], range(1, 4))
    with torch.no_grad():
        for p, q in zip(resumed_p, unbroken_p, strict=True):
            p.copy_(q)
    ours = make(resumed_p, **ours_options)
    spec_named = not ours_name.startswith("optim.")
    (ours.load_torch_state_dict if spec_named else ours.load_state_dict)(unbroken.state_dict())
    given = ours.to_torch_state_dict() if spec_named else ours.state_dict()
    theirs = unbroken.state_dict()["state"]
    for index, st in theirs.items():
        for key, value in st.items():
            assert isinstance(given["state"][index][key], torch.Tensor), key
            assert given["state"][index][key].dtype == value.dtype, key
    resumed = getattr(torch.optim, torch_name)(resumed_p, foreach=foreach, **torch_options)
    resumed.load_state_dict(given)
    for group in unbroken.param_groups:
        group["foreach"] = given["param_groups"][0]["foreach"]
    run([(unbroken, unbroken_p), (resumed, resumed_p)], range(4, 9))
    for a, b in zip(resumed_p, unbroken_p, strict=True):
        assert torch.equal(a, b)


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
    for cls in (dropin.AdamW, torch.optim.AdamW):  # the group AdamW's, as torch's __setstate__
        adamw = cls([torch.nn.Parameter(torch.ones(3))])
        adamw.load_state_dict(copy.deepcopy(adam.state_dict()))
        assert adamw.param_groups[0]["decoupled_weight_decay"] is True


def test_spec_named_factored_class_points_to_the_drop_in() -> None:
    """``generated.torch.Adafactor`` (optgen's class of the same rule) does not export torch's
    layout itself: it names the drop-in that does."""
    from generated.torch import Adafactor

    opt = Adafactor([torch.nn.Parameter(torch.ones(2, 3))])
    with pytest.raises(NotImplementedError, match=r"generated\.torch\.optim\.Adafactor"):
        opt.to_torch_state_dict()


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


def test_a_host_state_keeps_torchs_dtype_unless_that_loses_its_value() -> None:
    """``host_state_tensor``: torch's scalar dtype (float32; float64 under a float64 default
    dtype), float64 where float32 would round the value (an MXNet rule's double)."""
    from optgen_runtime.optim.exchange import host_state_tensor

    exact = float(torch.tensor(0.1, dtype=torch.float32))
    assert host_state_tensor(exact).dtype == torch.float32
    assert host_state_tensor(exact).item() == exact
    assert host_state_tensor(0.1).dtype == torch.float64  # 0.1 is no float32
    assert host_state_tensor(0.1).item() == 0.1
    assert host_state_tensor(float("nan")).dtype == torch.float32
    assert host_state_tensor(float("inf")).dtype == torch.float32
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert host_state_tensor(exact).dtype == torch.float64
    finally:
        torch.set_default_dtype(before)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "variance",
            torch.zeros(4),
            r"saved state 1\['variance'\] shape is \(4,\), expected \(3,\)",
        ),
        (
            "variance",
            [0.5, 0.5, 0.5],
            r"saved state 1\['variance'\] must be a torch.Tensor, got list",
        ),
        (
            "row_var",
            torch.zeros(2),
            r"saved state 0\['row_var'\] shape is \(2,\), expected \(2, 1\)",
        ),
        ("col_var", torch.zeros(1, 4), r"saved state 0\['col_var'\] shape is \(1, 4\), expected"),
    ],
)
def test_a_bad_adafactor_factor_is_named_as_torch_keeps_it(key, value, message) -> None:
    """A torch Adafactor state dict whose factor is not torch's shape is refused naming torch's
    key and shape (until 2026-12-07 the rule's ``row``/``col`` and their squeezed shapes: found
    by tests/fuzz/test_fuzz_dropin.py), and the optimizer is left as it was."""
    torch.manual_seed(0)
    weights = [torch.randn(2, 3), torch.randn(3)]
    theirs_p = params_from(weights)
    theirs = torch.optim.Adafactor(theirs_p, lr=0.05)
    run([(theirs, theirs_p)], range(1, 3))
    sd = copy.deepcopy(theirs.state_dict())
    sd["state"][1 if key == "variance" else 0][key] = value
    ours = dropin.Adafactor(params_from(weights), lr=0.05)
    with pytest.raises((TypeError, ValueError), match=f"^Adafactor.load_state_dict: {message}"):
        ours.load_state_dict(sd)
    assert not ours.state


@pytest.mark.parametrize(
    ("name", "key", "value", "named"),
    [
        ("Muon", "eps", torch.tensor([0.5, 0.5]), "eps must be a real number"),
        ("Muon", "ns_steps", None, "ns_steps may not be None"),
        ("Adam", "betas", (0.9, 1.5), r"betas\[1\]=1.5 is outside"),
    ],
)
def test_a_loaded_groups_bad_setting_is_named_before_its_states(name, key, value, named) -> None:
    """A loaded group's setting our rule cannot take is refused naming it, before its states are
    read (Muon's ``eps`` as a two-element tensor was refused as a state lacking ``step``: torch's
    probe of which buffers it keeps failed on it; found by tests/fuzz/test_fuzz_dropin.py)."""
    torch.manual_seed(0)
    shapes = [(4, 3)] if name == "Muon" else [(3,)]
    weights = [torch.randn(s) for s in shapes]
    theirs_p = params_from(weights)
    theirs = getattr(torch.optim, name)(theirs_p)
    run([(theirs, theirs_p)], range(1, 3))
    sd = copy.deepcopy(theirs.state_dict())
    sd["param_groups"][0][key] = value
    ours = getattr(dropin, name)(params_from(weights))
    groups = copy.deepcopy(
        [{k: v for k, v in g.items() if k != "params"} for g in ours.param_groups]
    )
    with pytest.raises((TypeError, ValueError), match=f"^{name}: hyperparameter {named}"):
        ours.load_state_dict(sd)
    assert not ours.state
    assert [{k: v for k, v in g.items() if k != "params"} for g in ours.param_groups] == groups


def test_adamw_keeps_its_decoupled_weight_decay_through_a_load_and_pickling() -> None:
    """torch.optim.AdamW's ``__setstate__`` sets ``decoupled_weight_decay=True`` in every group
    when it loads a state dict or is unpickled, whatever the group held (the long fuzz profile
    found the drop-in loading ``decoupled_weight_decay=0`` and decaying as Adam does); a group
    changed between steps is read as torch reads it."""
    import pickle

    weights = [torch.tensor([1.5, -0.3, -2.1])]
    runs = []
    for cls in (dropin.AdamW, torch.optim.AdamW):
        source_p = params_from(weights)
        source = cls(source_p, lr=0.1, weight_decay=0.5)
        source_p[0].grad = torch.full((3,), 0.3)
        source.step()
        saved = source.state_dict()
        saved["param_groups"][0]["decoupled_weight_decay"] = 0
        params = params_from(weights)
        opt = cls(params, lr=0.1, weight_decay=0.5)
        opt.load_state_dict(saved)
        assert opt.param_groups[0]["decoupled_weight_decay"] is True
        params[0].grad = torch.full((3,), 0.9)
        opt.step()
        opt.param_groups[0]["decoupled_weight_decay"] = False  # read at the next step
        opt.step()
        assert pickle.loads(pickle.dumps(opt)).param_groups[0]["decoupled_weight_decay"] is True
        runs.append(params[0].detach())
    assert torch.allclose(runs[0], runs[1], rtol=1e-6, atol=0)
