"""A state absent under a hyperparameter value (``Rule.state(absent_when=...)``): torch_sgd at
momentum=0 keeps no momentum buffer, as torch.optim.SGD keeps none (codegen/variants.py).

The variant's modules neither take nor touch the buffer (no argument, no load, no store: 12
bytes per float32 element instead of 20, tests/test_aot.py), the rule's step functions run it
whenever momentum is 0, the torch classes create the buffer only once momentum is nonzero,
and the drop-in ``SGD``'s state_dict at momentum=0 is torch's. Malformed ``absent_when`` is
refused naming the spec file and the state.
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RULES, numpy_module, tolerance
from test_dropin import ULPS, ulps
from test_spec_errors import write_spec

from codegen.load import load_rule
from codegen.lower import lower
from codegen.spec import SpecError
from codegen.variants import absent_variants
from tools.op_counts import GOLDEN

VARIANT = "torch_sgd_without_momentum_buffer"
TARGETS = ("numpy", "numba", "triton")


def test_the_variant_reads_and_writes_only_weight_and_grad() -> None:
    rule = RULES["torch_sgd"]
    (variant,) = absent_variants(rule)
    assert variant.name == VARIANT
    lowered = lower(variant)
    assert [s.name for s in lowered.reads] == ["weight", "grad"]
    assert [s.name for s in lowered.outputs] == ["weight"]
    assert lowered.op_counts() == {"add": 2, "mul": 3}  # -lr*G + w, G = (1-2m)*g + wd*w
    full = lower(rule)
    assert [s.name for s in full.reads] == ["weight", "grad", "momentum_buffer"]
    golden = json.loads(GOLDEN.read_text())
    assert dict(lowered.report) == golden[VARIANT]  # pinned (python -m tools.op_counts --write)


@pytest.mark.parametrize("target", TARGETS)
def test_the_variant_modules_take_no_buffer(target: str) -> None:
    """Its kernels and compiled loops have no argument for the buffer; its STATES are empty."""
    module = importlib.import_module(f"generated.{target}.{VARIANT}")
    assert module.STATES == () and module.RULE == "torch_sgd"
    source = inspect.getsource(module).replace(VARIANT, "")
    code = source[source.index('"""', source.index('"""') + 3) :]  # after the docstring
    lines = [line for line in code.splitlines() if not line.strip().startswith("#")]
    assert not [line for line in lines if "momentum_buffer" in line]  # (comments: spec lines)
    main = importlib.import_module(f"generated.{target}.torch_sgd")
    assert main.ABSENT == {"momentum_buffer": {"momentum": 0.0}}


@pytest.mark.parametrize("target", ["numpy", "numba"])
def test_momentum_zero_neither_reads_nor_writes_the_buffer(target: str) -> None:
    """A buffer full of NaN, present in the state (momentum switched off mid-run) or not, is
    left as it is and changes nothing; the update is torch's w - lr * (g + wd * w)."""
    module = importlib.import_module(f"generated.{target}.torch_sgd")
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(1000).astype(np.float32)
    g = rng.standard_normal(1000).astype(np.float32)
    hp = {"lr": 0.1, "weight_decay": 0.01}
    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    p.grad = torch.from_numpy(g.copy())
    torch.optim.SGD([p], **hp).step()
    for state in ({}, {"momentum_buffer": np.full(1000, np.nan, np.float32)}):
        w = w0.copy()
        module.step(w, g, state, 3, **hp)
        assert ulps(torch.from_numpy(w), p.detach()) <= ULPS
        assert all(np.isnan(v).all() for v in state.values())
        if hasattr(module, "step_multi"):  # numba's: one compiled call for many tensors
            ws, states = [w0.copy(), w0[:10].copy()], [dict(state), {}]
            module.step_multi(ws, [g, g[:10]], states, 3, **hp)
            np.testing.assert_array_equal(ws[0], w)
            assert all(np.isnan(v).all() for v in states[0].values()) and states[1] == {}
    with pytest.raises(ValueError, match="torch_sgd: state must have exactly"):
        module.step(w0.copy(), g, {}, 3, momentum=0.9)  # with momentum the buffer is required


def test_the_variant_agrees_with_the_40_digit_equations() -> None:
    """The NumPy module at momentum=0 (its variant, on a state without the buffer) against the
    rule's own equations evaluated at 40 digits, buffer and all."""
    from reference import spec_trajectory

    ref = numpy_module("torch_sgd")
    rng = np.random.default_rng(1)
    w = rng.standard_normal(257)
    grads = [rng.standard_normal(257) for _ in range(3)]
    hp = {"lr": 0.05, "weight_decay": 0.1, "maximize": True, "dampening": 0.3}
    exact = spec_trajectory(RULES["torch_sgd"], w.copy(), grads, hp)
    state: dict = {}
    for t, g in enumerate(grads, start=1):
        ref.step(w, g, state, t, **hp)
        want = exact[t - 1]["weight"].astype(np.float64)
        np.testing.assert_allclose(w, want, **tolerance(np.float64, t, scale=float(abs(w).max())))
    assert state == {}


def _sgd(cls, momentum: float):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(33)), torch.nn.Parameter(torch.randn(4, 5))]
    return params, cls(params, lr=0.1, momentum=momentum)


def _steps(params, opt, n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()


@pytest.mark.parametrize("backend", ["numba", "numpy", "triton"])
def test_the_drop_in_sgd_keeps_no_buffer_at_momentum_zero(backend: str) -> None:
    """state_dict() as torch's (no state at all at momentum=0), torch's loads, and switching
    momentum on creates the buffer then (zeros, as our step count runs on: README)."""
    from generated.torch.optim import SGD

    params, ours = _sgd(lambda ps, **kw: SGD(ps, backend=backend, **kw), 0.0)
    tparams, theirs = _sgd(torch.optim.SGD, 0.0)
    _steps(params, ours, 3, 1)
    _steps(tparams, theirs, 3, 1)
    for p, q in zip(params, tparams, strict=True):
        assert ulps(p.detach(), q.detach()) <= ULPS
    assert all(set(ours.state[p]) == {"step"} for p in params)
    assert ours.state_dict()["state"] == theirs.state_dict()["state"] == {}
    ours.load_state_dict(theirs.state_dict())
    old = theirs.state_dict()  # what torch 1.x saved without momentum: None per parameter
    ours.load_state_dict({**old, "state": {0: {"momentum_buffer": None}}})
    assert set(ours.state[params[0]]) == {"step"}
    for group in [*ours.param_groups, *theirs.param_groups]:
        group["momentum"] = 0.9
    _steps(params, ours, 2, 2)  # torch copies the gradient into its new buffer: ours starts
    _steps(tparams, theirs, 2, 2)  # at 0 and adds (1 - dampening) times it, the same at 0
    for p, q in zip(params, tparams, strict=True):
        assert ulps(p.detach(), q.detach()) <= ULPS
    assert all(ours.state[p]["momentum_buffer"].shape == p.shape for p in params)
    assert set(ours.state_dict()["state"][0]) == {"momentum_buffer"}


def test_the_torch_class_creates_no_buffer_at_momentum_zero() -> None:
    from generated.torch import TorchSGD

    params, opt = _sgd(TorchSGD, 0.0)
    _steps(params, opt, 2, 3)
    assert all(set(opt.state[p]) == {"step"} for p in params)
    state = opt.state_dict()
    assert all(set(s) == {"step"} for s in state["state"].values())
    opt.load_state_dict(state)
    assert opt.to_torch_state_dict()["state"][0].keys() == {"step"}
    _, other = _sgd(TorchSGD, 0.0)
    other.load_torch_state_dict(opt.to_torch_state_dict())


CASES = {
    "not a hyperparameter": (
        "m = RULE.state('m', absent_when={RULE.t: 1})\n"
        "RULE.update(m, m + RULE.grad)\nRULE.update(w, w - mx.lr * m)",
        r"specs/bad.py:9: state 'm': absent_when names t, which is not a hyperparameter",
    ),
    "illegal value": (
        "m = RULE.state('m', absent_when={mx.wd: -1})\n"
        "RULE.update(m, m + RULE.grad)\nRULE.update(w, w - mx.lr * m)",
        r"specs/bad.py:9: state 'm': absent_when wd=-1 is outside its legal values",
    ),
    "not a dict": (
        "m = RULE.state('m', absent_when=[mx.wd])\n"
        "RULE.update(m, m + RULE.grad)\nRULE.update(w, w - mx.lr * m)",
        r"specs/bad.py:9: state 'm': absent_when must be a non-empty dict",
    ),
    "one of two conditions, the variant still reads it": (
        "m = RULE.state('m', absent_when={mx.wd: 0})\n"
        "v = RULE.state('v', absent_when={mx.lr: 0})\n"
        "RULE.update(m, mx.wd * m + RULE.grad)\nRULE.update(v, mx.lr * v)\n"
        "RULE.update(w, w - mx.lr * mx.wd * m + v)",
        r"specs/bad.py:13: state\(s\) m, v are absent at wd = 0, lr = 0 \(absent_when\), but the "
        r"equation for weight_new still reads v there",
    ),
    "the variant still reads it": (
        "m = RULE.state('m', absent_when={mx.wd: 0})\n"
        "RULE.update(m, mx.wd * m + RULE.grad)\nRULE.update(w, w - mx.lr * m)",
        r"specs/bad.py:11: state\(s\) m are absent at wd = 0 \(absent_when\), but the equation "
        r"for weight_new still reads m there",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_absent_when_is_refused(tmp_path: Path, case: str) -> None:
    body, message = CASES[case]
    path = write_spec(tmp_path, body)
    with pytest.raises(SpecError, match=message):
        lower(load_rule(path))


def test_a_well_formed_absent_state_lowers(tmp_path: Path) -> None:
    """The error cases above fail for their own reason: this one, the last fixed, loads."""
    path = write_spec(
        tmp_path,
        "m = RULE.state('m', absent_when={mx.wd: 0})\n"
        "RULE.update(m, mx.wd * m + RULE.grad)\nRULE.update(w, w - mx.lr * mx.wd * m)",
    )
    (variant,) = absent_variants(load_rule(path))
    assert variant.name == "bad_without_m" and not variant.states


def test_states_with_conditions_of_their_own_get_a_variant_per_set(tmp_path: Path) -> None:
    """Two states, each absent under its own value (torch_rmsprop's momentum buffer and
    grad_avg): one variant without each and one without both, each without only its states."""
    path = write_spec(
        tmp_path,
        "m = RULE.state('m', absent_when={mx.wd: 0})\n"
        "v = RULE.state('v', absent_when={mx.rescale_grad: 1})\n"
        "m_new = RULE.update(m, mx.wd * m + RULE.grad)\n"
        "v_new = RULE.update(v, (mx.rescale_grad - 1) * v + RULE.grad)\n"
        "RULE.update(w, w - mx.lr * mx.wd * m_new - mx.lr * (mx.rescale_grad - 1) * v_new)",
    )
    rule = load_rule(path)
    variants = {v.name: list(v.states) for v in absent_variants(rule)}
    assert variants == {"bad_without_m_v": [], "bad_without_m": ["v"], "bad_without_v": ["m"]}
