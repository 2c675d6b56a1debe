"""The generated torch.optim-style classes' (``generated.torch``) state, on the CPU: a
low-precision resume to the bit, a loaded state copied, every check (devices, corrupt state, a
new parameter's dtype) before any write, buffers updated in place without full-size
allocations, pickled and deep-copied optimizers, no reference kept to a step's inputs.
Parameters, gradients and training from tests/test_torch_classes.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import numpy_module
from test_torch_classes import (
    CLASSES,
    assert_same_state_dict,
    make_params,
    set_grads,
    train,
    two_groups,
)

from generated.torch import optim as dropin

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


@pytest.mark.parametrize("backend", ["numpy", "auto"])
def test_an_initial_value_past_float32s_range_is_rounded_as_numpy_rounds_it(backend) -> None:
    """TorchAdagrad at ``initial_accumulator_value=1e308`` on float32 weights: the state is
    made as the NumPy module's ``init_state`` makes it (``np.full_like``: inf) and the step is
    the module's; torch's ``fill_`` refused the value with a RuntimeError naming neither the
    class nor the setting (the long fuzz profile)."""
    import numpy as np

    from generated.torch import TorchAdagrad

    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    p.grad = torch.tensor([0.5, 0.25, -1.0])
    opt = TorchAdagrad([p], lr=0.1, backend=backend)
    opt.param_groups[0]["initial_accumulator_value"] = 1e308
    module = numpy_module("torch_adagrad")
    w, g = p.detach().numpy().copy(), p.grad.numpy().copy()
    with np.errstate(over="ignore"):
        state = module.init_state(w, initial_accumulator_value=1e308)
    module.step(w, g, state, 1, lr=0.1, initial_accumulator_value=1e308)
    opt.step()
    assert torch.equal(opt.state[p]["sum"], torch.from_numpy(state["sum"]))
    assert torch.equal(p.detach(), torch.from_numpy(w))
