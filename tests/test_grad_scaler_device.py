"""torch.amp.GradScaler on the Triton path, with no host sync (Triton interpreter on CPU tensors;
CUDA tensors in a GPU run, ``TRITON_INTERPRET=0``: tools/gpu_check.py).

GradScaler hands an optimizer with ``_step_supports_amp_scaling`` two tensors, ``grad_scale``
and ``found_inf``, and deletes them after ``step()``. For rules without per-tensor reductions
the kernels read them on the device: a set flag writes nothing, the gradient is multiplied by
``1 / scale`` (IEEE float32, in the kernel: the bits of GradScaler.unscale_'s
``scale.double().reciprocal().float()``) after its load, and the step count and host states
advance speculatively until the next read of the state rolls them back.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import DEVICE, class_inputs
from test_fast_step import count_full_checks
from test_torch_classes import make_params as cpu_params
from test_torch_classes import set_grads, two_groups

from generated.torch import RULES as CLASSES
from generated.triton import adam as triton_adam
from generated.triton import lamb as triton_lamb
from optgen_runtime.triton_amp import amp_flags
from optgen_runtime.writes import all_or_nothing

ELEMENTWISE = sorted(rule for rule, cls in CLASSES.items() if not cls.NUMPY.REDUCTIONS)


def make_params() -> list[torch.nn.Parameter]:
    """test_torch_classes' parameters on the kernels' device (CUDA in a GPU run)."""
    return [torch.nn.Parameter(p.detach().to(DEVICE)) for p in cpu_params()]


def flag(value: float) -> torch.Tensor:
    """A one-element float32 tensor on the kernels' device, as GradScaler makes its own."""
    return torch.full((1,), value, device=DEVICE)


def amp_step(opt, scale: float | None, found: float) -> None:
    """One ``step()`` as GradScaler.step makes it: the attributes set, then deleted."""
    opt.grad_scale = None if scale is None else flag(scale)
    opt.found_inf = flag(found)
    try:
        opt.step(**class_inputs(opt))  # inputs besides the gradients are never scaled
    finally:
        del opt.grad_scale, opt.found_inf


def scaled_grads(params, t: int, scale: float) -> None:
    set_grads(params, t)
    for p in params:
        p.grad.mul_(scale)


def snapshot(params, opt) -> tuple[list[torch.Tensor], dict]:
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def assert_same(a: tuple[list[torch.Tensor], dict], b: tuple[list[torch.Tensor], dict]) -> None:
    for x, y in zip(a[0], b[0], strict=True):
        assert torch.equal(x, y)
    assert a[1]["state"].keys() == b[1]["state"].keys()
    for i, st in a[1]["state"].items():
        assert st.keys() == b[1]["state"][i].keys()
        for key, value in st.items():
            other = b[1]["state"][i][key]
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, other), (i, key)
            else:
                assert value == other, (i, key)


@pytest.mark.parametrize("rule", ["adam", "nadam", "sgd_mom", "sgld"])
def test_a_skipped_step_changes_nothing(rule: str) -> None:
    """found_inf=1 leaves weights, buffers, step counts and host states (NAdam's m_schedule) as
    they were, on the first step (no state is created) and later; the run then continues
    exactly as one that never had the skipped step."""
    scale = 2.0**6
    params = make_params()
    opt = CLASSES[rule](two_groups(rule, params), backend="triton")
    ref_params = make_params()
    ref = CLASSES[rule](two_groups(rule, ref_params), backend="triton")
    scaled_grads(params, 1, scale)
    before = snapshot(params, opt)
    amp_step(opt, scale, 1.0)
    assert_same(before, snapshot(params, opt))
    assert opt.state_dict()["state"] == {}
    for t in (1, 2, 3):
        scaled_grads(params, t, scale)
        before = snapshot(params, opt)
        amp_step(opt, scale, 1.0)  # skipped: inf/NaN gradients
        assert opt._pending is not None  # not read yet: the state is settled by state_dict()
        assert_same(before, snapshot(params, opt))
        amp_step(opt, scale, 0.0)
        set_grads(ref_params, t)
        ref.step()
        assert_same(snapshot(ref_params, ref), snapshot(params, opt))
    if rule == "nadam":
        assert opt.state_dict()["state"][0]["m_schedule"] != 1.0


@pytest.mark.parametrize("rule", ELEMENTWISE)
def test_the_kernel_unscales_as_grad_scaler_does(rule: str) -> None:
    """A scale of 2**k: the same bits as unscaled gradients with no scaler; any scale: the same
    bits as torch's own unscale_ (``_amp_foreach_non_finite_check_and_unscale_`` with
    ``scale.double().reciprocal().float()``) followed by an unscaled step."""
    for scale in (2.0**12, 3000.0):
        runs = []
        for path in ("device", "host"):
            params = make_params()
            opt = CLASSES[rule](two_groups(rule, params), backend="triton")
            for t in (1, 2, 3):
                scaled_grads(params, t, scale)
                if path == "device":
                    amp_step(opt, scale, 0.0)
                    continue
                found, inv = flag(0.0), flag(scale).double().reciprocal().float()
                torch._amp_foreach_non_finite_check_and_unscale_(
                    [p.grad for p in params], found, inv
                )
                opt.step(**class_inputs(opt))
            runs.append(snapshot(params, opt))
        assert_same(runs[0], runs[1])
        if scale == 2.0**12:
            params = make_params()
            opt = CLASSES[rule](two_groups(rule, params), backend="triton")
            for t in (1, 2, 3):
                set_grads(params, t)
                opt.step(**class_inputs(opt))
            assert_same(runs[0], snapshot(params, opt))


def test_the_float32_reciprocal_is_grad_scalers_inverse_scale() -> None:
    """The kernels compute the inverse scale as IEEE float32 ``1 / scale`` (``tl.div_rn``);
    GradScaler.unscale_ rounds the float64 reciprocal to float32. Rounding twice is innocuous
    for a quotient when the wider format has at least 2p + 2 bits (53 >= 2 * 24 + 2, Figueroa
    1995), so the two agree on every float32: checked here on every exponent (normal,
    subnormal results and overflow included) with random significands, and on GradScaler's
    usual scales."""
    rng = np.random.default_rng(7)
    exponents = np.repeat(np.arange(0, 255, dtype=np.uint32), 4000)  # 0: subnormal scales
    bits = (exponents << 23) | rng.integers(0, 1 << 23, exponents.size, dtype=np.uint32)
    usual = np.array([2.0**k for k in range(-24, 25)] + [3000.0, 65536.0 * 0.5**3], np.float32)
    scale = torch.from_numpy(np.concatenate([bits.view(np.float32), usual]))
    with np.errstate(over="ignore"):  # 1 / a subnormal scale: inf in both
        single = np.float32(1.0) / scale.numpy()  # what the interpreter's tl.div_rn computes
    double = scale.double().reciprocal().float().numpy()  # GradScaler.unscale_'s
    assert np.array_equal(single.view(np.uint32), double.view(np.uint32))
    assert torch.equal(torch.reciprocal(scale), torch.from_numpy(double))  # torch's float32 too


def test_grad_scalers_own_tensors_reach_the_kernels_as_they_are() -> None:
    """No device operation before the launch: float32 one-element tensors on the weights'
    device are the kernels' arguments themselves; another dtype is converted; a tensor of
    more than one element is refused naming it, before the class writes anything."""
    cpu = torch.device("cpu")
    found, scale = torch.zeros(()), torch.full((1,), 8.0)
    pair = amp_flags(found, scale, cpu)
    assert pair[0] is found and pair[1] is scale
    converted = amp_flags(torch.ones(1, dtype=torch.float64), None, cpu)
    assert converted[0].dtype == torch.float32 and float(converted[0]) == 1.0
    assert float(converted[1]) == 1.0
    with pytest.raises(ValueError, match="found_inf has 2 elements"):
        amp_flags(torch.zeros(2), scale, cpu)
    params = make_params()
    opt = CLASSES["adam"](two_groups("adam", params), backend="triton")
    for fast in (False, True):  # the full step, then the fast step on its plan
        set_grads(params, 1)
        before = snapshot(params, opt)
        opt.grad_scale, opt.found_inf = scale.to(DEVICE), torch.zeros(2, device=DEVICE)
        with pytest.raises(ValueError, match="found_inf has 2 elements"):
            opt.step()
        del opt.grad_scale, opt.found_inf
        assert_same(before, snapshot(params, opt))
        assert (opt._plan is not None) == fast
        opt.step()


@pytest.mark.parametrize("rule", ["adam", "nadam", "lion"])
def test_no_host_read_of_the_scaler_tensors(rule: str, monkeypatch) -> None:
    """During step() on the Triton path, reading found_inf or grad_scale on the host raises:
    the step still completes (and updates). LAMB, a rule with reductions, reads them."""
    scale, found = flag(2.0**4), flag(0.0)
    watched = {id(scale), id(found)}

    def guarded(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            if id(self) in watched:
                raise RuntimeError(f"host read of a GradScaler tensor ({name})")
            return original(self, *args, **kwargs)

        return read

    for name in ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, guarded(name))
    for name, expect_read in ((rule, False), ("lamb", True)):
        params = make_params()
        opt = CLASSES[name](two_groups(name, params), backend="triton")
        before = [p.detach().clone() for p in params]
        scaled_grads(params, 1, 2.0**4)
        opt.grad_scale, opt.found_inf = scale, found
        if expect_read:
            with pytest.raises(RuntimeError, match="host read"):
                opt.step()
            continue
        opt.step()
        assert not any(torch.equal(a, p) for a, p in zip(before, params, strict=True))


@pytest.mark.parametrize("rule", ["adam", "nadam"])
def test_real_grad_scaler_with_an_inf_gradient(rule: str) -> None:
    """torch.amp.GradScaler on the kernels' device (CPU tensors under the interpreter, CUDA in
    a GPU run), an inf gradient at step 3: the device path gives the same weights and state as
    the same run without a scaler that leaves out step 3, and agrees with the NumPy backend
    (host path, CPU tensors) on which step was skipped."""
    torch.manual_seed(0)
    x = torch.randn(8, 4)
    results = {}
    for name, backend, scaled, device in (
        ("device", "triton", True, DEVICE),
        ("host", "numpy", True, "cpu"),
        ("plain", "triton", False, DEVICE),
    ):
        model = torch.nn.Linear(4, 3).to(device)
        torch.nn.init.constant_(model.weight, 0.5)
        torch.nn.init.constant_(model.bias, 0.1)
        opt = CLASSES[rule](model.parameters(), lr=0.05, backend=backend)
        scaler = torch.amp.GradScaler(device, init_scale=2.0**10, enabled=scaled)
        for t in range(1, 6):
            opt.zero_grad()
            scaler.scale(model(x.to(device)).pow(2).mean()).backward()
            if t == 3:
                if not scaled:
                    continue
                model.weight.grad[0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
        results[name] = (list(model.parameters()), opt.state_dict(), scaler.get_scale())
    assert results["device"][2] == results["host"][2] == 2.0**9  # update() halved it once
    assert_same(results["device"][:2], results["plain"][:2])
    steps = [st["step"] for st in results["device"][1]["state"].values()]
    assert steps == [torch.tensor(4.0)] * 2
    for a, b in zip(results["device"][0], results["host"][0], strict=True):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-6)
    host_steps = [st["step"] for st in results["host"][1]["state"].values()]
    assert host_steps == steps


@pytest.mark.parametrize("rule", ["adam", "nadam", "sgd_mom", "sgld"])
def test_the_fast_step_takes_grad_scaler_steps(rule: str, monkeypatch) -> None:
    """Under GradScaler, a step on unchanged buffers takes the fast step too (the flags passed
    to the kernels on the device, the step counts and host states advanced speculatively): the
    same bits as every step taken in full, a skipped step included, and only the first step
    and the one after the skip (its state rolled back) checked in full."""
    schedule = [(2.0**4, 0.0), (2.0**4, 0.0), (8.0, 1.0), (8.0, 0.0), (None, 0.0), (2.0, 0.0)]
    results, full_steps = [], []
    for fast in (True, False):
        params = make_params()
        opt = CLASSES[rule](two_groups(rule, params), backend="triton")
        if not fast:
            monkeypatch.setattr(opt, "_fast_step", lambda given: False)
        checked = count_full_checks(monkeypatch, type(opt))
        for t, (scale, found) in enumerate(schedule, 1):
            scaled_grads(params, t, scale or 1.0)
            amp_step(opt, scale, found)
        monkeypatch.undo()
        results.append(snapshot(params, opt))
        full_steps.append(len(checked) // len(params))
    assert_same(*results)
    assert full_steps == [2, len(schedule)]


@pytest.mark.parametrize("module", [triton_adam, triton_lamb], ids=["adam", "lamb"])
@pytest.mark.parametrize("alias", ["weight", "state", "copy", "grad"])
def test_amp_flags_in_a_written_buffer_are_refused_before_any_write(module, alias) -> None:
    """The kernels read found_inf and grad_scale while they write: either inside a weight, a
    state or a copy the step writes is refused naming the tensor, before anything is written,
    inside an all-or-nothing block too (LAMB's update is queued after its sums: the flags are
    checked before it is); inside a gradient (only read) it is taken."""
    weights = [torch.ones(n, device=DEVICE) for n in (8, 16)]
    grads = [torch.full_like(w, 0.5) for w in weights]
    states = [module.init_state(w) for w in weights]
    copies = [None, torch.zeros(16, device=DEVICE, dtype=torch.bfloat16)]
    store = {"weight": weights[1], "state": next(iter(states[1].values())), "grad": grads[1]}
    store["copy"] = copies[1]
    found = store[alias].view(torch.float32)[:1] if alias == "copy" else store[alias][3:4]
    found.zero_()
    before = [x.clone() for x in [*weights, *copies[1:], *states[1].values()]]
    pair = (found, torch.ones(1, device=DEVICE))
    step = lambda: module.step_multi(weights, grads, states, 1, amp=pair, copies=copies)  # noqa: E731
    if alias == "grad":
        with all_or_nothing():
            step()
        assert not torch.equal(weights[0], torch.ones(8, device=DEVICE))
        return
    other = [torch.ones(4, device=DEVICE)]  # a good step queued first in the block
    other_states = [module.init_state(other[0])]
    for wrapped in (False, True):
        with pytest.raises(ValueError, match="amp's found_inf overlaps a buffer that tensor 1"):
            if wrapped:
                with all_or_nothing():
                    module.step_multi(other, [torch.ones(4, device=DEVICE)], other_states, 1)
                    step()
            else:
                step()
        now = [*weights, *copies[1:], *states[1].values()]
        assert all(torch.equal(a, b) for a, b in zip(before, now, strict=True))
        assert torch.equal(other[0], torch.ones(4, device=DEVICE))


def test_flags_moved_into_a_written_buffer_of_a_cached_table_are_refused() -> None:
    """The flags' check is skipped while they sit where they were last step (GradScaler makes
    them anew each step, mostly at the same addresses) and the table's written buffers have not
    moved; flags at another address are checked again: one now inside a state the cached
    table's launch writes is refused, before anything is written."""
    weights = [torch.ones(n, device=DEVICE) for n in (8, 16)]
    grads = [torch.full_like(w, 0.5) for w in weights]
    states = [triton_adam.init_state(w) for w in weights]
    pair = (flag(0.0), flag(1.0))
    for t in (1, 2):  # the second step: the cached table, the flags' check skipped
        triton_adam.step_multi(weights, grads, states, t, amp=pair)
    inside = states[1]["var"][5:6]
    inside.zero_()
    before = [x.clone() for x in [*weights, *states[0].values(), *states[1].values()]]
    with pytest.raises(ValueError, match="amp's found_inf overlaps a buffer that tensor 1"):
        triton_adam.step_multi(weights, grads, states, 3, amp=(inside, pair[1]))
    now = [*weights, *states[0].values(), *states[1].values()]
    assert all(torch.equal(a, b) for a, b in zip(before, now, strict=True))
