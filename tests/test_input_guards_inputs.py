"""Per-element inputs besides the gradient (AdaHessian's hessian) that the runtime refuses: a
missing, misshapen, mistyped, strided or aliased input, in the NumPy and Triton modules and the
torch classes, refused before anything is written; an input may share memory with the gradient,
and inputs of several dtypes take one launch each. Helpers from tests/test_input_guards.py.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import step_inputs
from test_input_guards import BACKENDS, make2d, multi_bytes, multi_inputs, refused

from generated.torch import RULES, Adam

# 7. per-element inputs besides the gradient (AdaHessian's hessian) ------------------------------

INPUT_RULES = sorted(r for r, cls in RULES.items() if cls.META.INPUTS)


def _module_bytes(w, g, state, extra):
    out = [np.asarray(x).tobytes() for x in (w, g, *extra.values())]
    return out + [np.asarray(v).tobytes() for v in state.values()]


BAD_INPUT = {
    "missing": (lambda x, w, g: None, TypeError, "the input {k} is missing"),
    "shape": (lambda x, w, g: x[:-1], ValueError, r"{k} shape is \(5,\), weight's is \(6,\)"),
    "dtype": (lambda x, w, g: x.astype(np.float16), TypeError, "{k} dtype must be"),
    "strided": (lambda x, w, g: np.repeat(x, 2)[::2], ValueError, "{k} must be C-contiguous"),
    "is the weight": (lambda x, w, g: w, ValueError, "weight and {k} share memory"),
    "not an array": (lambda x, w, g: list(x), TypeError, "{k} must be a numpy.ndarray"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
@pytest.mark.parametrize("rule", INPUT_RULES)
def test_numpy_step_refuses_a_bad_input_before_writing(rule, case):
    """A missing, misshapen, mistyped, strided or aliased per-element input is refused naming
    the rule and the input, with weight, gradient, inputs and state byte-identical."""
    import importlib

    module = importlib.import_module(f"generated.numpy.{rule}")
    make_bad, error, match = BAD_INPUT[case]
    rng = np.random.default_rng(0)
    w, g = rng.standard_normal(6), rng.standard_normal(6)
    state = module.init_state(w)
    extra = step_inputs(module, w, 1)
    key = module.INPUTS[0]
    extra[key] = make_bad(extra[key], w, g)
    before = _module_bytes(w, g, state, {k: v for k, v in extra.items() if v is not None})
    with pytest.raises(error, match=rf"^{rule}: " + match.format(k=key)):
        module.step(w, g, state, 1, **extra)
    after = _module_bytes(w, g, state, {k: v for k, v in extra.items() if v is not None})
    assert after == before


@pytest.mark.parametrize(
    "case", ["missing", "shape", "dtype", "device", "is the weight", "list length"]
)
@pytest.mark.parametrize("rule", INPUT_RULES)
def test_triton_step_and_step_multi_refuse_a_bad_input_before_any_launch(rule, case):
    import importlib

    from optgen_runtime.triton_launch import LAUNCHES

    module = importlib.import_module(f"generated.triton.{rule}")
    key = module.INPUTS[0]
    weights, grads, states = multi_inputs(module)
    xs = [torch.randn(7) for _ in weights]
    if case == "missing":
        xs[2], match, error = None, f"the input {key} is missing", TypeError
    elif case == "shape":
        xs[2], match, error = torch.randn(6), rf"{key} shape is \(6,\)", ValueError
    elif case == "dtype":
        xs[2], match, error = torch.randn(7).double(), f"{key} dtype must be", TypeError
    elif case == "device":
        xs[2], match, error = torch.randn(7, device="meta"), f"{key} is on meta", ValueError
    elif case == "is the weight":
        xs[2], match, error = weights[2], f"weight and {key} share memory", ValueError
    else:
        xs, match, error = xs[:2], f"2 {key} tensors for 3 weights", ValueError
    before = multi_bytes(weights, grads, states)
    launches = LAUNCHES["count"]
    if case != "list length":  # one tensor: step
        with pytest.raises(error, match=rf"^{rule}: {match}"):
            module.step(weights[2], grads[2], states[2], 1, **{key: xs[2]})
    if case == "missing":
        xs = None
    tensor = "" if case in ("missing", "list length") else "tensor 2: "  # one tensor's: named
    with pytest.raises(error, match=rf"^{rule}: {tensor}{match}"):
        module.step_multi(weights, grads, states, 1, **{key: xs})
    assert multi_bytes(weights, grads, states) == before
    assert LAUNCHES["count"] == launches


@pytest.mark.parametrize("target", ["numpy", "triton"])
@pytest.mark.parametrize("rule", INPUT_RULES)
def test_an_input_may_share_memory_with_the_gradient(rule, target):
    """Inputs and gradients are only read: one buffer for both steps as two equal copies do
    (as gradients shared by parameters do)."""
    import importlib

    module = importlib.import_module(f"generated.{target}.{rule}")
    make = np.asarray if target == "numpy" else torch.as_tensor
    results = []
    for shared in (True, False):
        w = make(np.linspace(-1.0, 1.0, 6, dtype=np.float32))
        g = make(np.linspace(0.5, -0.5, 6, dtype=np.float32))
        state = module.init_state(w)
        x = g if shared else g.copy() if target == "numpy" else g.clone()
        module.step(w, g, state, 1, **{k: x for k in module.INPUTS})
        results.append(np.asarray(w).tobytes())
    assert results[0] == results[1]


def test_step_multi_takes_one_launch_per_input_dtype():
    """Inputs, like gradients, may be fp32, fp16 or bf16; tensors whose inputs differ in dtype
    go in separate launches (the pointer tables are typed), and agree with ``step``."""
    from generated.triton import adahessian
    from optgen_runtime.triton_launch import LAUNCHES

    weights, grads, states = multi_inputs(adahessian)
    xs = [torch.randn(7), torch.randn(7).half(), torch.randn(7).bfloat16()]
    singles = [w.clone() for w in weights]
    single_states = copy.deepcopy(states)
    LAUNCHES["count"] = 0
    assert adahessian.step_multi(weights, grads, states, 1, hessian=xs) == 3
    for w, g, s, x in zip(singles, grads, single_states, xs, strict=True):
        adahessian.step(w, g, s, 1, hessian=x)
    assert all(torch.equal(a, b) for a, b in zip(weights, singles, strict=True))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_class_refuses_bad_step_inputs_before_anything(backend):
    """``step(hessian=...)``: missing, a list of the wrong length, a tensor of the wrong shape,
    a tensor that is a parameter, or an unknown input (on a rule without any) is refused before
    any state is created or anything written."""
    from generated.torch import AdaHessian

    params, opt = make2d(AdaHessian, backend)
    ok = [torch.randn(3, 3) for _ in params]
    refused(params, opt, TypeError, "AdaHessian: the step input hessian is missing", opt.step)
    refused(
        params,
        opt,
        ValueError,
        r"AdaHessian: 2 hessian tensors for 3 parameters",
        lambda: opt.step(hessian=ok[:2]),
    )
    refused(
        params,
        opt,
        ValueError,
        r"AdaHessian: parameter 1's hessian shape is \(9,\), parameter 1's is \(3, 3\)",
        lambda: opt.step(hessian=[ok[0], ok[1].reshape(-1), ok[2]]),
    )
    refused(
        params,
        opt,
        ValueError,
        r"AdaHessian: parameter 0 and parameter 0's hessian share memory",
        lambda: opt.step(hessian=[params[0].data, *ok[1:]]),
    )
    refused(
        params,
        opt,
        TypeError,
        "AdaHessian: unknown step input\\(s\\) hess; takes hessian",
        lambda: opt.step(hess=ok),
    )
    assert not opt.state
    params2, adam = make2d(Adam, backend)
    refused(
        params2,
        adam,
        TypeError,
        "Adam: unknown step input\\(s\\) hessian; takes none",
        lambda: adam.step(hessian=ok),
    )
    params[1].grad = None  # a parameter without a gradient: its entry is not read
    opt.step(hessian=[ok[0], None, ok[2]])
    assert params[1] not in opt.state and int(opt.state[params[0]]["step"]) == 1
    opt.step(hessian=[p.grad for p in params])  # inputs may share memory with gradients
    assert int(opt.state[params[0]]["step"]) == 2
