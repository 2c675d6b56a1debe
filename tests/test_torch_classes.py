"""The generated torch.optim-style classes (``generated.torch``), on the CPU.

The NumPy backend runs natively; the Triton backend runs in the interpreter on CPU tensors.
Here: each class against its rule's NumPy module (two groups, initial state, launches, state_dict
round trip), low precision with and without master weights, GradScaler and LR schedulers,
training and state exchange against torch.optim, SGLD's noise. Elsewhere, with this file's
helpers: torch.optim's variants and the betas aliases (tests/test_torch_classes_torch_settings.py),
resumption, refusals before any write, buffers, copies (tests/test_torch_classes_state.py), and
what a class takes (tests/test_torch_classes_inputs.py).
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
