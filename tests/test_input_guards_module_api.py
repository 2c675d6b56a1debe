"""Inputs the generated modules refused badly or not at all, found by a module-API audit
(2026-12-06): a multi-tensor step's refusal naming its tensor, a step of no tensors, a lazily
negated tensor, hyperparameters and host states of NumPy types, torch's Rprop etas, and module
steps in an all-or-nothing block. The rest of the runtime's refusals: tests/test_input_guards.py.
"""

from __future__ import annotations

import copy
import importlib

import numpy as np
import pytest
import torch
from conftest import DEVICE

from generated.numpy import adam as np_adam
from generated.torch import Adam
from optgen_runtime.writes import all_or_nothing


# ------------------------------------------------ found by a module-API audit (2026-12-06)
def _module(target: str, rule: str):
    import importlib

    return importlib.import_module(f"generated.{target}.{rule}")


def _arrays(target: str, n: int, shape=(4, 3)):
    make = (
        (lambda: torch.ones(shape)) if target == "triton" else (lambda: np.ones(shape, np.float32))
    )
    return [make() for _ in range(n)]


@pytest.mark.parametrize("rule", ["adam", "lamb", "adafactor", "muon", "sgld"])
@pytest.mark.parametrize("target", ["numpy", "numba", "triton"])
def test_step_multi_names_the_tensor_it_refuses(rule: str, target: str) -> None:
    """A refusal of one tensor of a multi-tensor step named no tensor (``adam: grad dtype must
    be ...``); now ``adam: tensor 2: ...``, nothing written. A single array where a list goes is
    refused as such (its rows were counted as tensors), and the step counts may be a 1-D array
    (one per tensor), as a list may."""
    if target == "numba":
        pytest.importorskip("numba")
    m = _module(target, rule)
    if not hasattr(m, "step_multi"):
        pytest.skip("no step_multi")
    weights, grads = _arrays(target, 3), _arrays(target, 3)
    states = [m.init_state(w) for w in weights]
    bad = list(grads)
    bad[2] = grads[2].double() if target == "triton" else grads[2].astype(np.float64)
    before = copy.deepcopy((weights, states))
    with pytest.raises(TypeError, match=rf"^{rule}: tensor 2: grad dtype must be"):
        m.step_multi(weights, bad, states, 1)
    with pytest.raises(TypeError, match=rf"^{rule}: step_multi takes weights as a list"):
        m.step_multi(weights[0], grads, states, 1)
    for a, b in zip(before[0], weights, strict=True):
        assert (np.asarray(a) == np.asarray(b)).all()
    counts = np.array([1, 2, 3]) if target != "triton" else torch.tensor([1, 2, 3])
    m.step_multi(weights, grads, states, counts)
    pairs = zip(before[0], weights, strict=True)
    assert not any((np.asarray(a) == np.asarray(b)).all() for a, b in pairs)


@pytest.mark.parametrize("rule", ["adam", "sgld", "lamb", "adahessian"])
def test_triton_step_multi_of_no_tensors_launches_nothing(rule: str) -> None:
    """Empty lists were a raw NumPy reshape error in the Triton modules (the NumPy and numba
    modules step nothing); now 0 launches, the hyperparameters still checked."""
    m = _module("triton", rule)
    extra = {"hessian": []} if rule == "adahessian" else {}
    assert m.step_multi([], [], [], 1, **extra) == 0
    with pytest.raises(ValueError, match=r"lr=-1\.0 is outside"):
        m.step_multi([], [], [], 1, lr=-1.0, **extra)


def test_a_lazily_negated_tensor_is_refused_not_misread() -> None:
    """torch's negative bit (``z.conj().imag``, ``torch._neg_view``) leaves -x in memory: the
    Triton kernels read x, and the class's fast (numba) step did too, silently (torch.optim reads
    -x). Refused now, naming it, on the module, its cached table and the class's fast step."""
    m = _module("triton", "adam")
    w, g = torch.ones(3), torch._neg_view(torch.ones(3))
    with pytest.raises(ValueError, match=r"adam: grad has torch's negative bit set"):
        m.step(w, g, m.init_state(w), 1)
    weights, grads = _arrays("triton", 2), _arrays("triton", 2)
    states = [m.init_state(x) for x in weights]
    m.step_multi(weights, grads, states, 1)  # the table cached
    with pytest.raises(ValueError, match=r"adam: tensor 0: grad has torch's negative bit set"):
        m.step_multi(weights, [torch._neg_view(x) for x in grads], states, 2)
    assert (weights[0] != 1).all() and all(int(s["mean"].ne(0).sum()) == 12 for s in states)
    p = torch.nn.Parameter(torch.ones(2))
    opt = Adam([p], lr=0.1)
    for _ in range(3):  # the fast step's plan
        p.grad = torch.ones(2)
        opt.step()
    p.grad = torch._neg_view(torch.ones(2))
    kept = p.detach().clone()
    with pytest.raises(ValueError, match=r"parameter 0's grad has torch's negative bit set"):
        opt.step()
    assert torch.equal(p.detach(), kept)


def test_hyperparameters_and_host_states_of_numpy_types() -> None:
    """A float32 host state (Prodigy's ``d``) was refused where a float64 one was taken; an
    integer lr past the largest double printed its 401 digits as "not a real number"."""
    from generated.numpy import prodigy

    w = np.ones(3, np.float32)
    state = prodigy.init_state(w)
    state["d"] = np.float32(1e-6)
    prodigy.step(w, np.ones(3, np.float32), state, 1)
    assert type(state["d"]) is float
    with pytest.raises(ValueError, match=r"lr=10000000000000000000\.\.\..* is past the largest"):
        np_adam.step(w, w.copy(), np_adam.init_state(w), 1, lr=10**400)


@pytest.mark.parametrize("target", ["numpy", "triton"])
def test_torch_rprop_takes_torchs_etas_only(target: str) -> None:
    """torch.optim.Rprop refuses etas outside 0 < etaminus < 1 < etaplus (its drop-in does too);
    the module took etaminus=1.5 and etaplus=0.5 (a step size that grows on a sign change)."""
    m = _module(target, "torch_rprop")
    w = _arrays(target, 1, (3,))[0]
    for key, value, legal in [("etaminus", 1.0, r"\(0, 1\)"), ("etaplus", 1.0, r"\(1, inf\)")]:
        with pytest.raises(ValueError, match=rf"{key}={value} is outside its legal values {legal}"):
            m.step(w, w * 1, m.init_state(w), 1, **{key: value})
    assert (np.asarray(w) == 1).all()


@pytest.mark.parametrize(
    ("backend", "multi"),
    [("numpy", False), ("numba", False), ("numba", True), ("triton", False), ("triton", True)],
)
def test_a_modules_steps_in_an_all_or_nothing_block_write_only_if_all_pass(backend, multi):
    """Every target's step queues its writes inside the block (``commit``): a later step's
    refusal leaves an earlier one's weight and state unwritten; without a refusal, both are."""
    if backend == "numba":
        pytest.importorskip("numba")
    module = importlib.import_module(f"generated.{backend}.adam")
    tensor = backend == "triton"

    def array(n: int, value: float):
        x = torch.full((n,), value, device=DEVICE) if tensor else np.full(n, value, np.float32)
        return x

    def step(w, g, state) -> None:
        if multi:
            module.step_multi([w], [g], [state], 1)
        else:
            module.step(w, g, state, 1)

    w, state = array(4, 1.0), None
    state = module.init_state(w)
    bad = array(3, 1.0)
    with pytest.raises(ValueError, match="shape"), all_or_nothing():
        step(w, array(4, 0.5), state)
        step(bad, array(2, 0.5), module.init_state(bad))  # a gradient of another shape
    assert (w == 1).all() and all((x == 0).all() for x in state.values())
    with all_or_nothing():
        step(w, array(4, 0.5), state)
        step(bad, array(3, 0.5), module.init_state(bad))
    assert (w < 1).all() and (bad < 1).all()
