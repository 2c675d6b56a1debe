"""Inputs the runtime refuses (issue 9): step counts, foreign state dicts, hyperparameter types.

Every refused call leaves parameters, gradients, state and step counts byte-identical.
Elsewhere: per-element inputs besides the gradient (AdaHessian's hessian), with this file's
helpers (tests/test_input_guards_inputs.py); the refusals a module-API audit found
(tests/test_input_guards_module_api.py).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from conftest import DEVICE, class_inputs, states_present, step_inputs

from generated.numpy import adam as np_adam
from generated.torch import (
    LAMB,
    LBSGD,
    NAG,
    RULES,
    SGLD,
    AdaBelief,
    Adam,
    RMSpropCentered,
    Signum,
)
from optgen_runtime.common import check_step_count


def make(cls, n=5, **hp):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(n)) for _ in range(2)]
    for p in params:
        p.grad = torch.randn(n)
    return params, cls(params, **hp)


def snapshot(params, opt):
    """Everything a refused call must leave as it was, as bytes."""
    out = []
    for p in params:
        out.append(p.detach().clone().numpy().tobytes())
        out.append(None if p.grad is None else p.grad.clone().numpy().tobytes())
    for p in params:
        st = opt.state.get(p, {})
        for key in sorted(st):
            v = st[key]
            out.append(
                (key, str(v.dtype), v.clone().numpy().tobytes()) if torch.is_tensor(v) else v
            )
    out.append(
        copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])
    )
    return out


def refused(params, opt, error, match, call):
    before = snapshot(params, opt)
    with pytest.raises(error, match=match):
        call()
    assert snapshot(params, opt) == before


# 1. step counts --------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [2**24, 2**53, 2**62])
def test_step_counts_stay_exact_past_float32(count):
    params, opt = make(SGLD, lr=1e-3)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    for st in saved["state"].values():
        st["step"] = torch.tensor(float(count) if count <= 2**24 else count)
    opt.load_state_dict(saved)
    before = params[0].detach().clone()
    opt.step()
    first = params[0].detach() - before
    before = params[0].detach().clone()
    opt.step()
    second = params[0].detach() - before
    assert [int(opt.state[p]["step"]) for p in params] == [count + 2] * 2
    assert not torch.equal(first, second)  # a new step count draws new noise
    again = opt.state_dict()
    assert int(again["state"][0]["step"]) == count + 2


def test_torch_export_keeps_torchs_float32_count():
    params, opt = make(Adam)
    opt.step()
    exported = opt.to_torch_state_dict()
    assert exported["state"][0]["step"].dtype == torch.float32
    assert opt.state[params[0]]["step"].dtype == torch.int64
    reference = torch.optim.Adam([torch.nn.Parameter(p.detach().clone()) for p in params])
    reference.load_state_dict(exported)
    params2, back = make(Adam)
    back.load_torch_state_dict(exported)
    assert int(back.state[params2[0]]["step"]) == 1


def test_lbsgd_batch_scale_2_keeps_updating_past_2_24():
    params, opt = make(LBSGD, lr=0.1, batch_scale=2.0)
    opt.step()
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    for st in saved["state"].values():
        st["step"] = torch.tensor(2**24, dtype=torch.int64)
    opt.load_state_dict(saved)
    moved = 0
    for _ in range(4):
        before = params[0].detach().clone()
        opt.step()
        moved += not torch.equal(before, params[0].detach())
    assert moved == 2  # every second call updates


@pytest.mark.parametrize("t", [10**400, 2**63, -(10**400)])
def test_check_step_count_refuses_huge_counts(t):
    with pytest.raises(ValueError, match=r"^adam: step count t"):
        check_step_count("adam", t)


@pytest.mark.parametrize("t", [True, False, 1.5, 2.0, math.nan, "3", np.bool_(True)])
def test_check_step_count_refuses_non_integers(t):
    with pytest.raises(TypeError, match=r"^adam: step count t must be an int >= 1"):
        check_step_count("adam", t)


def test_check_step_count_accepts_the_largest():
    assert check_step_count("adam", 2**63 - 1) == 2**63 - 1
    assert check_step_count("adam", np.int64(7)) == 7


def test_numpy_step_refuses_huge_t_before_writing():
    w = np.ones(4, np.float32)
    g = np.ones(4, np.float32)
    state = np_adam.init_state(w)
    before = [w.tobytes(), g.tobytes(), *(v.tobytes() for v in state.values())]
    with pytest.raises(ValueError, match="adam: step count"):
        np_adam.step(w, g, state, 10**400)
    assert [w.tobytes(), g.tobytes(), *(v.tobytes() for v in state.values())] == before


# 2. load_state_dict ----------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "target"), [(Adam, AdaBelief), (Signum, NAG)])
def test_load_state_dict_refuses_another_rules_state(source, target):
    _params, opt = make(source)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    params2, other = make(target)
    other.step()
    refused(
        params2,
        other,
        ValueError,
        rf"{target.__name__}.*not a state_dict",
        lambda: other.load_state_dict(saved),
    )


def test_load_state_dict_without_the_record_refuses_another_rules_hyperparameters():
    _params, opt = make(Signum)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    saved.pop("optgen_rule")
    params2, nag = make(NAG)
    nag.step()
    refused(params2, nag, ValueError, r"NAG.*wd_lh", lambda: nag.load_state_dict(saved))


def test_load_state_dict_without_the_record_still_loads_own_state():
    _params, opt = make(Adam)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    saved.pop("optgen_rule")
    for st in saved["state"].values():
        st["step"] = st["step"].to(torch.float32)  # an older state dict: torch's float32 count
    params2, other = make(Adam)
    other.load_state_dict(saved)
    assert other.state[params2[0]]["step"].dtype == torch.int64


@pytest.mark.parametrize("step", [math.nan, -1.0, 1.5, math.inf, 2.0**63, "3", None])
def test_load_state_dict_refuses_bad_step_counts(step):
    params, opt = make(Adam)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    saved["state"][1]["step"] = torch.tensor(step) if isinstance(step, float) else step
    refused(
        params,
        opt,
        ValueError,
        r"Adam.load_state_dict: saved state 1\['step'\]",
        lambda: opt.load_state_dict(saved),
    )
    opt.step()  # still usable


# 3. hyperparameter types -----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0.05", b"0.05", True, np.bool_(False), torch.tensor(True)])
def test_numeric_hyperparameters_refuse_strings_bytes_and_bools(value):
    with pytest.raises(TypeError, match="Adam: hyperparameter lr must be a real number"):
        Adam([torch.nn.Parameter(torch.ones(2))], lr=value)
    with pytest.raises(TypeError, match="adam: hyperparameter lr must be a real number"):
        np_adam.step(
            np.ones(2, np.float32),
            np.ones(2, np.float32),
            np_adam.init_state(np.ones(2, np.float32)),
            1,
            lr=value,
        )
    params, opt = make(Adam)
    opt.step()
    refused(
        params,
        opt,
        TypeError,
        "lr",
        lambda: opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "lr": value}),
    )
    opt.param_groups[0]["lr"] = value
    before = snapshot(params, opt)[:-1]
    with pytest.raises(TypeError, match="Adam: hyperparameter lr must be a real number"):
        opt.step()
    assert snapshot(params, opt)[:-1] == before


def test_numeric_hyperparameters_still_accept_numbers():
    Adam([torch.nn.Parameter(torch.ones(2))], lr=np.float32(0.1), wd=torch.tensor(0.01), epsilon=1)


@pytest.mark.parametrize("value", [np.array([0.25]), np.array([[0.25]]), torch.tensor([0.25])])
def test_one_element_arrays_are_hyperparameters_of_any_rank(value):
    # NumPy refuses float() of a one-element array of rank >= 1; a tensor's is allowed
    param = torch.nn.Parameter(torch.ones(2))
    param.grad = torch.ones(2)
    opt = Adam([param], lr=value)
    assert opt.param_groups[0]["lr"] is value
    opt.step()
    assert torch.allclose(param.detach(), torch.full((2,), 0.75))  # Adam's first step: w - lr
    w = np.ones(2, np.float32)
    np_adam.step(w, np.ones(2, np.float32), np_adam.init_state(w), 1, lr=value)
    assert np.all(w < 1)


@pytest.mark.parametrize(
    ("value", "size"), [(np.ones(3), 3), (torch.ones(2), 2), (np.array([]), 0)]
)
def test_many_element_hyperparameters_are_refused_by_size(value, size):
    with pytest.raises(TypeError, match=f"lr must be a real number, got an array of {size} el"):
        Adam([torch.nn.Parameter(torch.ones(2))], lr=value)


def test_flags_and_choices_keep_their_values():
    LAMB([torch.nn.Parameter(torch.ones(2))], bias_correction=False)
    LBSGD([torch.nn.Parameter(torch.ones(2))], warmup_strategy="sqrt")


def test_rmsprop_centered_loads_torchs_own_centered_rmsprop_state():
    """torch's RMSprop makes no momentum_buffer with momentum=0 (ours: delta, zeros then)."""
    torch.manual_seed(1)
    ref = [torch.nn.Parameter(torch.randn(6, dtype=torch.float64)) for _ in range(2)]
    theirs = torch.optim.RMSprop(ref, lr=0.01, centered=True)
    for _ in range(3):
        for p in ref:
            p.grad = torch.randn_like(p)
        theirs.step()
    ours_params = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    ours = RMSpropCentered(ours_params, lr=0.01, gamma2=0.0, epsilon=1e-8)
    ours.load_torch_state_dict(theirs.state_dict())
    assert int(ours.state[ours_params[0]]["step"]) == 3
    for p, q in zip(ref, ours_params, strict=True):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    theirs.step()
    ours.step()
    for p, q in zip(ref, ours_params, strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7)  # eps placement differs


def test_rmsprop_centered_still_refuses_a_missing_buffer_torch_makes():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    theirs = torch.optim.RMSprop([p], centered=True, momentum=0.5)
    theirs.step()
    saved = copy.deepcopy(theirs.state_dict())
    del saved["state"][0]["momentum_buffer"]
    _params, ours = make(RMSpropCentered, n=3)
    with pytest.raises(ValueError, match="momentum_buffer"):
        ours.load_torch_state_dict({"state": saved["state"], "param_groups": saved["param_groups"]})


# torch notes, on making one, that its CSR support is in beta: not what this test checks
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state:UserWarning")
def test_triton_path_says_sparse_for_a_csr_gradient():
    from generated.triton import adam as tr_adam

    w = torch.ones(2, 2)
    g = torch.ones(2, 2).to_sparse_csr()
    state = {"mean": torch.zeros(2, 2), "var": torch.zeros(2, 2)}
    before = [w.clone(), state["mean"].clone(), state["var"].clone()]
    for call in (
        lambda: tr_adam.step(w, g, state, 1),
        lambda: tr_adam.step_multi([w], [g], [state], 1),
    ):
        with pytest.raises(TypeError, match="adam: grad is sparse"):
            call()
    assert all(
        torch.equal(a, b) for a, b in zip(before, [w, state["mean"], state["var"]], strict=True)
    )


@pytest.mark.parametrize("backend", ["numpy", "triton", "auto"])
def test_meta_tensors_are_called_meta_tensors(backend):
    p = torch.nn.Parameter(torch.ones(4, device="meta"))
    p.grad = torch.ones(4, device="meta")
    opt = Adam([p], backend=backend)
    with pytest.raises(ValueError, match="Adam: parameter 0 is a meta tensor"):
        opt.step()
    assert not opt.state


def test_triton_module_says_meta_tensor():
    from generated.triton import adam as tr_adam

    w = torch.ones(4, device="meta")
    state = {"mean": torch.zeros(4, device="meta"), "var": torch.zeros(4, device="meta")}
    with pytest.raises(ValueError, match="adam: weight is a meta tensor"):
        tr_adam.step(w, torch.ones(4, device="meta"), state, 1)


def test_sgld_seed_must_be_a_whole_number() -> None:
    """seed=0.7 used to draw seed=0's noise; a fractional seed is refused before any write."""
    from generated.numpy import sgld

    w = np.ones(8, dtype=np.float32)
    g = np.ones(8, dtype=np.float32)
    state = sgld.init_state(w)
    before = w.copy()
    with pytest.raises(ValueError, match="seed"):
        sgld.step(w, g, state, 1, seed=0.7)
    np.testing.assert_array_equal(w, before)
    sgld.step(w, g, state, 1, seed=7)


# 4. aliasing: checked for the whole step before any state is created or anything written ------

BACKENDS = ["numpy", "triton"]


def alias_of(p: torch.Tensor, how: str) -> torch.Tensor:
    """A gradient that shares ``p``'s memory: ``p.data`` itself, a reshaped view, a strided one."""
    if how == "data":
        return p.data
    if how == "view":
        return p.data.view(-1).view(p.shape)
    return p.data.t()  # strided: its extent overlaps p's


def make2d(cls, backend, **hp):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 3)) for _ in range(3)]
    for p in params:
        p.grad = torch.randn(3, 3)
    return params, cls(params, backend=backend, **hp)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["data", "view", "strided"])
@pytest.mark.parametrize("rule", sorted(RULES))
def test_first_step_refuses_a_grad_aliasing_its_parameter_before_anything(rule, how, backend):
    """Used to: the NumPy backend updated parameter 0 before raising on parameter 2; the Triton
    backend created every parameter's state first. Now: refused before any state or write."""
    params, opt = make2d(RULES[rule], backend)
    params[2].grad = alias_of(params[2], how)
    step = lambda: opt.step(**class_inputs(opt))  # noqa: E731
    refused(params, opt, ValueError, r"parameter 2 and parameter 2's grad share memory", step)
    assert not opt.state


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", ["adam", "nadam", "lamb", "sgld", "sgd"])
def test_later_step_refuses_a_grad_that_is_another_parameters_weight(rule, backend):
    params, opt = make2d(RULES[rule], backend)
    opt.step()
    params[2].grad = params[0].data
    refused(params, opt, ValueError, r"parameter 0 and parameter 2's grad share memory", opt.step)
    assert [int(opt.state[p]["step"]) for p in params] == [1, 1, 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_overlapping_parameters_are_refused_disjoint_views_accepted(backend):
    base = torch.randn(12)
    params = [torch.nn.Parameter(base[:6]), torch.nn.Parameter(base[4:10])]
    for p in params:
        p.grad = torch.randn(6)
    opt = Adam(params, backend=backend)
    refused(params, opt, ValueError, r"parameter 0 and parameter 1 share memory", opt.step)
    assert not opt.state
    params = [torch.nn.Parameter(base[:6]), torch.nn.Parameter(base[6:])]
    for p in params:
        p.grad = torch.randn(6)
    Adam(params, backend=backend).step()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_state_tensor_shared_by_two_parameters_is_refused(backend):
    params, opt = make2d(Adam, backend)
    opt.step()
    opt.state[params[1]]["mean"] = opt.state[params[0]]["mean"]
    refused(
        params,
        opt,
        ValueError,
        r"parameter 0's state\['mean'\] and parameter 1's state\['mean'\] share memory",
        opt.step,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", ["adam", "lars", "signsgd"])
def test_one_gradient_shared_by_parameters_is_still_accepted(rule, backend):
    """Gradients are only read: the same one for two parameters steps as two equal copies do,
    also where GradScaler's scale is taken out of the gradients in place (LARS, SignSGD)."""
    results = []
    for shared in (True, False):
        params, opt = make2d(RULES[rule], backend)
        grad = torch.randn(3, 3)
        for p in params:
            p.grad = grad if shared else grad.clone()
        opt.grad_scale, opt.found_inf = torch.full((1,), 4.0), torch.zeros(1)
        opt.step()
        del opt.grad_scale, opt.found_inf
        results.append([p.detach().clone() for p in params] + [params[0].grad.clone()])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


# 5. step_multi: buffers checked across tensors before any launch ------------------------------


def multi_inputs(module, n=3):
    torch.manual_seed(0)
    weights = [torch.randn(7) for _ in range(n)]
    grads = [torch.randn(7) for _ in range(n)]
    states = [module.init_state(w) for w in weights]
    for s in states:
        for key in module.STATES:
            s[key].uniform_(0.5, 1.0)  # positive: every rule's state is legal
    return weights, grads, states


def multi_bytes(weights, grads, states):
    out = [x.numpy().tobytes() for x in (*weights, *grads)]
    for s in states:
        out += [(k, v.numpy().tobytes()) if torch.is_tensor(v) else (k, v) for k, v in s.items()]
    return out


MULTI_RULES = ["adam", "nadam", "sgd_mom", "lamb", "sgld", "adadelta"]


@pytest.mark.parametrize("rule", MULTI_RULES)
@pytest.mark.parametrize("case", ["same weight", "grad is a weight", "same state", "weight view"])
def test_step_multi_refuses_overlaps_across_tensors_before_any_launch(rule, case):
    import importlib

    from optgen_runtime.triton_launch import LAUNCHES

    module = importlib.import_module(f"generated.triton.{rule}")
    weights, grads, states = multi_inputs(module)
    if case == "same weight":
        weights[2], match = weights[0], r"tensor 0's weight and tensor 2's weight"
    elif case == "grad is a weight":
        grads[2], match = weights[0], r"tensor 0's weight and tensor 2's grad"
    elif case == "weight view":
        weights[2], match = weights[0][:], r"tensor 0's weight and tensor 2's weight"
    else:  # one state dict twice, refused by identity (also a rule without state tensors)
        states[2] = states[0]
        match = r"tensors 0 and 2 share one state dict: its buffers and host states"
    before = multi_bytes(weights, grads, states)
    launches = LAUNCHES["count"]
    with pytest.raises(ValueError, match=rf"^{rule}: .*{match}.*(share memory|twice)"):
        module.step_multi(weights, grads, states, 3)
    assert multi_bytes(weights, grads, states) == before
    assert LAUNCHES["count"] == launches


@pytest.mark.parametrize("rule", ["torch_asgd", "adafactor"])
def test_one_state_dict_for_two_empty_tensors_is_refused(rule):
    """Empty tensors' buffers overlap nothing, but a shared dict's host states (ASGD's eta and
    mu) would be read once and written twice (found by the long fuzz profile); the matrix
    path (Adafactor's row and column factors) refuses it the same way."""
    import importlib

    module = importlib.import_module(f"generated.triton.{rule}")
    weights = [torch.empty(0, 3), torch.empty(0, 3)]
    grads = [torch.empty(0, 3), torch.empty(0, 3)]
    state = module.init_state(weights[0])
    before = copy.deepcopy(state)
    if rule == "torch_asgd":  # a cached table of two dicts over the same (empty) buffers
        module.step_multi(weights, grads, [module.init_state(w) for w in weights], 1)
    with pytest.raises(ValueError, match=rf"^{rule}: tensors 0 and 1 share one state dict"):
        module.step_multi(weights, grads, [state, state], 2)
    assert state.keys() == before.keys()
    assert all(
        torch.equal(v, before[k]) if isinstance(v, torch.Tensor) else v == before[k]
        for k, v in state.items()
    )


@pytest.mark.parametrize("rule", MULTI_RULES)
def test_step_multi_accepts_one_grad_for_several_weights(rule):
    import importlib

    module = importlib.import_module(f"generated.triton.{rule}")
    weights, grads, states = multi_inputs(module)
    ref_w, ref_g, ref_s = multi_inputs(module)
    grads[1] = grads[2] = grads[0]
    ref_g[1], ref_g[2] = ref_g[0].clone(), ref_g[0].clone()
    module.step_multi(weights, grads, states, 3)
    module.step_multi(ref_w, ref_g, ref_s, 3)
    assert multi_bytes(weights, grads, states) == multi_bytes(ref_w, ref_g, ref_s)


# 6. the NumPy modules take plain arrays only ---------------------------------------------------


def masked(a):
    return np.ma.masked_array(a, mask=np.zeros(a.shape, bool))


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("kind", [np.asmatrix, masked])
@pytest.mark.parametrize("which", ["weight", "grad", "state"])
@pytest.mark.parametrize("rule", sorted(RULES))
def test_numpy_modules_refuse_ndarray_subclasses_before_writing(rule, which, kind):
    """np.matrix passed as the weight used to pass the type check: adadelta, adagrad and adamw
    wrote state, then NumPy raised about broadcasting."""
    import importlib

    module = importlib.import_module(f"generated.numpy.{rule}")
    w = np.full((1, 4), 0.5, np.float32)
    g = np.full((1, 4), 0.25, np.float32)
    state = module.init_state(w)
    extra = step_inputs(module, w, 1)  # the rule's other inputs (AdaHessian's hessian), plain
    extra |= states_present(module)
    label = which
    if which == "weight":
        w = kind(w)
    elif which == "grad":
        g = kind(g)
    elif module.STATES:
        key = module.STATES[-1]
        state[key] = kind(state[key])
        label = rf"state\[{key!r}\]"
    else:
        pytest.skip("no state arrays")
    before = [np.asarray(w).tobytes(), np.asarray(g).tobytes()]
    before += [np.asarray(v).tobytes() if hasattr(v, "dtype") else v for v in state.values()]
    with pytest.raises(TypeError, match=rf"^{rule}: {label} must be a plain numpy.ndarray"):
        module.step(w, g, state, 1, **extra)
    after = [np.asarray(w).tobytes(), np.asarray(g).tobytes()]
    after += [np.asarray(v).tobytes() if hasattr(v, "dtype") else v for v in state.values()]
    assert after == before
    if which == "weight":
        with pytest.raises(TypeError, match=rf"^{rule}: weight must be a plain numpy.ndarray"):
            module.init_state(w)


def test_numpy_modules_still_take_a_memmap(tmp_path):
    w = np.memmap(tmp_path / "w", dtype=np.float32, mode="w+", shape=(4,))
    w[:] = 1.0
    state = np_adam.init_state(np.asarray(w))
    np_adam.step(w, np.ones(4, np.float32), state, 1, lr=0.1)
    assert np.all(np.asarray(w) < 1.0)


# A later param group's refusal that only the module can make (host scalars that depend on the
# step's sums or on host states) once came after the earlier groups were written: group 0's
# weights moved and the optimizer's state stayed empty (found by hand on 2026-12-04). Every
# module now queues its writes (``optgen_runtime.writes.commit``) inside the class's
# ``deferred_writes`` block, run once every group has passed.
LATE_REFUSALS = [
    ("lars", {"rescale_grad": 0.0, "wd": 0.0, "eps": 0.0}),  # a zero trust-ratio denominator
    ("lamb", {"lr": 1e300}),  # -lr * ratio past float32's range, the ratio from the sums
    ("nadam", {"lr": 1e300}),  # -lr past float32's range, computed with the host state
    ("torch_nadam", {"lr": 1e300}),  # a rule with variants: one NumPy step per tensor
]


@pytest.mark.parametrize("later", [False, True], ids=["first step", "later step"])
@pytest.mark.parametrize("backend", ["numpy", "numba", "triton"])
@pytest.mark.parametrize(("rule", "bad"), LATE_REFUSALS, ids=[r for r, _ in LATE_REFUSALS])
def test_a_later_groups_refusal_leaves_the_earlier_groups_unwritten(rule, bad, backend, later):
    """Group 1's refusal, on the first step (the full step) or after three good ones (the
    fast step on its remembered plan): group 0's weights, every state and step count, and the
    groups' settings as they were."""
    if backend == "numba":
        pytest.importorskip("numba")
    if backend == "triton" and DEVICE == "cuda":
        pytest.skip("CPU parameters: the triton backend runs them under the interpreter")
    params = [torch.nn.Parameter(torch.ones(n)) for n in (4, 3, 5)]
    groups = [{"params": params[:2]}, {"params": params[2:]}]
    opt = RULES[rule](groups, backend=backend)

    def step() -> None:
        for p in params:
            p.grad = torch.full_like(p, 0.5)
        opt.step()

    for _ in range(3 if later else 0):
        step()
    saved = copy.deepcopy(opt.state_dict())
    opt.param_groups[1].update(bad)
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match="with these hyperparameters"):  # module's or class's
        step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before, strict=True))
    now = opt.state_dict()
    assert now["state"].keys() == saved["state"].keys()
    for key, state in saved["state"].items():
        for name, value in state.items():
            got = now["state"][key][name]
            assert torch.equal(got, value) if torch.is_tensor(value) else got == value, name
    opt.param_groups[1].update({k: saved["param_groups"][1][k] for k in bad})
    step()  # and the optimizer steps on
    assert not torch.equal(params[0].detach(), before[0])
