"""What the fast step keeps from one step to the next (``optgen_runtime.optim.fast``): a group's
resolved hyperparameters (while it holds the very same immutable values) and the checked tables
of host scalars (while the scalars are the same bits). A stale cache would compute with old
hyperparameters or skip a range check, so each change below must be computed as the NumPy
reference computes it, or refused with nothing written; and the compiled loops' serial twin
(``launch``: a few chunks) and parallel loop must both give NumPy's bits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

import generated.numba.adam as numba_adam
import generated.numpy.adam as numpy_adam
import generated.torch as gt
from optgen_runtime import numba_support

SHAPES = [(40, 9), (70001,), (5,)]


def run(
    name: str, backend: str, change: Callable[[Any], None] | None, steps: int = 6, **hp: Any
) -> tuple[list[torch.Tensor], Any]:
    """``steps`` steps on fresh gradients, ``change`` applied before the last two."""
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
    params[0].data[0, :3] = torch.tensor([0.0, -0.0, 1e-30])  # signed zeros show a -0.0 scalar
    opt = getattr(gt, name)([{"params": params[:2]}, {"params": params[2:]}], backend=backend, **hp)
    keep = []
    for t in range(steps):
        keep += [p.grad for p in params if p.grad is not None]
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        if change is not None and t >= steps - 2:
            change(opt)
        opt.step()
    state = [v.clone() for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    return [p.detach().clone() for p in params] + state, opt


def bits_equal(want: list[torch.Tensor], got: list[torch.Tensor]) -> bool:
    def raw(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1).view(torch.int8)

    return len(want) == len(got) and all(
        x.dtype == y.dtype and torch.equal(raw(x), raw(y)) for x, y in zip(want, got, strict=True)
    )


def _lr_new_float(opt: Any) -> None:
    opt.param_groups[0]["lr"] = opt.param_groups[0]["lr"] * 3.0


def _lr_same_value_new_object(opt: Any) -> None:
    opt.param_groups[0]["lr"] = float(str(opt.param_groups[0]["lr"]))


def _lr_tensor_edited_in_place(opt: Any) -> None:
    group = opt.param_groups[0]
    if not torch.is_tensor(group["lr"]):
        group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float64)
    group["lr"].mul_(2.0)  # the same object every step: never taken as the last step's value


def _wd_to_negative_zero(opt: Any) -> None:
    key = "wd" if "wd" in opt.param_groups[0] else "weight_decay"
    opt.param_groups[0][key] = -0.0  # == 0.0: only the bits tell the scalars apart


def _special_case_left(opt: Any) -> None:
    """SGD's and TorchSGD's defaults are their special cases (``special_case``): another
    module runs, with other scalars."""
    key = "rescale_grad" if "rescale_grad" in opt.param_groups[0] else "maximize"
    opt.param_groups[0][key] = 2.0 if key == "rescale_grad" else True


def _betas_tuple_replaced(opt: Any) -> None:
    if "betas" in opt.param_groups[0]:
        opt.param_groups[0]["betas"] = (0.8, 0.99)


def _beta1_set(opt: Any) -> None:
    if "beta1" in opt.param_groups[1]:
        opt.param_groups[1]["beta1"] = 0.7


# changes of a group's hyperparameters between two steps
HYPER_CHANGES = [
    _lr_new_float,
    _lr_same_value_new_object,
    _lr_tensor_edited_in_place,
    _wd_to_negative_zero,
    _special_case_left,
    _betas_tuple_replaced,
    _beta1_set,
]


@pytest.mark.parametrize(
    "change",
    HYPER_CHANGES,
)
@pytest.mark.parametrize(
    ("name", "hp"), [("SGD", {}), ("Adam", {}), ("TorchSGD", {}), ("TorchSGD", {"momentum": 0.9})]
)
def test_a_changed_hyperparameter_is_computed_as_the_reference_computes_it(
    name: str, hp: dict, change: Callable
) -> None:
    got, opt = run(name, "numba", change, **hp)
    want, ref = run(name, "numpy", change, **hp)
    assert opt._plan is not None and ref._plan is None  # the fast step ran, the reference not
    assert bits_equal(want, got)


def test_an_unchanged_group_reuses_its_resolution_and_tables() -> None:
    """SGD's host scalars do not depend on the step count: after the first fast step the
    hyperparameters are not resolved again and the table is the same object."""
    _, opt = run("SGD", "numba", None, steps=3)
    part = opt._plan.groups[0]
    resolved, tables = part.resolved, part.tables
    assert resolved and tables
    params = [p for g in opt.param_groups for p in g["params"]]
    for p in params:
        p.grad = torch.randn(p.shape)
    calls = []
    check = opt._check
    opt._check = lambda hp: (calls.append(hp), check(hp))[1]
    opt.step()
    assert calls == [] and part.resolved is resolved and part.tables is tables


def test_a_scalar_that_changes_only_its_sign_is_not_taken_from_the_cache() -> None:
    """SGD's -lr*wd is -0.0 at wd=0.0 and 0.0 at wd=-0.0 (equal as numbers): the kernels'
    table must follow the bits (the sign of a zero reaches the weights through -0.0 + -0.0)."""
    _, opt = run("SGD", "numba", None, steps=3, rescale_grad=2.0)  # not the special case
    part = opt._plan.groups[0]
    # the scalar -(f32(lr) * f32(wd)): MXNet's float32 lr * wd (specs/sgd.py)
    legend = {k: v for k, v in opt.META.SCALARS.items() if "wd" in v}
    assert len(legend) == 1 and "f32(lr)*f32(wd)" in next(iter(legend.values()))
    column = list(opt.META.SCALARS).index(next(iter(legend)))
    assert np.signbit(part.tables[0][:, column]).all()
    opt.param_groups[0]["wd"] = -0.0
    for p in opt.param_groups[0]["params"] + opt.param_groups[1]["params"]:
        p.grad = torch.randn(p.shape)
    opt.step()
    assert opt._plan.groups[0] is part and not np.signbit(part.tables[0][:, column]).any()


@pytest.mark.parametrize("mutable", [False, True])
def test_an_overflowing_scalar_is_refused_after_cached_steps(mutable: bool) -> None:
    """lr=1e300 is legal, but -lr is past float32's range: refused naming the scalar, with
    nothing written, although the steps before had their resolution and table cached (a new
    float, or a tensor lr edited in place)."""
    _, opt = run("SGD", "numba", None, steps=4)
    assert opt._plan is not None and opt._plan.groups[0].tables
    params = [p for g in opt.param_groups for p in g["params"]]
    if mutable:
        opt.param_groups[0]["lr"] = torch.tensor(0.01, dtype=torch.float64)
        for p in params:
            p.grad = torch.randn(p.shape)
        opt.step()
        opt.step()
    for p in params:
        p.grad = torch.randn(p.shape)
    before = [p.detach().clone() for p in params] + [s["step"].clone() for s in opt.state.values()]
    if mutable:
        opt.param_groups[0]["lr"].fill_(1e300)
    else:
        opt.param_groups[0]["lr"] = 1e300
    with pytest.raises(
        ValueError,
        match=r"SGD: .*kernel scalar _h1 \(= -f32\(lr\), in specs/sgd\.py:\d+\).*float32",
    ):
        opt.step()
    after = [p.detach().clone() for p in params] + [s["step"].clone() for s in opt.state.values()]
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))


@pytest.mark.parametrize("elements", [70001, 600001])  # 2 chunks: serial; 10: parallel
def test_the_serial_and_the_parallel_loop_give_numpys_bits(
    monkeypatch: pytest.MonkeyPatch, elements: int
) -> None:
    taken = []
    original = numba_support.launch

    def spy(kernel: Any, addresses: Any, chunks: Any, *args: Any, serial: Any = None) -> None:
        taken.append(serial is not None and len(chunks) < 2 * numba_support.MIN_CHUNKS_PER_THREAD)
        original(kernel, addresses, chunks, *args, serial=serial)

    monkeypatch.setattr(numba_support, "launch", spy)  # (launch_layout calls it)
    rng = np.random.default_rng(1)
    w = rng.standard_normal(elements).astype(np.float32)
    a, b = w.copy(), w.copy()
    sa, sb = numpy_adam.init_state(a), numba_adam.init_state(b)
    for t in (1, 2):
        g = (rng.standard_normal(elements) * 3).astype(np.float32)
        numpy_adam.step(a, g, sa, t, lr=0.01)
        numba_adam.step(b, g, sb, t, lr=0.01)
    assert taken == [elements < 2 * numba_support.MIN_CHUNKS_PER_THREAD * numba_support.CHUNK] * 2
    for x, y in [(a, b), (sa["mean"], sb["mean"]), (sa["var"], sb["var"])]:
        assert np.array_equal(x.view(np.uint32), y.view(np.uint32))


def test_the_triton_fast_step_keeps_its_chunk_table_and_rebuilds_it_when_alignment_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the Triton kernels (interpreted) the fast step hands step_multi a ``Vouched``: its
    table is taken with only the moved gradients' rows rewritten, and rebuilt when a gradient
    moves to an address that changes its tensor's alignment class (the vectorised variant):
    the same bits as a run that never keeps a plan, step by step."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    shapes = [(32, 16), (64,), (5,)]  # two vectorisable sizes, one not

    def grad(shape: tuple[int, ...], g: torch.Generator, misaligned: bool) -> torch.Tensor:
        n = int(np.prod(shape))
        flat = torch.randn(n + 1, generator=g)
        return (flat[1:] if misaligned else flat[:n]).view(shape)  # 4 bytes off, or not

    def run(remember: bool) -> tuple[list[torch.Tensor], list[Any]]:
        g = torch.Generator().manual_seed(2)
        params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
        opt = gt.Adam(params, backend="triton")
        if not remember:
            opt._remember = lambda: None
        keep, entries = [], []
        for t in range(5):
            keep += [p.grad for p in params if p.grad is not None]
            for p in params:
                p.grad = grad(p.shape, g, misaligned=t == 3)
            opt.step()
            plan = opt._plan
            entries.append(plan.groups[0].vouched.entry if plan is not None else None)
        state = [v.clone() for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
        return [p.detach().clone() for p in params] + state, entries

    got, entries = run(True)
    want, _ = run(False)
    assert bits_equal(want, got)
    # steps 2 and 3 took the table the first fast step found; the misaligned step 4 built its
    # own, and step 5, aligned again, found the first one in step_multi's cache
    assert entries[1] is not None and entries[2] is entries[1] and entries[3] is not entries[1]
    assert entries[4] is entries[1]


def test_step_hooks_and_the_profiler_still_see_every_step() -> None:
    """``step`` enters torch's wrapper only where it has something to do: hooks registered on
    the optimizer or globally run on every (fast) step, and a profiler records the step."""
    _, opt = run("SGD", "numba", None, steps=3)
    assert opt._plan is not None
    seen: list[str] = []
    handles = [
        opt.register_step_pre_hook(lambda o, a, k: seen.append("pre")),
        opt.register_step_post_hook(lambda o, a, k: seen.append("post")),
    ]
    opt.step()
    for h in handles:
        h.remove()
    opt.step()
    handle = register_optimizer_step_pre_hook(
        lambda o, a, k: seen.append(f"global {type(o).__name__}")
    )
    try:
        opt.step()
    finally:
        handle.remove()
    opt.step()
    assert seen == ["pre", "post", "global SGD"]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    assert "Optimizer.step#SGD.step" in {e.name for e in prof.events()}


# ------------------------------------------------------------------- the Triton modules' tables
def triton_run(
    name: str, changes: dict[int, Callable[[Any], None]], steps: int, remember: bool, **hp: Any
) -> tuple[list[torch.Tensor], Any]:
    """``steps`` steps of the class on the Triton kernels (interpreted) on fresh gradients,
    ``changes[t]`` applied before step t; ``remember=False``: every step in full (the module's
    ``step_multi`` resolves and checks everything itself), the reference of the fast step."""
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
    params[0].data[0, :3] = torch.tensor([0.0, -0.0, 1e-30])
    groups = [{"params": params[:2]}, {"params": params[2:]}]
    opt = getattr(gt, name)(groups, backend="triton", **hp)
    if not remember:
        opt._remember = lambda: None
    keep = []
    for t in range(steps):
        keep += [p.grad for p in params if p.grad is not None]
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        if t in changes:
            changes[t](opt)
        opt.step()
    state = [v.clone() for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    return [p.detach().clone() for p in params] + state, opt


def spy_step_tables(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The modules whose ``step_tables`` the fast step calls, in order."""
    import generated.triton as triton_modules

    called: list[str] = []
    for module in vars(triton_modules).values():
        original = getattr(module, "step_tables", None)
        if original is not None:

            def spy(*args: Any, _f: Any = original, _m: Any = module, **kwargs: Any) -> Any:
                called.append(_m.__name__.rsplit(".", 1)[1])
                return _f(*args, **kwargs)

            monkeypatch.setattr(module, "step_tables", spy)
    return called


def _no_grad_for_one_step(opt: Any) -> None:
    opt.param_groups[0]["params"][0].grad = None  # its step count falls behind its group's


def _weight_decay_toggled(opt: Any) -> None:
    """TorchSGD's defaults are its special case: weight decay leaves it, then comes back."""
    group = opt.param_groups[0]
    group["weight_decay"] = 0.0 if group["weight_decay"] else 0.1


@pytest.mark.parametrize(
    "change",
    [*HYPER_CHANGES, _no_grad_for_one_step],
)
@pytest.mark.parametrize(
    ("name", "hp"), [("SGD", {}), ("Adam", {}), ("TorchSGD", {}), ("TorchSGD", {"momentum": 0.9})]
)
def test_the_triton_fast_step_hands_checked_rows_to_the_module_that_runs(
    monkeypatch: pytest.MonkeyPatch, name: str, hp: dict, change: Callable
) -> None:
    """The fast step computes and checks the host scalars once and hands them to the running
    module's ``step_tables`` (a special case's or absent-state variant's, where one runs), kept
    while they are the same bits: each change computed as the step that checks everything
    itself computes it, to the bit (a step count behind its group's: two rows)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    called = spy_step_tables(monkeypatch)
    got, opt = triton_run(name, {5: change}, 9, True, **hp)
    want, ref = triton_run(name, {5: change}, 9, False, **hp)
    assert opt._plan is not None and ref._plan is None
    assert len(called) >= 2 * 4  # two groups, at least the four fast steps before the change
    assert bits_equal(want, got)


def test_a_special_case_switched_on_and_off_between_triton_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TorchSGD leaves its special case (torch_sgd_plain) and comes back, step after step: each
    fast step takes the tables of the module that runs, never the other's."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    called = spy_step_tables(monkeypatch)
    changes = dict.fromkeys(range(3, 8), _weight_decay_toggled)
    got, _ = triton_run("TorchSGD", changes, 9, True, lr=0.3)
    want, _ = triton_run("TorchSGD", changes, 9, False, lr=0.3)
    assert bits_equal(want, got)
    # the first group's module in each fast step (steps 2 to 9; weight decay set at 4, 6, 8)
    plain, decayed = "torch_sgd_plain", "torch_sgd_without_momentum_buffer"
    assert called[0::2] == [plain, plain, decayed, plain, decayed, plain, decayed, decayed]
    assert called[1::2] == [plain] * 8


def test_the_triton_tables_are_kept_while_the_scalars_are_the_same_bits() -> None:
    """SGD's scalars do not depend on the step count: the rows are the same object step after
    step, until lr changes (new rows, with the new value)."""
    _, opt = triton_run("SGD", {}, 4, True, rescale_grad=2.0)  # not the special case
    part = opt._plan.groups[0]
    rows = part.tables
    assert rows is not None and part.tabled is not None
    params = [p for g in opt.param_groups for p in g["params"]]
    for p in params:
        p.grad = torch.randn(p.shape)
    opt.step()
    assert part.tables is rows
    opt.param_groups[0]["lr"] = 0.5
    for p in params:
        p.grad = torch.randn(p.shape)
    opt.step()
    assert part.tables is not rows
    assert np.float32(-1.0) in part.tables.rows[0]  # -(lr * rescale_grad): clipping is off


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_an_overflowing_scalar_is_refused_after_cached_triton_steps(name: str) -> None:
    """lr=1e300 after cached fast steps on the Triton kernels: refused naming the class and the
    scalar, with nothing written (weights, states, step counts)."""
    _, opt = triton_run(name, {}, 4, True)
    assert opt._plan is not None and opt._plan.groups[0].tables is not None
    params = [p for g in opt.param_groups for p in g["params"]]
    for p in params:
        p.grad = torch.randn(p.shape)
    state = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    before = [x.detach().clone() for x in params + state]
    opt.param_groups[1]["lr"] = 1e300  # the second group: the first group's check passed
    lr = r"-(f32\()?lr"  # SGD's float32 lr (specs/sgd.py), Adam's
    with pytest.raises(ValueError, match=rf"{name}: .*kernel scalar _h\d \(= {lr}.*float32"):
        opt.step()
    after = [x.detach().clone() for x in params + state]
    assert bits_equal(before, after)


def test_step_tables_refuses_what_it_cannot_take_from_a_caller() -> None:
    """``step_tables`` trusts its rows and buffers: it takes only a ``Vouched`` token and one
    row index per tensor, refused (naming the rule) before anything is written."""
    import generated.triton.adam as triton_adam
    from optgen_runtime.triton_cache import Vouched
    from optgen_runtime.triton_rows import ScalarRows

    w = torch.zeros(8)
    g, state = torch.ones(8), triton_adam.init_state(w)
    one = ScalarRows(np.zeros((1, len(triton_adam.SCALARS)), np.float32), np.zeros(1, np.int64))
    two = ScalarRows(one.rows, np.zeros(2, np.int64))
    with pytest.raises(TypeError, match="adam: step_tables takes a Vouched"):
        triton_adam.step_tables([w], [g], [state], one, prechecked=True)
    with pytest.raises(ValueError, match="adam: 1 weights, 1 grads, 1 states, 2 scalar rows"):
        triton_adam.step_tables([w], [g], [state], two, prechecked=Vouched())
    assert not w.any() and not state["mean"].any()
