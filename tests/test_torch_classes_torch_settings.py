"""The generated torch.optim-style classes (``generated.torch``) and torch.optim's settings, on
the CPU: the variant a rule is (AMSGrad, centered RMSprop) chosen on export, torch settings a
class cannot honour refused on import, and ``betas`` kept in step with ``beta1``/``beta2``
(momentum-cycling schedulers, groups edited, added or replaced, a refused step). Parameters,
gradients and training from tests/test_torch_classes.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import torch_peer
from test_torch_classes import (
    CLASSES,
    assert_same_state_dict,
    make_params,
    network,
    set_grads,
    train,
)


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
