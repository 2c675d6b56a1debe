"""The NumPy reference's ``step_multi`` for rules with per-tensor reductions (LARS's and LAMB's
norms, Adafactor's and CAME's row and column means, SM3's covers): each tensor is reduced over
itself alone, as ``step`` on each would, and every tensor is reduced and checked, and its host
scalars computed, before anything is written, so a refusal of the last tensor leaves the
first as it was. The torch classes step a group's CPU tensors through it on the NumPy backend
(found by the long fuzz profile: they stepped one tensor after another, and wrote the first
before the second was refused). The Triton module of a rule with row/column states (one step
per tensor: Adafactor, CAME, SM3) had the same gap in its ``step_multi``, closed the same way."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from conftest import ALL_RULES, numpy_module

# Rules whose scalars depend on the data through per-tensor reductions only (group reductions
# have their own tests: tests/test_group_reductions.py); the matrix-equation rules (Muon,
# AdaMuon) check before they step by construction and have their own step_multi.
STAGED = sorted(
    name
    for name, rule in ALL_RULES.items()
    if rule.reductions and not rule.group_reductions and not rule.matrix_values
)
SHAPES = [(7, 5), (13,), (3, 4)]


def test_the_staged_rules_are_the_ones_with_per_tensor_reductions() -> None:
    """These six at least (a new spec with per-tensor reductions joins them, and every test
    here then checks it too); group-sum rules (AdamClip, Prodigy) are tested elsewhere."""
    assert {"adafactor", "came", "lamb", "lars", "lbsgd", "sm3"} <= set(STAGED)
    assert not {"adam_clip", "prodigy", "adam"} & set(STAGED)
    for name in STAGED:
        assert hasattr(numpy_module(name), "step_multi"), name


def _tensors(module, seed: int) -> tuple[list, list, list]:
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    gs = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    states = [module.init_state(w) for w in ws]
    return ws, gs, states


def _snapshot(ws: list, states: list) -> list:
    return [(w.copy(), copy.deepcopy(s)) for w, s in zip(ws, states, strict=True)]


def _assert_same(got: list, want: list) -> None:
    for (w, s), (w0, s0) in zip(got, want, strict=True):
        np.testing.assert_array_equal(w, w0)
        assert s.keys() == s0.keys()
        for key in s:
            np.testing.assert_array_equal(s[key], s0[key], err_msg=key)


@pytest.mark.parametrize("name", STAGED)
def test_step_multi_reduces_each_tensor_over_itself(name: str) -> None:
    """Three tensors at step counts 1, 3, 2, two steps: bit for bit what ``step`` on each gives
    (a group-wide norm, as a group reduction would take, moves every tensor's update)."""
    module = numpy_module(name)
    ws, gs, states = _tensors(module, 0)
    each_w, each_s = [w.copy() for w in ws], copy.deepcopy(states)
    for k in range(2):
        ts = [1 + k, 3 + k, 2 + k]
        module.step_multi(ws, gs, states, ts)
        for w, g, s, t in zip(each_w, gs, each_s, ts, strict=True):
            module.step(w, g, s, t)
    _assert_same(_snapshot(ws, states), _snapshot(each_w, each_s))
    assert not np.array_equal(ws[0], _tensors(module, 0)[0][0])  # the step moved the weight


@pytest.mark.parametrize("name", STAGED)
def test_a_refused_last_tensor_leaves_the_first_unwritten(name: str) -> None:
    """The last tensor's gradient is float64 for a float32 weight: refused, naming it, after
    the first tensors were reduced; none was written."""
    module = numpy_module(name)
    ws, gs, states = _tensors(module, 1)
    before = _snapshot(ws, states)
    gs[-1] = gs[-1].astype(np.float64)
    with pytest.raises((TypeError, ValueError), match=name):
        module.step_multi(ws, gs, states, 1)
    _assert_same(_snapshot(ws, states), before)


def test_a_scalar_only_the_last_tensors_data_refuses_writes_nothing() -> None:
    """LARS at lr = 5e-324: the first tensor's trust ratio makes its kernel scalar 0 in float64,
    the empty tensor's (ratio 1) 5e-324, which float32 cannot hold: refused, after the first
    tensor was reduced and checked, before it was written."""
    module = numpy_module("lars")
    rng = np.random.default_rng(2)
    ws = [rng.standard_normal(5).astype(np.float32), np.zeros(0, np.float32)]
    gs = [rng.standard_normal(5).astype(np.float32), np.zeros(0, np.float32)]
    states = [module.init_state(w) for w in ws]
    module.step(ws[0], gs[0], copy.deepcopy(states[0]), 1, lr=5e-324)  # alone: accepted
    before = _snapshot(ws, states)
    with pytest.raises(ValueError, match="float32 cannot hold"):
        module.step_multi(ws, gs, states, 1, lr=5e-324, momentum=0.9)
    _assert_same(_snapshot(ws, states), before)


def test_step_multi_checks_its_lists() -> None:
    module = numpy_module("lamb")
    ws, gs, states = _tensors(module, 3)
    with pytest.raises(ValueError, match="lamb: 3 weights, 2 grads, 3 states"):
        module.step_multi(ws, gs[:2], states, 1)
    with pytest.raises(ValueError, match="lamb"):
        module.step_multi(ws, gs, states, [1, 2])  # one step count per tensor, or one for all
    with pytest.raises(ValueError, match=r"lamb: .*tensor 0's weight"):
        module.step_multi([ws[0], ws[0], ws[2]], gs, states, 1)  # the same weight twice


INPUT_SPEC = '''"""w -= lr * h * g / (||h|| + 1e-12): an input and its norm (demonstration)."""

import sympy as sp

from codegen.spec import Rule, positive

RULE = Rule("input_norm_demo", __doc__)
lr = RULE.hyper("lr", 0.5, positive(), doc="step size")
h = RULE.input("h", doc="a per-element weighting")
w, g = RULE.weight, RULE.grad
size = RULE.let("size", lr / (RULE.norm("h_sq", h) + sp.Float("1e-12")))
RULE.update(w, w - size * h * g)
'''


def test_per_element_inputs_come_as_one_list_per_input(tmp_path) -> None:
    """A rule with a per-element input and a norm of it: ``step_multi`` takes one array per
    weight, each tensor normed over its own input (against the formula in float64); a list
    of another length, or none, is refused naming the input, before any write."""
    from conftest import temporary_rule

    with temporary_rule(tmp_path, "input_norm_demo", INPUT_SPEC) as modules:
        module = modules["numpy"]
        rng = np.random.default_rng(4)
        ws = [rng.standard_normal(n) for n in (6, 11)]
        gs = [rng.standard_normal(n) for n in (6, 11)]
        hs = [rng.standard_normal(n) for n in (6, 11)]
        want = [
            w - 0.5 * h * g / (np.linalg.norm(h) + 1e-12)
            for w, g, h in zip(ws, gs, hs, strict=True)
        ]
        states = [module.init_state(w) for w in ws]
        before = [w.copy() for w in ws]
        with pytest.raises(ValueError, match="input_norm_demo: 1 h tensors for 2 weights"):
            module.step_multi(ws, gs, states, 1, h=hs[:1])
        with pytest.raises(TypeError, match="input_norm_demo: the input h is missing"):
            module.step_multi(ws, gs, states, 1)
        for w, w0 in zip(ws, before, strict=True):
            np.testing.assert_array_equal(w, w0)
        module.step_multi(ws, gs, states, 1, h=hs)
        for w, expected in zip(ws, want, strict=True):
            np.testing.assert_allclose(w, expected, rtol=1e-14, atol=1e-15)


def _adafactor_pair() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A weight of normal values and a zero one: at lr = 1e-43 Adafactor's update scalar
    (lr times max(eps2, rms(w)), over the clipping denominator) is a float32 subnormal for
    the first and rounds to 0 for the second (max(eps2, 0) = 1e-3)."""
    rng = np.random.default_rng(5)
    ws = [rng.standard_normal((6, 5)).astype(np.float32), np.zeros((4, 3), np.float32)]
    return ws, [rng.standard_normal(w.shape).astype(np.float32) for w in ws]


def test_triton_matrix_step_multi_sweeps_and_checks_every_tensor_first() -> None:
    """The Triton module of a rule with row/column states (one step per tensor, as its sweeps
    are shaped by each tensor) runs every tensor's sweeps and checks before any update."""
    import torch
    from conftest import DEVICE, triton_module

    module = triton_module("adafactor")
    ws, gs = _adafactor_pair()
    weights = [torch.from_numpy(w.copy()).to(DEVICE) for w in ws]
    grads = [torch.from_numpy(g).to(DEVICE) for g in gs]
    states = [module.init_state(w) for w in weights]
    module.step(weights[0].clone(), grads[0], copy.deepcopy(states[0]), 1, lr=1e-43)  # alone: fine
    before = [
        (w.clone(), {k: v.clone() for k, v in s.items()})
        for w, s in zip(weights, states, strict=True)
    ]
    with pytest.raises(
        ValueError, match=r"adafactor: .*kernel scalar _h[0-9]+ .*float32 cannot hold"
    ):
        module.step_multi(weights, grads, states, 1, lr=1e-43)
    for (w, s), (w0, s0) in zip(zip(weights, states, strict=True), before, strict=True):
        assert torch.equal(w, w0) and all(torch.equal(s[k], s0[k]) for k in s0)


@pytest.mark.parametrize("backend", ["numpy", "triton"])
def test_a_torch_class_refuses_a_later_tensor_of_a_matrix_rule_before_writing(backend: str) -> None:
    """Through the class (Adafactor, one group, the two weights above): refused, and neither
    parameter nor its state (made by a first step at the default lr) changed (the weights
    would not move at lr = 1e-43 anyway; the row and column states would)."""
    import torch
    from conftest import DEVICE

    from generated.torch import Adafactor

    device = DEVICE if backend == "triton" else "cpu"
    ws, gs = _adafactor_pair()
    params = [torch.nn.Parameter(torch.from_numpy(w.copy()).to(device)) for w in ws]
    for p, g in zip(params, gs, strict=True):
        p.grad = torch.from_numpy(g).to(device)
    opt = Adafactor(params, backend=backend)
    opt.step()
    opt.param_groups[0]["lr"] = 1e-43
    for p in params:  # new gradients: a written step would move the row and column states
        p.grad = torch.randn_like(p) * 3

    def snap() -> list:
        return [
            (p.detach().clone(), {k: torch.as_tensor(v).clone() for k, v in opt.state[p].items()})
            for p in params
        ]

    before = snap()
    with pytest.raises(ValueError, match=r"adafactor: .*float32 cannot hold"):
        opt.step()
    for (w, s), (w0, s0) in zip(snap(), before, strict=True):
        assert torch.equal(w, w0) and s.keys() == s0.keys()
        assert all(torch.equal(s[k], s0[k]) for k in s0)
