"""The generated torch.optim-style classes (``generated.torch``), on the CPU.

The NumPy backend runs natively; the Triton backend runs in the interpreter on CPU tensors.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from conftest import (
    ALL_RULES,
    RULES,
    TORCH_DIFFERS,
    class_inputs,
    numpy_module,
    tolerance,
    torch_peer,
)
from reference import sample_hyperparams

from generated.torch import RULES as CLASSES
from generated.torch import optim as dropin
from optgen_runtime.optim.layout import elementwise
from optgen_runtime.philox import tensor_seed
from optgen_runtime.triton_launch import LAUNCHES

SIZES = [(3, 5), (7,), (1,), (4, 4)]


def test_every_rule_has_a_class() -> None:
    assert set(CLASSES) == set(ALL_RULES)
    assert CLASSES["adam"].__name__ == "Adam" and CLASSES["rmsprop"].__name__ == "RMSprop"
    assert "w_{i+1}" in CLASSES["adam"].__doc__  # the rule's equations


def make_params(dtype: torch.dtype = torch.float32) -> list[torch.nn.Parameter]:
    torch.manual_seed(1)
    return [torch.nn.Parameter(torch.randn(s).to(dtype)) for s in SIZES]


def two_groups(rule: str, params: list[torch.nn.Parameter]) -> list[dict]:
    hp = sample_hyperparams(RULES[rule], np.random.default_rng(3))
    other = dict(hp)
    if "lr" in other:
        other["lr"] = other["lr"] * 0.5
    return [{"params": params[:2], **hp}, {"params": params[2:], **other}]


def set_grads(params: list[torch.nn.Parameter], step: int) -> None:
    gen = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(p.device, p.dtype)


@pytest.mark.parametrize("backend", ["numpy", "triton"])
def test_class_matches_the_numpy_module(rule_name: str, backend: str) -> None:
    """20 steps, four tensors of odd sizes, two groups with different hyperparameters."""
    params = make_params()
    groups = two_groups(rule_name, params)
    opt = CLASSES[rule_name](groups, backend=backend)
    module = numpy_module(rule_name)
    arrays = [p.detach().numpy().copy() for p in params]
    hps = [{k: v for k, v in g.items() if k in module.HYPERPARAMS} for g in groups]
    states = [module.init_state(a, **hps[0 if i < 2 else 1]) for i, a in enumerate(arrays)]
    for t in range(1, 21):
        set_grads(params, t)
        grads = [p.grad.numpy().copy() for p in params]
        extra = class_inputs(opt, t)  # step(hessian=[one per parameter]) for AdaHessian
        opt.step(**extra)
        if module.GROUP_REDUCTIONS:  # documented: a group's reductions cover its parameters
            for members, g in ((slice(0, 2), groups[0]), (slice(2, 4), groups[1])):
                hp = {k: v for k, v in g.items() if k in module.HYPERPARAMS}
                module.step_multi(arrays[members], grads[members], states[members], t, **hp)
            continue
        for i, (a, s) in enumerate(zip(arrays, states, strict=True)):
            g = groups[0] if i < 2 else groups[1]
            hp = {k: v for k, v in g.items() if k in module.HYPERPARAMS}
            if module.DRAWS:  # documented: parameter i draws from tensor_seed(seed, i)
                hp["seed"] = tensor_seed(hp.get("seed", 0), i)
            mine = {k: v[i].numpy() if k in module.INPUTS else v for k, v in extra.items()}
            module.step(a, grads[i], s, t, **hp, **mine)
    for p, a in zip(params, arrays, strict=True):
        if backend == "numpy":
            np.testing.assert_array_equal(p.detach().numpy(), a)
        else:
            np.testing.assert_allclose(p.detach().numpy(), a, **tolerance(np.float32, 20))


@pytest.mark.parametrize("name", sorted(ALL_RULES))
def test_initial_state_is_the_numpy_modules(name: str) -> None:
    """The classes make a parameter's initial state where it lives (the rule's
    ``initial_values``, no NumPy round trip): to the bit the NumPy module's ``init_state`` of
    the same weight, at sampled hyperparameters (an initial accumulator value among them), in
    float32 and float64, from a transposed weight: in its strides for a rule shown weights in
    memory order (``optgen_runtime.optim.layout``), else C-contiguous; host states too."""
    module = numpy_module(name)
    hp = sample_hyperparams(ALL_RULES[name], np.random.default_rng(5))
    hp = {k: v for k, v in hp.items() if k in module.HYPERPARAMS}
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(2)
        p = torch.nn.Parameter(torch.randn(4, 6, dtype=dtype).t())  # not contiguous
        opt = CLASSES[name]([{"params": [p], **hp}], backend="numpy")
        opt.init_state()
        want = module.init_state(p.detach().numpy().copy(), **hp)
        state = opt.state[p]
        made = [k for k in module.STATES if k in state]
        assert {*made, *opt._absent(opt._hyper(opt.param_groups[0]))} == set(module.STATES)
        for key in made:
            got = state[key]
            laid = p.stride() if elementwise(opt.META) else got.contiguous().stride()
            assert got.stride() == laid and got.dtype == dtype, (name, key)
            np.testing.assert_array_equal(got.numpy(), want[key], err_msg=f"{name} {key}")
            bits = np.ascontiguousarray(got.numpy()).view(np.uint8)
            assert np.array_equal(bits, want[key].view(np.uint8))
        for key in module.HOST_STATES:
            assert state[key] == want[key] and type(state[key]) is float, (name, key)


def test_one_launch_per_group_and_dtype(rule_name: str) -> None:
    """The Triton backend makes exactly one update launch per (group, dtype combination,
    alignment class: ChunkTable.vectorisable), and one reduction launch more for per-tensor
    norms, whatever the parameters' step counts (a parameter skipped earlier for want of a
    gradient), host states and noise streams; and its results follow the NumPy backend's."""
    module = numpy_module(rule_name)
    params = make_params()
    params.append(torch.nn.Parameter(torch.randn(6).to(torch.bfloat16)))  # group 2: two dtypes
    groups = two_groups(rule_name, params)
    opt = CLASSES[rule_name](groups, backend="triton")
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params[:4]]
    twin_groups = [{**groups[0], "params": twins[:2]}, {**groups[1], "params": twins[2:]}]
    reference = CLASSES[rule_name](twin_groups, backend="numpy")
    phases = sum(name.startswith("reduction_scalars") for name in vars(module))
    per_step = 1 + phases
    for t in range(1, 5):
        set_grads(params, t)
        if t == 1:
            params[1].grad = None  # parameter 1 runs one step behind from now on
        for p, q in zip(params, twins, strict=False):
            q.grad = None if p.grad is None else p.grad.clone()
        LAUNCHES["count"] = 0
        opt.step(**class_inputs(opt, t))
        if not RULES[rule_name].vector_values:  # those: one launch per sweep and tensor
            # group 1: fp32 (sizes 15 and 7: the scalar variant); group 2: fp32 size 1 (scalar),
            # fp32 4x4 (16 elements, 16-byte aligned: the vectorised variant) and bf16
            assert LAUNCHES["count"] == per_step * 4
        reference.step(**class_inputs(reference, t))
    steps = [int(opt.state[p]["step"]) for p in params]
    assert steps == [4, 3, 4, 4, 4]
    if module.GROUP_REDUCTIONS:
        # the twins' group 2 lacks the bf16 parameter, so its group reductions differ; host
        # states may be group values (Prodigy's d: d0 in both until the estimate grows)
        return
    if module.HOST_STATES:  # e.g. NAdam's schedule: different per parameter (ASGD's mu is 1
        # in both until t0)
        assert any(opt.state[params[0]][k] != opt.state[params[1]][k] for k in module.HOST_STATES)
    for p, q in zip(params, twins, strict=False):
        np.testing.assert_allclose(
            p.detach().numpy(), q.detach().numpy(), **tolerance(np.float32, 4)
        )


def test_params_without_grad_are_skipped() -> None:
    params = make_params()
    opt = CLASSES["adam"](params, lr=0.1)
    set_grads(params, 1)
    params[1].grad = None
    before = params[1].detach().clone()
    opt.step()
    assert torch.equal(params[1], before) and params[1] not in opt.state
    assert int(opt.state[params[0]]["step"]) == 1


def test_sparse_and_mixed_devices_are_refused_before_any_write() -> None:
    params = make_params()
    opt = CLASSES["adamw"](params, lr=0.1)  # (MXNet's rules take them: RULE.sparse)
    set_grads(params, 1)
    params[3].grad = params[3].grad.to_sparse()
    before = [p.detach().clone() for p in params]
    with pytest.raises(TypeError, match="AdamW: parameter 3's grad is sparse"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    meta = torch.nn.Parameter(torch.empty(3, device="meta"))
    meta.grad = torch.empty(3, device="meta")
    opt2 = CLASSES["sgd"]([params[0], meta], lr=0.1)
    set_grads(params[:1], 2)
    with pytest.raises(ValueError, match="spans devices"):
        opt2.step()


def test_bad_hyperparameters_are_refused() -> None:
    params = make_params()
    with pytest.raises(ValueError, match=r"Adam: hyperparameter beta1=1.5 is outside"):
        CLASSES["adam"](params, beta1=1.5)
    opt = CLASSES["adam"](params[:2])
    with pytest.raises(ValueError, match=r"lr=-1\.0"):
        opt.add_param_group({"params": params[2:], "lr": -1.0})
    assert len(opt.param_groups) == 1


def train(opt_factory, steps: int, params=None, opt=None, start: int = 1):
    params = params if params is not None else make_params()
    opt = opt if opt is not None else opt_factory(params)
    for t in range(start, start + steps):
        set_grads(params, t)
        opt.step(**class_inputs(opt, t))
    return params, opt


@pytest.mark.parametrize("backend", ["numpy", "triton"])
def test_state_dict_round_trip_is_bit_identical(rule_name: str, backend: str) -> None:
    cls = CLASSES[rule_name]

    def factory(ps):
        return cls(two_groups(rule_name, ps), backend=backend)

    straight, _ = train(factory, 10)
    first, opt = train(factory, 5)
    saved = copy.deepcopy(opt.state_dict())
    fresh = [torch.nn.Parameter(p.detach().clone()) for p in first]
    resumed = factory(fresh)
    resumed.load_state_dict(saved)
    train(None, 5, params=fresh, opt=resumed, start=6)
    for a, b in zip(straight, fresh, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_with_master_weights(dtype: torch.dtype) -> None:
    params = make_params(dtype)
    opt = CLASSES["adam"](params, lr=0.01, multi_precision=True)
    reference = [torch.nn.Parameter(p.detach().float()) for p in params]
    ref_opt = CLASSES["adam"](reference, lr=0.01)
    for t in range(1, 6):
        set_grads(params, t)
        for r, p in zip(reference, params, strict=True):
            r.grad = p.grad.float()
        opt.step()
        ref_opt.step()
    for p, r in zip(params, reference, strict=True):
        master = opt.state[p]["master"]
        assert master.dtype == torch.float32
        torch.testing.assert_close(master, r.detach(), rtol=1e-6, atol=1e-7)
        assert torch.equal(p.detach(), master.to(dtype))
    assert "master" in opt.state_dict()["state"][0]


CHANGES = {
    "fill_": lambda p: p.fill_(0.75),
    "copy_": lambda p: p.copy_(torch.linspace(-1, 1, p.numel()).view(p.shape)),
    "data": lambda p: setattr(p, "data", torch.full_like(p, -0.5)),
}


MASTER_CASES = [("adam", "numpy"), ("adam", "auto"), ("adam", "triton"), ("adafactor", "auto")]


@pytest.mark.parametrize("change", sorted(CHANGES))
@pytest.mark.parametrize(("name", "backend"), MASTER_CASES)
def test_a_parameter_changed_outside_the_optimizer_is_not_lost_to_its_master(
    name: str, backend: str, change: str
) -> None:
    """``multi_precision=True``: a bf16 parameter changed after a step (in place, or another
    tensor put in) makes its master again before the next step, as the first step makes one,
    on the full step and the fast one: the same bits as an optimizer whose master was changed
    with it; a resume (masters loaded) keeps the loaded masters."""
    dtype = torch.bfloat16

    def make() -> tuple[list[torch.nn.Parameter], Any]:
        params = make_params(dtype)
        return params, CLASSES[name](params, lr=0.01, backend=backend, multi_precision=True)

    params, opt = make()
    others, expected = make()
    train(None, 3, params=params, opt=opt)  # the later steps fast (a plan)
    train(None, 3, params=others, opt=expected)
    with torch.no_grad():
        CHANGES[change](params[1])
        CHANGES[change](others[1])
        expected.state[others[1]]["master"].copy_(others[1].float())
    train(None, 3, params=params, opt=opt, start=4)
    train(None, 3, params=others, opt=expected, start=4)
    assert float(params[1].detach().float().mean()) != float(
        make_params(dtype)[1].detach().float().mean()
    )
    for p, q in zip(params, others, strict=True):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["master"], expected.state[q]["master"])
    # resumed: the model's weights loaded (their versions move), then the optimizer's state
    saved = copy.deepcopy(opt.state_dict())
    resumed_params, resumed = make()
    with torch.no_grad():
        for a, b in zip(resumed_params, params, strict=True):
            a.copy_(b)
    resumed.load_state_dict(saved)
    train(None, 2, params=resumed_params, opt=resumed, start=7)
    train(None, 2, params=params, opt=opt, start=7)
    assert all(torch.equal(a, b) for a, b in zip(resumed_params, params, strict=True))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_master_weight_steps_reuse_one_gradient_buffer(dtype: torch.dtype) -> None:
    """On the CPU a fp16/bf16 gradient reaches its fp32 master through one scratch buffer the
    optimizer keeps (not in ``state_dict()``; the NumPy backend converts one parameter at a time
    into the largest parameter's size, the numba backend all of a group's at once into their
    total size): after the first step no ``Tensor.to`` runs (the old per-step full-size
    conversion) and the buffer stays."""
    params = make_params(dtype)
    opt = CLASSES["adam"](params, lr=0.01, multi_precision=True)
    set_grads(params, 1)
    opt.step()
    scratch = opt._scratch
    sizes = [p.numel() for p in params]
    size = sum(sizes) if opt._use_numba() else max(sizes)
    assert scratch.dtype == torch.float32 and scratch.numel() == size
    pointer = scratch.data_ptr()
    conversions = []
    to = torch.Tensor.to

    def spy(self, *args, **kwargs):
        conversions.append(tuple(self.shape))
        return to(self, *args, **kwargs)

    for t in range(2, 5):
        set_grads(params, t)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch.Tensor, "to", spy)
            opt.step()
    assert conversions == []
    assert opt._scratch.data_ptr() == pointer
    assert all("master" in s and len(s) == 4 for s in opt.state_dict()["state"].values())
    assert not any(
        isinstance(v, torch.Tensor) for v in opt.state_dict()["param_groups"][0].values()
    )


@pytest.mark.parametrize("backend", ["numpy", "auto"])  # auto: numba where compiled
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rule", ["adam", "sgd_mom", "lamb", "adafactor", "torch_rmsprop"])
def test_low_precision_without_master_on_the_cpu(
    rule: str, dtype: torch.dtype, backend: str
) -> None:
    """A fp16/bf16 parameter without a master copy on the CPU is updated as the Triton
    kernels update it: loaded into float32, the rule's float32 step (states in float32), the
    weight rounded back to its dtype (to nearest, ties to even) when the step is done. 8 steps
    to the bit the NumPy module run so (on float32 copies of the weights, rounded with torch
    after each step); the gradient stays in its dtype, no master copy is kept."""
    params = make_params(dtype)
    opt = CLASSES[rule](params, backend=backend)
    module = numpy_module(rule)
    rounded = [p.detach().clone() for p in params]
    states = [module.init_state(w.float().numpy()) for w in rounded]
    for t in range(1, 9):
        set_grads(params, t)
        opt.step()
        for i, p in enumerate(params):
            work = rounded[i].float().numpy()
            module.step(work, p.grad.float().numpy(), states[i], t)
            rounded[i] = torch.from_numpy(work).to(dtype)
    for p, want in zip(params, rounded, strict=True):
        assert p.dtype == dtype and p.grad.dtype == dtype
        assert torch.equal(p.detach(), want)
    for st in opt.state.values():
        assert "master" not in st
        assert all(v.dtype == torch.float32 for k, v in st.items() if k != "step")
    assert not torch.equal(params[0].detach(), make_params(dtype)[0].detach())


def test_grad_scaler_skips_a_step_with_inf_gradients() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = CLASSES["adam"](model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    x = torch.randn(8, 4)
    for _ in range(2):
        opt.zero_grad()
        scaler.scale(model(x).pow(2).mean()).backward()
        scaler.step(opt)
        scaler.update()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state_before = copy.deepcopy(opt.state_dict())
    opt.zero_grad()
    scaler.scale(model(x).pow(2).mean()).backward()
    model.weight.grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    after = opt.state_dict()["state"]
    for i, st in state_before["state"].items():
        assert torch.equal(after[i]["mean"], st["mean"]) and torch.equal(
            after[i]["step"], st["step"]
        )


@pytest.mark.parametrize("rule", ["sgd_mom", "adam", "lars"])
def test_grad_scaler_unscales(rule: str) -> None:
    """A scaled loss gives the same steps as the unscaled one.

    sgd_mom and adam fold 1/scale into rescale_grad inside the kernel; lars (norms of the raw
    gradient) has its gradients unscaled first.
    """
    assert CLASSES[rule].NUMPY.FOLDS_GRAD_SCALE == (rule != "lars")
    torch.manual_seed(0)
    x = torch.randn(8, 4)
    results = []
    for scaled in (False, True):
        model = torch.nn.Linear(4, 1)
        torch.nn.init.constant_(model.weight, 0.5)
        torch.nn.init.constant_(model.bias, 0.1)
        opt = CLASSES[rule](model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=scaled)
        for _ in range(3):
            opt.zero_grad()
            scaler.scale(model(x).pow(2).mean()).backward()
            scaler.step(opt)
            scaler.update()
        results.append(model.weight.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=1e-6, atol=1e-7)
    assert not torch.equal(results[1], torch.full_like(results[1], 0.5))


def test_lr_scheduler_changes_the_rate_without_recompiling() -> None:
    params = make_params()
    opt = CLASSES["sgd"](params, lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    set_grads(params, 1)
    before = params[1].detach().clone()
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.05
    first = params[1].detach() - before
    before = params[1].detach().clone()
    set_grads(params, 1)
    opt.step()
    torch.testing.assert_close(params[1].detach() - before, first / 2)


# Rules whose math coincides with torch.optim's (mappings in tests/test_torch_optim.py): our
# hyperparameters; the torch side from the spec's torch_equivalent, but for TORCH_DIFFERS.
TORCH_TRAINING = {
    "sgd": dict(lr=0.05, wd=0.01),
    "sgd_mom": dict(lr=0.05, momentum=0.9, wd=0.01),
    "nag": dict(lr=0.05, momentum=0.9, wd=0.01),
    "adam": dict(lr=0.01, beta1=0.8, beta2=0.95, epsilon=1e-3, wd=0.01),
    "amsgrad": dict(lr=0.01, epsilon=1e-3, wd=0.01),
    "adamw": dict(lr=0.01, wd=0.05),
    "adamax": dict(lr=0.01, beta1=0.8, beta2=0.95, epsilon=1e-20, wd=0.01),
    "adagrad": dict(lr=0.05, eps=1e-12),
    "rmsprop": dict(lr=0.01, gamma1=0.9, epsilon=1e-20, wd=0.01),
    "rmsprop_centered": dict(lr=0.01, gamma1=0.9, gamma2=0.8, epsilon=1e-20, wd=0.01),
    "adadelta": dict(rho=0.9, epsilon=1e-5),
    "nadam": dict(lr=0.01),
    "radam": dict(lr=0.01),
}
# MXNet's Adam is torch's with eps_t = epsilon / sqrt(1 - beta2^t), set before step t:
TORCH_EPS = {"adam"}


def network(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


@pytest.mark.parametrize("rule", sorted(TORCH_TRAINING))
def test_training_matches_torch_optim(rule: str) -> None:
    hp = TORCH_TRAINING[rule]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(128, 6, generator=gen)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    ours, theirs = network(0), network(0)
    opt_ours = CLASSES[rule](ours.parameters(), **hp)
    opt_theirs = torch_peer(rule, theirs.parameters(), hp, TORCH_DIFFERS)
    for t in range(1, 21):
        if rule in TORCH_EPS:
            opt_theirs.param_groups[0]["eps"] = hp["epsilon"] / (1 - hp["beta2"] ** t) ** 0.5
        losses = []
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            loss = (model(x) - y).pow(2).mean()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


EXCHANGE = {  # our hyperparameters; the torch side from the spec's torch_equivalent
    "sgd": dict(lr=0.05, wd=0.01),
    "rmsprop_centered": dict(lr=0.01, gamma2=0.8, epsilon=1e-20),
    "sgd_mom": dict(lr=0.05, momentum=0.9),
    "adam": dict(lr=0.01, epsilon=1e-12),
    "adamw": dict(lr=0.01),
    "adagrad": dict(lr=0.05, eps=1e-12),
    "rmsprop": dict(lr=0.01, epsilon=1e-12),
    "adadelta": dict(),
    "adamax": dict(lr=0.01, epsilon=1e-12),
    "nadam": dict(lr=0.01),
    "radam": dict(lr=0.01),
    "amsgrad": dict(lr=0.01),
}


@pytest.mark.parametrize("direction", ["torch->ours", "ours->torch"])
@pytest.mark.parametrize("rule", sorted(EXCHANGE))
def test_state_dict_exchange_with_torch(rule: str, direction: str) -> None:
    """Train 10 steps with one, load its state into the other, continue 10 steps on both."""
    hp = EXCHANGE[rule]

    def make(params):
        return torch_peer(rule, params, hp)

    params = make_params()
    first = make(params) if direction == "torch->ours" else CLASSES[rule](params, **hp)
    train(None, 10, params=params, opt=first)
    a = [torch.nn.Parameter(p.detach().clone()) for p in params]
    b = [torch.nn.Parameter(p.detach().clone()) for p in params]
    if direction == "torch->ours":
        ours = CLASSES[rule](a, **hp)
        ours.load_torch_state_dict(copy.deepcopy(first.state_dict()))
        train(None, 10, params=a, opt=ours, start=11)
        train(None, 10, params=b, opt=_continue_torch(make, b, first), start=11)
    else:
        theirs = make(a)
        theirs.load_state_dict(copy.deepcopy(first.to_torch_state_dict()))
        train(None, 10, params=a, opt=theirs, start=11)
        train(None, 10, params=b, opt=_continue_ours(rule, hp, b, first), start=11)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("settings", [{"momentum": 0.9}, {"centered": True}])
def test_after_loading_torchs_state_the_buffers_are_torchs(settings: dict[str, Any]) -> None:
    """``load_torch_state_dict`` from torch's RMSprop with momentum alone or centered alone: the
    class holds torch's buffers and no more (until 2026-12-06 it made the other one, unused, at
    its initial value: each state has its own ``absent_when`` now), and steps on as torch does."""
    rule, peer = "torch_rmsprop", "RMSprop"
    params = make_params()
    theirs_p = [torch.nn.Parameter(p.detach().clone()) for p in params]
    theirs = getattr(torch.optim, peer)(theirs_p, lr=0.01, **settings)
    train(None, 2, params=theirs_p, opt=theirs)
    with torch.no_grad():  # the weights torch's two steps left, and its state
        for p, q in zip(params, theirs_p, strict=True):
            p.copy_(q)
    ours = CLASSES[rule](params, lr=0.01, **settings)
    ours.load_torch_state_dict(copy.deepcopy(theirs.state_dict()))
    for p, q in zip(params, theirs_p, strict=True):
        assert set(ours.state[p]) == set(theirs.state[q]), settings
    for opt, ps in ((ours, params), (theirs, theirs_p)):
        train(None, 3, params=ps, opt=opt, start=3)
    for p, q in zip(params, theirs_p, strict=True):
        assert set(ours.state[p]) == set(theirs.state[q]), settings
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def _continue_torch(make, params, first):
    opt = make(params)
    opt.load_state_dict(copy.deepcopy(first.state_dict()))
    return opt


def _continue_ours(rule, hp, params, first):
    opt = CLASSES[rule](params, **hp)
    opt.load_state_dict(copy.deepcopy(first.state_dict()))
    return opt


def test_named_parameters_input() -> None:
    model = torch.nn.Linear(3, 1)
    opt = CLASSES["adam"](model.named_parameters(), lr=0.1)
    before = model.weight.detach().clone()
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    assert not torch.equal(model.weight, before)
    assert opt.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]


def assert_same_state_dict(a: dict, b: dict) -> None:
    """Two optimizer state_dicts hold the same groups and bit-identical state."""
    assert a["param_groups"] == b["param_groups"]
    assert sorted(a["state"]) == sorted(b["state"])
    for index, st in a["state"].items():
        assert sorted(st) == sorted(b["state"][index])
        for key, value in st.items():
            other = b["state"][index][key]
            if isinstance(value, torch.Tensor):
                assert value.dtype == other.dtype and torch.equal(value, other), (index, key)
            else:
                assert value == other, (index, key)


# ------------------------------------------------------------------ low-precision resumption
LOW_PRECISION_BACKENDS = [("numpy", True), ("triton", True), ("triton", False)]


@pytest.mark.parametrize(("backend", "multi_precision"), LOW_PRECISION_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rule", ["adam", "sgd_mom", "lamb"])
def test_low_precision_resume_is_bit_identical(
    rule: str, dtype: torch.dtype, backend: str, multi_precision: bool
) -> None:
    """Save after 5 steps, load into a fresh optimizer on fresh parameters, run 5 more steps.

    torch.optim's own loader casts the fp32 state (master weights, moments) to the parameter's
    fp16/bf16: the resumed run would differ from the uninterrupted one.
    """

    def factory(ps):
        return CLASSES[rule](two_groups(rule, ps), backend=backend, multi_precision=multi_precision)

    straight, straight_opt = train(factory, 10, params=make_params(dtype))
    first, opt = train(factory, 5, params=make_params(dtype))
    saved = copy.deepcopy(opt.state_dict())
    fresh = [torch.nn.Parameter(p.detach().clone()) for p in first]
    resumed = factory(fresh)
    resumed.load_state_dict(saved)
    for st in resumed.state.values():
        assert st["step"].dtype == torch.int64  # an exact count (see optim/state.py)
        buffers = [v for k, v in st.items() if isinstance(v, torch.Tensor) and k != "step"]
        assert all(v.dtype == torch.float32 for v in buffers)
    train(None, 5, params=fresh, opt=resumed, start=6)
    for a, b in zip(straight, fresh, strict=True):
        assert a.dtype == dtype and torch.equal(a, b)
    assert_same_state_dict(straight_opt.state_dict(), resumed.state_dict())


def test_loaded_state_is_copied_not_shared() -> None:
    params = make_params()
    opt = CLASSES["adam"](params, lr=0.1)
    train(None, 2, params=params, opt=opt)
    saved = copy.deepcopy(opt.state_dict())
    kept = copy.deepcopy(saved)
    other = CLASSES["adam"]([torch.nn.Parameter(p.detach().clone()) for p in params], lr=0.1)
    other.load_state_dict(saved)
    train(None, 2, params=other.param_groups[0]["params"], opt=other, start=3)
    assert_same_state_dict(saved, kept)  # training on did not write into the loaded dict


# -------------------------------------------------------------------------------- SGLD noise
def sgld_run(backend: str, drop_grad: int | None = None, steps: int = 3) -> list[torch.Tensor]:
    params = [torch.nn.Parameter(torch.zeros(s)) for s in [(5, 3), (5, 3), (7,), (5, 3)]]
    opt = CLASSES["sgld"](
        [{"params": params[:2]}, {"params": params[2:], "lr": 0.04}], lr=0.01, seed=7,
        backend=backend,
    )  # fmt: skip
    for t in range(1, steps + 1):
        set_grads(params, t)
        if drop_grad is not None:
            params[drop_grad].grad = None
        opt.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("backend", ["numpy", "triton"])
def test_sgld_same_shaped_parameters_draw_different_noise(backend: str) -> None:
    params = [torch.nn.Parameter(torch.zeros(4, 4)) for _ in range(2)]
    opt = CLASSES["sgld"](params, lr=0.01, backend=backend)
    for p in params:
        p.grad = torch.zeros(4, 4)
    opt.step()
    a, b = (p.detach() for p in params)
    assert a.abs().min() > 0 and b.abs().min() > 0  # noise only: zero weights, zero grads
    assert not torch.allclose(a, b, atol=1e-3)


def test_sgld_numpy_and_triton_backends_draw_the_same_noise() -> None:
    numpy, triton = sgld_run("numpy"), sgld_run("triton")
    for a, b in zip(numpy, triton, strict=True):
        torch.testing.assert_close(a, b, **tolerance(np.float32, 3))
    # the noise is most of the step (sqrt(lr) * xi vs lr/2 * g): a different stream would show
    assert (numpy[0] - sgld_run("numpy", drop_grad=0)[0]).abs().max() > 0.01


@pytest.mark.parametrize("backend", ["numpy", "triton"])
def test_sgld_a_parameter_without_grad_leaves_the_others_noise_alone(backend: str) -> None:
    full, partial = sgld_run(backend), sgld_run(backend, drop_grad=0)
    assert torch.equal(partial[0], torch.zeros(5, 3))
    for a, b in zip(full[1:], partial[1:], strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------------- torch.optim variants
def falling_grads(params: list[torch.nn.Parameter], t: int) -> None:
    """Large gradients for 10 steps, then small ones: v falls, AMSGrad's running max stays."""
    set_grads(params, t)
    for p in params:
        p.grad.mul_(10.0 if t <= 10 else 0.01)


def offset_grads(params: list[torch.nn.Parameter], t: int) -> None:
    """Gradients with mean 1: centering (n - g^2 instead of n) changes the step by ~sqrt(2)."""
    set_grads(params, t)
    for p in params:
        p.grad.add_(1.0)


VARIANTS = {  # rule: (our hyperparameters, gradients); torch's setting: the rule's fixed one
    "amsgrad": (dict(lr=0.01, beta2=0.9), falling_grads),
    "rmsprop_centered": (dict(lr=0.01, gamma2=0.8, epsilon=1e-20), offset_grads),
}


@pytest.mark.parametrize("rule", sorted(VARIANTS))
def test_export_selects_torchs_variant(rule: str) -> None:
    """Export into a default-constructed torch optimizer: it runs the variant the rule is."""
    hp, grads = VARIANTS[rule]
    eq = CLASSES[rule].TORCH
    ((setting, _),) = eq.fixed.items()
    cls = getattr(torch.optim, eq.class_name)

    def run(params, opt, start):
        for t in range(start, start + 10):
            grads(params, t)
            opt.step()

    params = make_params()
    ours = CLASSES[rule](params, **hp)
    run(params, ours, 1)
    exported = ours.to_torch_state_dict()
    assert exported["param_groups"][0][setting] is True
    a, b, c = ([torch.nn.Parameter(p.detach().clone()) for p in params] for _ in range(3))
    theirs = cls(a)  # torch's defaults: centered=False / amsgrad=False until the state is loaded
    theirs.load_state_dict(copy.deepcopy(exported))
    assert theirs.param_groups[0][setting] is True
    run(a, theirs, 11)
    mine = CLASSES[rule](b, **hp)
    mine.load_state_dict(copy.deepcopy(ours.state_dict()))
    run(b, mine, 11)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    plain = cls(c)  # the same state in torch's default variant ends elsewhere
    plain.load_state_dict(copy.deepcopy(exported))
    plain.param_groups[0][setting] = False
    run(c, plain, 11)
    assert not all(torch.allclose(y, z, rtol=1e-3, atol=1e-4) for y, z in zip(b, c, strict=True))


REFUSED = [
    ("sgd_mom", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True), "nesterov"),
    ("sgd_mom", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.5), "dampening"),
    ("sgd", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), "momentum"),
    ("sgd", lambda p: torch.optim.SGD(p, lr=0.1, maximize=True), "maximize"),
    ("adam", lambda p: torch.optim.Adam(p, maximize=True), "maximize"),
    ("adam", lambda p: torch.optim.Adam(p, amsgrad=True), "amsgrad"),
    ("amsgrad", lambda p: torch.optim.Adam(p), "amsgrad"),
    ("rmsprop", lambda p: torch.optim.RMSprop(p, momentum=0.9), "momentum"),
    ("rmsprop", lambda p: torch.optim.RMSprop(p, centered=True), "centered"),
    ("rmsprop_centered", lambda p: torch.optim.RMSprop(p, momentum=0.9), "centered"),
    ("adagrad", lambda p: torch.optim.Adagrad(p, lr_decay=0.1), "lr_decay"),
    ("adadelta", lambda p: torch.optim.Adadelta(p, lr=0.5), "lr"),
    ("adamw", lambda p: torch.optim.AdamW(p, amsgrad=True), "amsgrad"),
    ("nadam", lambda p: torch.optim.NAdam(p, decoupled_weight_decay=True),
     "decoupled_weight_decay"),
]  # fmt: skip


@pytest.mark.parametrize(("rule", "make", "setting"), REFUSED)
def test_torch_settings_that_cannot_be_honoured_are_refused(rule, make, setting) -> None:
    params = make_params()
    theirs = make(params)
    train(None, 2, params=params, opt=theirs)
    mine = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ours = CLASSES[rule](mine)
    train(None, 2, params=mine, opt=ours)
    before, weights = copy.deepcopy(ours.state_dict()), [p.detach().clone() for p in mine]
    with pytest.raises(ValueError, match=rf"load_torch_state_dict: .*\b{setting}="):
        ours.load_torch_state_dict(copy.deepcopy(theirs.state_dict()))
    assert_same_state_dict(ours.state_dict(), before)
    assert all(torch.equal(p, w) for p, w in zip(mine, weights, strict=True))


def test_implementation_switches_are_accepted_on_import() -> None:
    params = make_params()
    theirs = torch.optim.Adam(params, lr=0.01, foreach=True)
    train(None, 2, params=params, opt=theirs)
    ours = CLASSES["adam"](params, lr=0.01)
    ours.load_torch_state_dict(copy.deepcopy(theirs.state_dict()))
    assert int(ours.state[params[0]]["step"]) == 2


def test_unexportable_hyperparameter_is_refused() -> None:
    params = make_params()
    opt = CLASSES["adam"](params, clip_gradient=1.0)
    train(None, 1, params=params, opt=opt)
    with pytest.raises(
        ValueError, match=r"clip_gradient=1\.0 has no torch\.optim\.Adam counterpart"
    ):
        opt.to_torch_state_dict()


def test_a_torch_state_dict_in_load_state_dict_points_to_load_torch_state_dict() -> None:
    params = make_params()
    theirs = torch.optim.Adam(params, lr=0.01)
    train(None, 2, params=params, opt=theirs)
    ours = CLASSES["adam"](params, lr=0.01)
    with pytest.raises(ValueError, match=r"not a state_dict of Adam .*load_torch_state_dict\(\)"):
        ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    assert not ours.state


# ----------------------------------------------------------------- every check before writes
def test_mixed_device_group_is_refused_before_state_is_created() -> None:
    params = make_params()
    meta = torch.nn.Parameter(torch.empty(3, device="meta"))
    opt = CLASSES["adam"]([{"params": params[:2]}, {"params": [params[2], meta]}], lr=0.1)
    set_grads(params, 1)
    meta.grad = torch.empty(3, device="meta")
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match="spans devices"):
        opt.step()
    assert len(opt.state) == 0
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    meta.grad = None  # a step without the meta parameter works, then the refusal writes nothing
    opt.step()
    set_grads(params, 2)
    meta.grad = torch.empty(3, device="meta")
    saved, before = copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match="spans devices"):
        opt.step()
    assert_same_state_dict(opt.state_dict(), saved)
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))


CORRUPTIONS = {
    "shape": lambda st: st.__setitem__("mean", torch.zeros(2)),
    "dtype": lambda st: st.__setitem__("mean", st["mean"].double()),
    "missing": lambda st: st.pop("var"),
    "step": lambda st: st.__setitem__("step", torch.tensor(1.5)),
    # one element behind every row (a stride of 0); a state of other strides is taken
    # (tests/test_layouts.py), one that overlaps itself cannot be updated in place
    "overlapping": lambda st: st.__setitem__("mean", st["mean"][:1].expand(4, 4)),
}


@pytest.mark.parametrize("backend", ["numpy", "triton"])
@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_state_is_refused_before_any_write(corruption: str, backend: str) -> None:
    params = make_params()
    opt = CLASSES["adam"](two_groups("adam", params), backend=backend)
    train(None, 2, params=params, opt=opt)
    CORRUPTIONS[corruption](opt.state[params[3]])  # the last tensor of the second group
    saved, before = copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in params]
    set_grads(params, 3)
    with pytest.raises((ValueError, TypeError), match="Adam: parameter 3"):
        opt.step()
    assert_same_state_dict(opt.state_dict(), saved)
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))


def test_new_parameter_refused_writes_nothing() -> None:
    """A complex32 parameter (complex64 and complex128 are taken) in the second group."""
    params = make_params()
    low = torch.nn.Parameter(torch.zeros(3, dtype=torch.complex32))
    opt = CLASSES["sgd_mom"]([{"params": params}, {"params": [low]}], lr=0.1, momentum=0.9)
    set_grads(params, 1)
    low.grad = torch.ones_like(low)
    before = [p.detach().clone() for p in params]
    with pytest.raises(TypeError, match="parameter 4 dtype must be complex64 or complex128"):
        opt.step()
    assert len(opt.state) == 0
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))


# ------------------------------------------------------ momentum-cycling schedulers (betas)
SCHEDULERS = {
    "OneCycleLR": lambda opt: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.05, total_steps=20, base_momentum=0.8, max_momentum=0.95
    ),
    "CyclicLR": lambda opt: torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=0.001, max_lr=0.05, step_size_up=5, base_momentum=0.8, max_momentum=0.95
    ),
}


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_momentum_cycling_schedulers_drive_beta1(scheduler: str) -> None:
    """OneCycleLR/CyclicLR cycle ``betas[0]``: our AdamW follows torch.optim.AdamW's trajectory."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(128, 6, generator=gen)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    ours, theirs = network(0), network(0)
    opt_ours = CLASSES["adamw"](ours.parameters(), lr=0.01, wd=0.05)
    opt_theirs = torch_peer("adamw", theirs.parameters(), dict(lr=0.01, wd=0.05))
    scheds = [SCHEDULERS[scheduler](o) for o in (opt_ours, opt_theirs)]
    beta1s = set()
    for _ in range(20):
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            (model(x) - y).pow(2).mean().backward()
            opt.step()
        beta1s.add(opt_ours.param_groups[0]["beta1"])
        assert opt_ours.param_groups[0]["beta1"] == opt_theirs.param_groups[0]["betas"][0]
        for s in scheds:
            s.step()
    assert len(beta1s) > 5
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_betas_and_beta1_stay_in_step() -> None:
    params = make_params()
    opt = CLASSES["adam"]([{"params": params[:2], "betas": (0.5, 0.6)}, {"params": params[2:]}])
    assert (opt.param_groups[0]["beta1"], opt.param_groups[0]["beta2"]) == (0.5, 0.6)
    assert opt.param_groups[1]["betas"] == (0.9, 0.999)
    opt.param_groups[1]["beta2"] = 0.9  # the name changed: betas follows
    opt.param_groups[0]["betas"] = (0.7, 0.6)  # the tuple changed: beta1 follows
    train(None, 1, params=params, opt=opt)
    assert opt.param_groups[1]["betas"] == (0.9, 0.9)
    assert opt.param_groups[0]["beta1"] == 0.7
    opt.param_groups[0]["betas"] = (0.1, 0.6)
    opt.param_groups[0]["beta1"] = 0.2
    with pytest.raises(ValueError, match="set one of them"):
        opt.step()
    with pytest.raises(ValueError, match="gives betas"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "betas": (0.5, 0.6),
                             "beta1": 0.4})  # fmt: skip


def test_betas_set_in_the_defaults_reach_a_group_added_later() -> None:
    """torch's ``optimizer.defaults["betas"] = ...`` before ``add_param_group``: the new group
    takes the defaults' betas (and beta1/beta2 with them: in the group, or, for the drop-in,
    whose groups hold torch's keys alone, read from it), as torch's does."""
    from generated.torch import optim

    params = make_params()
    for opt in (optim.Adam(params[:2]), CLASSES["adam"](params[:2])):
        opt.defaults["betas"] = (0.5, 0.6)
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))]})
        group = opt.param_groups[-1]
        hp = opt._hyper(group)
        assert group["betas"] == (0.5, 0.6) and (hp["beta1"], hp["beta2"]) == (0.5, 0.6)
        if isinstance(opt, optim.Adam):
            assert "beta1" not in group and "beta1" not in opt.defaults
            opt.defaults["betas"] = (0.5, 0.7)
        else:
            opt.defaults["beta2"] = 0.7  # the name changed: the defaults' betas follows
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))]})
        assert opt.param_groups[-1]["betas"] == (0.5, 0.7)
        assert opt.param_groups[0]["betas"] == (0.9, 0.999)  # the first group keeps its own


def test_a_group_put_in_its_place_keeps_its_betas() -> None:
    """A copy of a group put in its place (``param_groups[0] = {**group, "betas": ...}``, the
    same params list) steps with its betas, as torch's does; a group of torch's keys alone
    takes beta1/beta2 from its betas; a new dict whose betas and beta1 disagree is refused,
    naming both, before anything is written (the generated class, whose groups keep both; a
    drop-in's hold torch's keys alone and step with the new dict's betas)."""
    from generated.torch import optim

    params = make_params()
    dropped = optim.Adam(params)
    train(None, 1, params=params, opt=dropped)
    dropped.param_groups[0] = {**dropped.param_groups[0], "betas": (0.5, 0.6)}
    train(None, 1, params=params, opt=dropped)
    group = dropped.param_groups[0]
    assert "beta1" not in group and dropped._hyper(group)["beta1"] == 0.5
    params = make_params()
    opt = CLASSES["adam"](params)
    train(None, 1, params=params, opt=opt)
    opt.param_groups[0] = {**opt.param_groups[0], "betas": (0.5, 0.6)}
    train(None, 1, params=params, opt=opt)
    group = opt.param_groups[0]
    assert group["betas"] == (0.5, 0.6) and (group["beta1"], group["beta2"]) == (0.5, 0.6)
    torch_keys = {k: v for k, v in group.items() if k not in ("beta1", "beta2")}
    opt.param_groups[0] = {**torch_keys, "betas": (0.3, 0.4)}
    train(None, 1, params=params, opt=opt)
    group = opt.param_groups[0]
    assert group["betas"] == (0.3, 0.4) and (group["beta1"], group["beta2"]) == (0.3, 0.4)
    assert len(opt._seen) == 2  # the group and the defaults: replaced dicts are not kept
    stranger = {**group, "params": list(group["params"]), "betas": (0.1, 0.4)}
    opt.param_groups[0] = stranger  # a new params list: no history to tell which was set
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match=r"betas=\(0\.1, 0\.4\) and beta1=0\.3"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, params, strict=True))


@pytest.mark.parametrize("backend", ["auto", "numpy"])
def test_a_step_a_module_refuses_leaves_the_aliases_unsynced(backend: str) -> None:
    """A first step of TorchNAdam whose weight decay float32 cannot hold is refused by the
    module (a first step's host states are checked there), after the class's own checks: the
    group keeps betas and beta1/beta2 as the user left them (the long fuzz run found beta1 and
    beta2 synced to the new betas by the refused step), and a later step syncs them."""
    params = make_params()
    opt = CLASSES["torch_nadam"](params, backend=backend)
    group = opt.param_groups[0]
    group.update(betas=(0.8, 0.99), weight_decay=5e-324)
    before = {k: v for k, v in group.items() if k != "params"}
    set_grads(params, 1)
    with pytest.raises(ValueError, match="float32 cannot hold"):
        opt.step()
    assert {k: v for k, v in group.items() if k != "params"} == before
    assert opt.state_dict()["state"] == {}
    group["weight_decay"] = 0.0
    opt.step()
    assert (group["beta1"], group["beta2"]) == (0.8, 0.99)


# ------------------------------------------------------------- in place, no per-step buffers
@pytest.mark.parametrize("rule", ["adam", "lamb", "nadam"])
def test_cpu_steps_keep_buffers_and_allocate_no_full_size_array(rule: str) -> None:
    """NumPy allocations are traced: a step's peak is the chunk scratch, far below a buffer."""
    import tracemalloc

    from optgen_runtime import numpy_support

    module = numpy_module(rule)
    n = 16 * numpy_support.THREADS * module.CHUNK  # scratch <= THREADS * 5 rows * CHUNK
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(n))
    p.grad = torch.randn(n)
    opt = CLASSES[rule]([p], backend="numpy")
    opt.step()
    pointers = {k: v.data_ptr() for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)}
    weight, before = p.data_ptr(), p.detach().clone()
    tracemalloc.start()
    try:
        for _ in range(3):
            opt.step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * 4 // 2, peak
    assert p.data_ptr() == weight and not torch.equal(p.detach(), before)
    assert {k: v.data_ptr() for k, v in opt.state[p].items() if k in pointers} == pointers


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("Adam", {}),  # the compiled CPU loops (numba)
        ("Adam", {"backend": "numpy"}),
        ("LAMB", {"backend": "triton"}),  # per-tensor sums, the Triton interpreter
        ("Muon", {}),  # a matrix rule
        ("optim.AdamW", {"foreach": True}),  # a drop-in: torch's argument names
    ],
    ids=["adam-numba", "adam-numpy", "lamb-triton", "muon", "dropin-adamw"],
)
@pytest.mark.parametrize("how", ["function", "method"])
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_a_step_under_torch_compile_runs_eagerly_with_the_same_bits(name, kwargs, how) -> None:
    """``torch.compile`` over a function calling ``opt.step()`` (torch's compiled-optimizer
    tutorial), or over ``opt.step`` itself: Dynamo breaks the graph there and the step runs
    eagerly (it used to trace into the step and fail in NumPy's interop), the same bits as the
    step without it; a step hook still runs (the method's case)."""
    import generated.torch
    import generated.torch.optim

    cls = generated.torch
    for part in name.split("."):
        cls = getattr(cls, part)
    torch._dynamo.reset()
    runs = []
    for compiled in (True, False):  # compiled first: its first step may be the process's
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(6, 4)), torch.nn.Parameter(torch.randn(4, 3))]
        opt = cls(params, **kwargs)
        hooked: list[int] = []
        if how == "method":  # torch's wrapper of step (hooks) then ours, and without
            opt.register_step_post_hook(lambda *_, seen=hooked: seen.append(1))
        step = opt.step
        if compiled and how == "method":
            step = torch.compile(opt.step)
        elif compiled:
            step = torch.compile(lambda opt=opt: opt.step())
        for t in range(3):
            set_grads(params, t)
            step()
        assert len(hooked) == (3 if how == "method" else 0)
        runs.append([p.detach().clone() for p in params])
    for traced, eager in zip(*runs, strict=True):
        assert torch.equal(eager, traced)


def test_an_unknown_keyword_is_refused_with_what_the_class_takes() -> None:
    """Python's TypeError, then the class's arguments, a close match and the classes that take
    the keyword: MXNet's ``SGD(momentum=...)`` points at SGDMomentum (and torch's drop-in SGD),
    a torch name given to an MXNet-named class at its own name. Other binding errors keep
    Python's message alone; the right names build as before."""
    import inspect

    import generated.torch.optim as dropins
    from generated.torch import SGD, Adam

    params = make_params()
    with pytest.raises(TypeError) as sgd:
        SGD(params, momentum=0.9)
    text = str(sgd.value)
    assert text.startswith("SGD.__init__() got an unexpected keyword argument 'momentum'; SGD")
    assert "SGD takes lr, wd, rescale_grad, clip_gradient, lazy_update, multi_precision, " in text
    assert "'momentum' is taken by generated.torch.optim.SGD, SGDMomentum, " in text
    with pytest.raises(TypeError, match=r"'bet1'; Adam takes .* \(did you mean 'beta1'\?\)$"):
        Adam(params, bet1=0.9)
    with pytest.raises(TypeError, match=r"\(did you mean 'betas'\?\); 'beta1' is taken by "):
        dropins.Adam(params, beta1=0.9)
    # torch's names of MXNet-named hyperparameters: the class's own name, not the closest
    # spelling (Adan offered 'weight_decouple' for 'weight_decay')
    for key, said in [
        ("weight_decay", "'wd': MXNet's name for torch's 'weight_decay'"),
        ("eps", "'epsilon': MXNet's name for torch's 'eps'"),
        ("betas", "'beta1' and 'beta2': MXNet's names for torch's 'betas'"),
    ]:
        with pytest.raises(TypeError) as error:
            CLASSES["adan"](params, **{key: 0.1})
        assert f"({said})" in str(error.value) and "did you mean" not in str(error.value)
    with pytest.raises(TypeError, match=r"^Adam\.__init__\(\) takes from 2 to \d+ positional "):
        Adam(params, *range(12))
    with pytest.raises(TypeError, match=r"^Adam\.__init__\(\) missing 1 required positional"):
        Adam()
    opt = Adam(params, lr=0.1, beta1=0.8)
    assert opt.param_groups[0]["beta1"] == 0.8
    assert list(inspect.signature(Adam).parameters)[:3] == ["params", "lr", "wd"]


PICKLED = {  # class, constructor arguments, parameter dtype
    "Adam (numba)": (CLASSES["adam"], {"lr": 0.01}, torch.float32),
    "Adam (NumPy)": (CLASSES["adam"], {"lr": 0.01, "backend": "numpy"}, torch.float32),
    "Adam (Triton)": (CLASSES["adam"], {"lr": 0.01, "backend": "triton"}, torch.float32),
    "LAMB": (CLASSES["lamb"], {"lr": 0.01}, torch.float32),
    "SGLD": (CLASSES["sgld"], {"lr": 0.001, "seed": 5.0}, torch.float32),
    "NAdam (host states)": (CLASSES["nadam"], {"lr": 0.01}, torch.float32),
    "bf16 with master": (CLASSES["adam"], {"lr": 0.01, "multi_precision": True}, torch.bfloat16),
    "drop-in AdamW": (dropin.AdamW, {"lr": 0.01, "weight_decay": 0.1}, torch.float32),
}


@pytest.mark.parametrize("copier", ["pickle", "deepcopy"])
@pytest.mark.parametrize("case", sorted(PICKLED))
def test_a_pickled_optimizer_steps_as_the_original(case: str, copier: str) -> None:
    """``pickle`` (torch.save of the object, multiprocessing) and ``copy.deepcopy`` of an
    optimizer with its parameters, after three steps: the copy keeps the settings (backend,
    multi_precision) and steps on with the original's bits; each is the other's no longer."""
    import pickle

    cls, kw, dtype = PICKLED[case]
    params = make_params(dtype)
    opt = cls(params, **kw)
    for t in range(1, 4):
        set_grads(params, t)
        opt.step()
    if copier == "pickle":
        params2, opt2 = pickle.loads(pickle.dumps((params, opt)))
    else:
        params2, opt2 = copy.deepcopy((params, opt))
    assert (opt2.backend, opt2.multi_precision) == (opt.backend, opt.multi_precision)
    for t in range(4, 7):
        for ps in (params, params2):
            set_grads(ps, t)
        opt.step()
        opt2.step()
    for p, q in zip(params, params2, strict=True):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()
    assert_same_state_dict(opt2.state_dict(), opt.state_dict())


@pytest.mark.parametrize("backend", ["numpy", "auto", "triton"])
@pytest.mark.parametrize("rule", ["adam", "lamb", "ftrl", "torch_rprop"])
def test_complex_parameters_step_as_their_real_views(rule: str, backend: str) -> None:
    """A complex parameter is updated as torch.optim updates one: its real view
    (``torch.view_as_real``) updated as a real parameter of that shape, each part alone (a
    whole-tensor sum, LAMB's norms, adds both parts' squares). 6 steps of a complex64
    parameter, a transposed one among them, to the bit a real parameter holding its real
    view; its states complex64, their real views the real parameter's."""
    torch.manual_seed(3)
    values = [torch.randn(4, 3, dtype=torch.complex64), torch.randn(5, 4, dtype=torch.complex64)]
    complex_params = [
        torch.nn.Parameter(values[0].clone()),
        torch.nn.Parameter(values[1].clone().t().contiguous().t()),  # not contiguous
    ]
    real_params = [torch.nn.Parameter(torch.view_as_real(v).clone()) for v in values]
    ours = CLASSES[rule](complex_params, backend=backend)
    peer = CLASSES[rule](real_params, backend=backend)
    for t in range(6):
        gen = torch.Generator().manual_seed(t)
        for c, r in zip(complex_params, real_params, strict=True):
            grad = torch.randn(c.shape, dtype=torch.complex64, generator=gen)
            c.grad, r.grad = grad, torch.view_as_real(grad).clone()
        ours.step()
        peer.step()
    for c, r in zip(complex_params, real_params, strict=True):
        assert torch.equal(torch.view_as_real(c.detach()), r.detach())
        for key, value in ours.state[c].items():
            if torch.is_tensor(value) and value.dim():
                assert value.dtype == torch.complex64, key
                assert torch.equal(torch.view_as_real(value), peer.state[r][key]), key
    assert not torch.equal(complex_params[0].detach(), values[0])


def test_complex_parameters_refused_where_no_real_view_applies() -> None:
    """A rule whose update does not see each element alone (Adafactor's row/column factors,
    Muon's matrices, SGLD's noise by index, AdaHessian's per-element input) refuses a complex
    parameter, naming it, and complex128 on the Triton path (its real view is float64); before
    anything is written."""
    for name in ("adafactor", "muon", "sgld", "adahessian"):
        p = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.complex64))
        opt = CLASSES[name]([p])
        p.grad = torch.ones_like(p)
        before = p.detach().clone()
        with pytest.raises(TypeError, match=r"parameter 0 is complex \(torch.complex64\)"):
            opt.step(**({"hessian": [torch.ones_like(p)]} if name == "adahessian" else {}))
        assert torch.equal(p.detach(), before) and not opt.state
    p = torch.nn.Parameter(torch.randn(3, dtype=torch.complex128))
    opt = CLASSES["adam"]([p], backend="triton")
    p.grad = torch.ones_like(p)
    with pytest.raises(TypeError, match="parameter 0 dtype must be float32, float16 or bfloat16"):
        opt.step()
    assert not opt.state


@pytest.mark.parametrize("rule", ["sgd_mom", "lamb", "torch_sgd"])
def test_a_parameter_listed_twice_is_refused_naming_both(rule: str) -> None:
    """torch.optim warns of a parameter listed twice in a group (it will refuse it,
    pytorch/pytorch#40967) and steps it twice meanwhile; ours refuses the step, naming both
    places, before anything is written."""
    params = make_params()
    with pytest.warns(UserWarning, match="duplicate parameters"):
        opt = CLASSES[rule]([params[0], params[1], params[0]])
    set_grads(params, 1)
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match="parameter 0 is listed again as parameter 2"):
        opt.step()
    assert not opt.state and all(torch.equal(p, b) for p, b in zip(params, before, strict=True))


@pytest.mark.parametrize("backend", ["numpy", "auto", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
def test_a_step_keeps_no_reference_to_what_it_was_given(backend: str, dtype: torch.dtype) -> None:
    """Once replaced, a gradient the step read and a state buffer a load replaced are freed:
    nothing of the step's (a cache, a plan, a working copy) holds them. (A cache decorator
    slipped onto the real-view helper once kept every gradient of the Triton path alive.)"""
    import gc
    import weakref

    p = torch.nn.Parameter(torch.randn(5, dtype=dtype))
    opt = CLASSES["adam"]([p], backend=backend)
    p.grad = torch.randn(5, dtype=dtype)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    grads = []
    for _ in range(3):
        p.grad = torch.randn(5, dtype=dtype)
        grads.append(weakref.ref(p.grad))
        opt.step()
    state = weakref.ref(opt.state[p]["mean"])
    opt.load_state_dict(saved)
    p.grad = None
    gc.collect()
    assert [g() for g in grads] == [None, None, None] and state() is None
