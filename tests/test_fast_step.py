"""The torch classes' fast step (``optgen_runtime.optim.fast``) on the compiled CPU loops: taken
once nothing changed but the gradients, equal to the NumPy reference backend step by step, and
never taken on a buffer that changed since the last full step: a stale plan would write through
old addresses or skip a check, so every change below must either be refused (naming it, with
nothing written) or computed as the reference computes it."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import generated.torch as gt
from optgen_runtime.optim import fast

SHAPES = [(40, 9), (70001,), (5,)]
MATRICES = [(12, 9), (9, 12), (8, 8)]  # for the rules of matrix equations


def make(
    name: str, backend: str, seed: int = 0, shapes: list = SHAPES, **hp: Any
) -> tuple[Any, list, torch.Generator]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.003}]
    return getattr(gt, name)(groups, backend=backend, **hp), params, g


def new_grads(params: list, g: torch.Generator, keep: list) -> None:
    """Fresh gradients, the old ones kept alive: every step's are at new addresses."""
    keep += [p.grad for p in params if p.grad is not None]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)


def snapshot(opt: Any, params: list) -> list[torch.Tensor]:
    state = [v.clone() for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    return [p.detach().clone() for p in params] + state


def trajectory(
    name: str, backend: str, steps: int, change: Callable[[Any, list], None] | None = None, **hp
) -> tuple[list[torch.Tensor], Any]:
    opt, params, g = make(name, backend, **hp)
    keep: list = []
    for t in range(steps):
        new_grads(params, g, keep)
        if change is not None and t == steps - 2:
            change(opt, params)
        opt.step()
    return snapshot(opt, params), opt


def planned(name: str = "Adam", kind: str = "numba") -> tuple[Any, list, torch.Generator, list]:
    """``name`` on the compiled loops after three steps: its fast step's plan (``kind``) made."""
    opt, params, g = make(name, "numba")
    keep: list = []
    for _ in range(3):
        new_grads(params, g, keep)
        opt.step()
    assert opt._plan is not None and opt._plan.kind == kind
    return opt, params, g, keep


def planned_adam() -> tuple[Any, list, torch.Generator, list]:
    """Adam on the compiled loops after three steps: its fast step's plan made."""
    return planned()


def count_full_checks(monkeypatch: pytest.MonkeyPatch, cls: type) -> list[int]:
    calls: list[int] = []
    original = cls._check_param
    monkeypatch.setattr(
        cls, "_check_param", lambda self, p, i: (calls.append(i), original(self, p, i))
    )
    return calls


@pytest.mark.parametrize(
    ("name", "hp", "exact"),
    [
        ("Adam", {}, True),  # scalars memoised per step count
        ("NAdam", {}, True),  # host states (m_schedule)
        ("LAMB", {}, False),  # per-tensor sums: two compiled phases
        ("TorchSGD", {"momentum": 0.9, "nesterov": True}, True),
        ("TorchSGD", {}, True),  # momentum=0: no momentum buffer (absent_when), the variant
        ("Adafactor", {}, True),  # row and column factors: the plan's step_prechecked
        ("CAME", {}, True),
        ("SM3", {}, True),
    ],
)
def test_fast_steps_equal_the_numpy_reference(
    monkeypatch: pytest.MonkeyPatch, name: str, hp: dict, exact: bool
) -> None:
    calls = count_full_checks(monkeypatch, getattr(gt, name))
    got, opt = trajectory(name, "numba", 6, **hp)
    assert len(calls) == len(SHAPES) and opt._plan is not None  # only the first step in full
    want, ref = trajectory(name, "numpy", 6, **hp)
    assert ref._plan is None  # the reference never takes the fast step
    for x, y in zip(want, got, strict=True):
        if exact:
            assert torch.equal(x, y)
        else:
            torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-7)


def _grad_of_another_shape(opt: Any, params: list) -> None:
    params[1].grad.resize_(70000)  # torch refuses to assign one; in place, at the same address


def _grad_is_a_state_buffer(opt: Any, params: list) -> None:
    params[0].grad = opt.state[params[0]]["mean"]


def _grad_is_the_parameter(opt: Any, params: list) -> None:
    params[2].grad = params[2].detach()


def _grad_inside_a_state_buffer(opt: Any, params: list) -> None:
    params[2].grad = opt.state[params[1]]["var"][100:105]


def _state_resized_in_place(opt: Any, params: list) -> None:
    opt.state[params[1]]["var"].resize_(3)


def _state_replaced_by_another_dtype(opt: Any, params: list) -> None:
    opt.state[params[0]]["mean"] = torch.zeros(40, 9, dtype=torch.float64)


def _parameter_data_replaced(opt: Any, params: list) -> None:
    params[0].data = torch.randn(9, 40)
    params[0].grad = torch.randn(9, 40)


def _state_entry_removed(opt: Any, params: list) -> None:
    del opt.state[params[2]]["var"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_grad_of_another_shape, r"parameter 1's grad"),
        (_grad_is_a_state_buffer, r"share memory"),
        (_grad_is_the_parameter, r"share memory"),
        (_grad_inside_a_state_buffer, r"share memory"),
        (_state_resized_in_place, r"parameter 1's state\['var'\]"),
        (_state_replaced_by_another_dtype, r"parameter 0's state\['mean'\]"),
        (_parameter_data_replaced, r"parameter 0"),
        (_state_entry_removed, r"parameter 2's state"),
    ],
)
def test_a_changed_buffer_is_refused_with_nothing_written(change: Callable, message: str) -> None:
    assert_refused_untouched(*planned_adam(), change, message)


def assert_refused_untouched(
    opt: Any, params: list, g: torch.Generator, keep: list, change: Callable, message: str
) -> None:
    """A planned optimizer's next step, after ``change``, refused naming it: nothing written."""
    new_grads(params, g, keep)
    change(opt, params)
    before = snapshot(opt, params)
    with pytest.raises((ValueError, TypeError), match=message):
        opt.step()
    after = snapshot(opt, params)
    assert len(before) == len(after)
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))


def _step_count_set_in_place(opt: Any, params: list) -> None:
    opt.state[params[1]]["step"].fill_(40)


def _grad_not_contiguous(opt: Any, params: list) -> None:
    params[1].grad = torch.randn(140002, generator=torch.Generator().manual_seed(5))[::2]


def _a_parameter_without_grad(opt: Any, params: list) -> None:
    params[0].grad = None


def _state_edited_in_place(opt: Any, params: list) -> None:
    opt.state[params[0]]["var"].mul_(2.0)


def _lr_changed(opt: Any, params: list) -> None:
    opt.param_groups[1]["lr"] = 0.05


def _momentum_switched_on(opt: Any, params: list) -> None:
    if "momentum" in opt.param_groups[0]:
        opt.param_groups[0]["momentum"] = 0.9


def _momentum_switched_off(opt: Any, params: list) -> None:
    if "momentum" in opt.param_groups[0]:
        opt.param_groups[0]["momentum"] = 0.0


@pytest.mark.parametrize(
    "change",
    [
        _step_count_set_in_place,
        _grad_not_contiguous,
        _a_parameter_without_grad,
        _state_edited_in_place,
        _lr_changed,
    ],
)
def test_a_legal_change_is_computed_as_the_reference_computes_it(change: Callable) -> None:
    got, _ = trajectory("Adam", "numba", 5, change)
    want, _ = trajectory("Adam", "numpy", 5, change)
    assert all(torch.equal(x, y) for x, y in zip(want, got, strict=True))


@pytest.mark.parametrize(
    ("change", "momentum"), [(_momentum_switched_on, 0.0), (_momentum_switched_off, 0.9)]
)
def test_a_state_that_comes_or_goes_with_a_hyperparameter(
    change: Callable, momentum: float
) -> None:
    """torch_sgd's momentum buffer is absent at momentum=0: switching momentum between steps
    changes which kernels run and which buffers they take; computed as the reference does."""
    got, opt = trajectory("TorchSGD", "numba", 5, change, momentum=momentum)
    want, _ = trajectory("TorchSGD", "numpy", 5, change, momentum=momentum)
    assert len(got) == len(want)
    assert all(torch.equal(x, y) for x, y in zip(want, got, strict=True))
    assert opt._plan is not None


@pytest.mark.parametrize("small", [64, 0])  # compared one by one, vectorised
def test_the_overlap_test_sees_a_gradient_starting_inside_a_written_span(
    monkeypatch: pytest.MonkeyPatch, small: int
) -> None:
    """The test against the sorted written spans, alone: before, inside, straddling the end,
    after, empty."""
    monkeypatch.setattr(fast, "SMALL", small)
    plan = fast.Plan(())
    plan.written_starts = np.array([100, 300], dtype=np.int64)
    plan.written_ends = np.array([200, 400], dtype=np.int64)
    for start, size, clear in [
        (0, 100, True),
        (0, 101, False),
        (150, 10, False),
        (199, 10, False),
        (200, 100, True),
        (250, 100, False),
        (400, 8, True),
        (350, 0, True),
    ]:
        plan.grad_bytes = np.array([size], dtype=np.int64)
        plan.spans = ([100, 300], [200, 400], [size])
        plan.clear = []
        assert fast.FastStep._grads_clear(plan, [[start]]) is clear, (start, size)


@pytest.mark.parametrize(
    ("name", "hp"), [("Adam", {}), ("NAdam", {}), ("SGLD", {"seed": 3}), ("LAMB", {})]
)
def test_triton_fast_steps_equal_full_steps(
    monkeypatch: pytest.MonkeyPatch, name: str, hp: dict
) -> None:
    """On the Triton kernels (interpreted here) the fast step launches what the full step
    launches, from the remembered weights, views, noise streams and offsets: the same bits as
    a run that never remembers a plan."""
    shapes = [(40, 9), (3000,), (5,)]

    def run(remember: bool) -> tuple[list[torch.Tensor], list[int]]:
        g = torch.Generator().manual_seed(1)
        params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
        groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.003}]
        opt = getattr(gt, name)(groups, backend="triton", **hp)
        if not remember:
            opt._remember = lambda: None
        calls = count_full_checks(monkeypatch, type(opt))
        keep: list = []
        for _ in range(4):
            new_grads(params, g, keep)
            opt.step()
        return snapshot(opt, params), list(calls)

    fast_run, fast_calls = run(True)
    full_run, full_calls = run(False)
    assert len(fast_calls) == len(shapes) and len(full_calls) == 4 * len(shapes)
    for x, y in zip(full_run, fast_run, strict=True):
        assert torch.equal(x, y)


def test_the_step_counts_of_a_plan_advance_save_and_load_as_before() -> None:
    """The plan keeps the step counts as 0-d views of one array (one add advances them all):
    each is still an exact int64 0-d CPU tensor with its own 8-byte storage, advanced every
    fast step, saved and copied alone; one replaced or edited by the user is seen."""
    opt, params, g, keep = planned_adam()
    steps = [opt.state[p]["step"] for p in params]
    assert [int(s) for s in steps] == [3, 3, 3]
    assert all(s.dtype == torch.int64 and s.dim() == 0 and s.device.type == "cpu" for s in steps)
    assert all(s.untyped_storage().nbytes() == 8 for s in steps)
    saved = copy.deepcopy(opt.state_dict())
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    new_grads(params, g, keep)
    opt.step()  # a fast step: the saved copies stay, the live counts advance
    assert [int(s) for s in steps] == [4, 4, 4]
    assert [int(s["step"]) for s in saved["state"].values()] == [3, 3, 3]
    buffer.seek(0)
    loaded = torch.load(buffer)
    assert [int(s["step"]) for s in loaded["state"].values()] == [3, 3, 3]
    opt.state[params[0]]["step"] = torch.tensor(10)  # replaced: a full step, from 10
    opt.state[params[2]]["step"].add_(5)  # edited by a torch op: seen by its version
    others = [torch.nn.Parameter(p.detach().clone()) for p in params]
    want = gt.Adam([{"params": others[:2]}, {"params": others[2:], "lr": 0.003}], backend="numpy")
    want.load_state_dict(copy.deepcopy(opt.state_dict()))
    new_grads(params, g, keep)
    for o, p in zip(others, params, strict=True):
        o.grad = p.grad.clone()
    opt.step()
    want.step()
    assert [int(opt.state[p]["step"]) for p in params] == [11, 5, 10]
    assert all(torch.equal(o, p) for o, p in zip(others, params, strict=True))


@pytest.mark.parametrize("multi_precision", [False, True], ids=["working_copy", "master"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", ["Adam", "LAMB", "TorchSGD"])
def test_low_precision_fast_steps_equal_full_steps(
    monkeypatch: pytest.MonkeyPatch, name: str, dtype: torch.dtype, multi_precision: bool
) -> None:
    """fp16/bf16 parameters on the compiled loops take the fast step: their gradients
    converted into float32 scratch every step (the weight they update, master or working
    copy, is float32), weights without a master copy through float32 working copies rounded
    back after the step, as the full step does. 6 steps to the bit the same class stepping in
    full every time (gradients replaced each step, as a backward pass does)."""

    hp = {"momentum": 0.9} if name == "TorchSGD" else {}
    cls = getattr(gt, name)
    _fast_steps_equal_full_steps(monkeypatch, cls, dtype, multi_precision=multi_precision, **hp)


def _fast_steps_equal_full_steps(
    monkeypatch: pytest.MonkeyPatch, cls: type, dtype: torch.dtype, **kwargs: Any
) -> tuple[Any, list[torch.nn.Parameter]]:
    """6 steps of ``cls(..., **kwargs)`` on the numba backend (two groups, gradients of ``dtype``
    replaced each step, as a backward pass does): only the first a full step, the rest fast, to
    the bit the same optimizer stepping in full every time. Returns the fast one and its
    parameters."""

    def run(fast: bool) -> tuple[list[torch.Tensor], Any, list[torch.nn.Parameter]]:
        g = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in SHAPES]
        if dtype.is_complex:  # both parts drawn
            for p in params:
                p.data = torch.randn(p.shape, generator=g, dtype=dtype)
        groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.003}]
        opt = cls(groups, backend="numba", **kwargs)
        if not fast:
            opt._fast_step = lambda given: False
        keep: list = []
        for _ in range(6):
            keep += [p.grad for p in params if p.grad is not None]
            for p in params:
                p.grad = torch.randn(p.shape, generator=g, dtype=dtype)
            opt.step()
        return snapshot(opt, params), opt, params

    calls = count_full_checks(monkeypatch, cls)
    got, opt, params = run(True)
    assert len(calls) == len(SHAPES) and opt._plan is not None  # only the first step in full
    want, _, _ = run(False)
    assert len(calls) == 7 * len(SHAPES)
    for x, y in zip(want, got, strict=True):
        assert x.dtype == y.dtype and torch.equal(x, y)
    return opt, params


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("name", ["Adam", "LAMB", "TorchAdagrad"])
def test_complex_fast_steps_equal_full_steps(
    monkeypatch: pytest.MonkeyPatch, name: str, dtype: torch.dtype
) -> None:
    """Complex parameters on the compiled loops take the fast step, as their real views (the
    same memory, twice the elements): 6 steps to the bit the same class stepping in full every
    time (LAMB's norms add both parts' squares, Adagrad's complex initial sum). A lazily
    conjugated gradient then is not taken fast: the full step refuses it, naming it."""

    opt, params = _fast_steps_equal_full_steps(monkeypatch, getattr(gt, name), dtype)
    before = snapshot(opt, params)
    params[1].grad = torch.randn(params[1].shape, dtype=dtype).conj()
    with pytest.raises(ValueError, match="parameter 1 or its grad is a lazily conjugated view"):
        opt.step()
    assert all(torch.equal(x, y) for x, y in zip(before, snapshot(opt, params), strict=True))


def planned_adafactor() -> tuple[Any, list, torch.Generator, list]:
    """Adafactor (row and column factors) after three steps: its plan made ("rows")."""
    return planned("Adafactor", "rows")


def _row_state_resized_in_place(opt: Any, params: list) -> None:
    opt.state[params[0]]["row"].resize_(3)


def _col_state_replaced_by_another_dtype(opt: Any, params: list) -> None:
    opt.state[params[0]]["col"] = torch.zeros(1, 9, dtype=torch.float64)


def _grad_inside_a_col_state(opt: Any, params: list) -> None:
    params[2].grad = opt.state[params[1]]["col"].reshape(-1)[100:105]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_row_state_resized_in_place, r"parameter 0's state\['row'\]"),
        (_col_state_replaced_by_another_dtype, r"parameter 0's state\['col'\]"),
        (_grad_inside_a_col_state, r"share memory"),
        (_grad_of_another_shape, r"parameter 1's grad"),
    ],
)
def test_a_changed_row_or_column_buffer_is_refused_with_nothing_written(
    change: Callable, message: str
) -> None:
    assert_refused_untouched(*planned_adafactor(), change, message)


def _row_state_edited_in_place(opt: Any, params: list) -> None:
    opt.state[params[0]]["row"].mul_(2.0)


@pytest.mark.parametrize(
    "change",
    [
        _step_count_set_in_place,
        _grad_not_contiguous,
        _a_parameter_without_grad,
        _row_state_edited_in_place,
        _lr_changed,
    ],
)
def test_a_legal_change_to_a_row_rule_is_computed_as_the_reference_computes_it(
    change: Callable,
) -> None:
    got, opt = trajectory("Adafactor", "numba", 5, change)
    want, _ = trajectory("Adafactor", "numpy", 5, change)
    assert all(torch.equal(x, y) for x, y in zip(want, got, strict=True))
    assert opt._plan is not None and opt._plan.kind == "rows"  # made again after the change


@pytest.mark.parametrize(
    ("dtype", "master"),
    [(torch.bfloat16, False), (torch.float16, False), (torch.bfloat16, True)],
)
@pytest.mark.parametrize("name", ["Adafactor", "Muon"])
def test_a_row_or_matrix_rule_on_half_precision_takes_the_plan(
    monkeypatch: pytest.MonkeyPatch, name: str, dtype: torch.dtype, master: bool
) -> None:
    """The plan takes a bfloat16 or float16 weight through a float32 working copy of its own
    (copied in before the step, rounded back after), and its gradient converted into a
    float32 scratch of its own, as the full step does with temporaries; with
    ``multi_precision`` the float32 master is the weight and the parameter is rounded from it
    after. Only the first step is checked in full; every step equals the NumPy reference's
    (full steps) to the bit, states included."""
    calls = count_full_checks(monkeypatch, getattr(gt, name))

    def run(backend: str) -> tuple[list[torch.Tensor], Any]:
        g = torch.Generator().manual_seed(1)
        params = [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in MATRICES]
        opt = getattr(gt, name)(params, backend=backend, multi_precision=master)
        for _ in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g).to(dtype)
            opt.step()
        return snapshot(opt, params), opt

    got, opt = run("numba")
    assert opt._plan is not None and opt._plan.kind == "rows"
    assert len(calls) == len(MATRICES)  # only the first step in full
    want, ref = run("numpy")
    assert ref._plan is None
    assert len(want) == len(got) and all(map(torch.equal, want, got))
    assert got[0].dtype == dtype


def test_a_row_rule_refused_late_in_a_later_group_writes_no_group() -> None:
    """The plan's step of a row/column rule is one module call per group, which checks its host
    scalars before writing; a refusal in the second group (a weight decay that makes a kernel
    scalar float32 cannot hold, 1 - lr wd) leaves the first group unwritten too (the class's
    deferred writes)."""
    opt, params, g, keep = planned_adafactor()
    new_grads(params, g, keep)
    opt.param_groups[1]["weight_decay"] = 1e300
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match="float32"):
        opt.step()
    assert all(torch.equal(x, y) for x, y in zip(before, snapshot(opt, params), strict=True))
    opt.param_groups[1]["weight_decay"] = 0.0
    opt.step()  # accepted again
    assert opt._plan is not None and opt._plan.kind == "rows"


def _momentum_edited_in_place(opt: Any, params: list) -> None:
    state = opt.state[params[0]]
    state[next(k for k in state if k != "step")].mul_(2.0)


@pytest.mark.parametrize(
    "change", [None, _step_count_set_in_place, _a_parameter_without_grad, _momentum_edited_in_place]
)
@pytest.mark.parametrize("name", ["Muon", "AdaMuon"])
def test_a_matrix_rules_fast_steps_equal_the_numpy_reference(
    monkeypatch: pytest.MonkeyPatch, name: str, change: Callable | None
) -> None:
    """A rule of matrix equations takes the plan of the row/column rules ("rows": its compiled
    module's ``step_prechecked`` on NumPy views, checking its own scalars): after the first
    step no parameter is checked in full, and every step equals the NumPy reference's to the
    bit, a legal change between steps (taken by a full step, then a new plan) included."""
    calls = count_full_checks(monkeypatch, getattr(gt, name))
    got, opt = trajectory(name, "numba", 6, change, shapes=MATRICES)
    assert opt._plan is not None and opt._plan.kind == "rows"
    if change is None:
        assert len(calls) == len(MATRICES)  # only the first step in full
    want, ref = trajectory(name, "numpy", 6, change, shapes=MATRICES)
    assert ref._plan is None
    assert len(want) == len(got) and all(map(torch.equal, want, got))


def test_a_matrix_rules_plan_refuses_a_gradient_that_is_a_state_buffer() -> None:
    """The plan's overlap test holds for a matrix rule: a gradient that is a state buffer is
    refused by the full step it falls back to, naming it, with nothing written."""
    opt, params, g = make("Muon", "numba", shapes=MATRICES)
    keep: list = []
    for _ in range(3):
        new_grads(params, g, keep)
        opt.step()
    assert opt._plan is not None and opt._plan.kind == "rows"

    def grad_is_the_momentum(opt: Any, params: list) -> None:
        params[0].grad = opt.state[params[0]]["momentum_buffer"]

    assert_refused_untouched(opt, params, g, keep, grad_is_the_momentum, "share memory")
