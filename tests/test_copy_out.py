"""The Triton update kernels' copy-out (``step_multi``'s ``copies``; ``COPY_OUT``): a fp16/bf16
parameter whose float32 master copy is the weight gets its new value from the kernel, in the
same pass, instead of from a copy after the step (which reads the master again and costs a
launch). The weights and states are those of a step without copies, to the bit; each copy is
the stored master rounded to its dtype (round-to-nearest-even on a GPU, ``cvt.rn``, which is
``master.to(dtype)``; in Triton's CPU interpreter too, bf16 through
optgen_runtime.triton_compat's cast, fp16 by NumPy's). Bad copies are refused, naming
them, before anything is written; the torch classes use it for their masters and copy only
what it cannot take (a channels_last parameter: not in its master's element order)."""

from __future__ import annotations

import importlib
import re
from typing import Any

import pytest
import torch
from conftest import DEVICE, step_inputs

import generated.torch as gt

LOW = [torch.bfloat16, torch.float16]
# (rule, hyperparameters): a plain update, a special case (sgd at wd=0 runs sgd_plain's
# kernels), an absent-state variant (torch_sgd at momentum=0), reductions (lamb), a Philox
# draw (sgld), host states (nadam), a per-element input (adahessian), row and column states
# (adafactor, sm3, came: one update launch per tensor)
CASES = [
    ("adam", {"lr": 0.01}),
    ("sgd", {"lr": 0.1}),
    ("torch_sgd", {"lr": 0.1, "momentum": 0.0}),
    ("lamb", {"lr": 0.01}),
    ("sgld", {"lr": 0.01, "seed": 3}),
    ("nadam", {"lr": 0.01}),
    ("adahessian", {"lr": 0.01}),
    ("adafactor", {"lr": 0.01}),
    ("sm3", {"lr": 0.01}),
    ("came", {"lr": 0.01}),
]
# sizes: vectorisable and not, one chunk and several, an empty tensor
SIZES = [4096, 1000, 33, 0, 2048]


def rounded(master: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The bits the kernel stores for ``master`` in ``dtype`` (as int16): rounded to nearest
    even, on a GPU and in the interpreter (optgen_runtime.triton_compat)."""
    return master.to(dtype).view(torch.int16)


def module(rule: str) -> Any:
    return importlib.import_module(f"generated.triton.{rule}")


def setup(rule: str, dtype: torch.dtype, seed: int = 0) -> tuple[list, list, list, list]:
    """Parameters in ``dtype``, their float32 masters, gradients in ``dtype`` and states."""
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=g).to(dtype).to(DEVICE) for n in SIZES]
    masters = [p.float() for p in params]
    grads = [torch.randn(n, generator=g).to(dtype).to(DEVICE) for n in SIZES]
    states = [module(rule).init_state(m) for m in masters]
    return params, masters, grads, states


def run(rule: str, masters: list, grads: list, states: list, t: int, hp: dict, **kw: Any) -> int:
    inputs = step_inputs(module(rule), masters[0], t)  # per-element inputs: one per tensor
    given = {
        k: [step_inputs(module(rule), m, t)[k] for m in masters] if torch.is_tensor(v) else v
        for k, v in inputs.items()
    }
    return module(rule).step_multi(masters, grads, states, t, **hp, **given, **kw)


def clone(xs: list) -> list:
    return [x.clone() if torch.is_tensor(x) else {k: v.clone() if torch.is_tensor(v) else v
            for k, v in x.items()} for x in xs]  # fmt: skip


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize(("rule", "hp"), CASES, ids=[c[0] for c in CASES])
def test_copies_are_the_stored_weights_rounded(rule: str, hp: dict, dtype: torch.dtype) -> None:
    """Two steps with copies (the second on the cached chunk table, its gradients moved) give
    the weights and states of the same steps without, to the bit, and each copy the stored
    master rounded; a tensor without a copy (None) and one whose copy starts off the 16-byte
    grid (a scalar group) alike."""
    params, masters, grads, states = setup(rule, dtype)
    plain_masters, plain_states = clone(masters), clone(states)
    base = torch.zeros(SIZES[4] + 1, dtype=dtype, device=DEVICE)
    copies: list[Any] = [p.clone() for p in params]
    copies[1] = None
    copies[4] = base[1:]  # 2-byte aligned: not vectorisable
    before = params[1].clone()
    for t in (1, 2):
        moved = [x.clone() for x in grads]  # the gradients at new addresses
        run(rule, masters, moved, states, t, hp, copies=copies)
        run(rule, plain_masters, moved, plain_states, t, hp)
        for j, (m, want) in enumerate(zip(masters, plain_masters, strict=True)):
            assert torch.equal(m, want), (rule, t, j)
            if copies[j] is not None:
                assert torch.equal(copies[j].view(torch.int16), rounded(want, dtype)), (t, j)
        for s, want in zip(states, plain_states, strict=True):
            for key, value in want.items():
                same = torch.equal(s[key], value) if torch.is_tensor(value) else s[key] == value
                assert same, (rule, t, key)
    assert torch.equal(params[1], before)  # no copy given: nothing written there
    assert base[0].item() == 0  # the element before the misaligned copy: untouched


def test_a_copy_of_another_dtype_forms_its_own_group() -> None:
    """fp16 and bf16 copies in one call, and float32 ones: one launch per (buffers' dtypes,
    copy dtype, alignment class) group, each copy right."""
    rule, hp = "adam", {"lr": 0.01}
    _, masters, grads, states = setup(rule, torch.bfloat16)
    grads = [x.float() for x in grads]
    plain_masters, plain_states = clone(masters), clone(states)
    dtypes = [torch.bfloat16, torch.float16, torch.float32, torch.float16, torch.bfloat16]
    copies = [
        torch.empty(m.shape, dtype=d, device=DEVICE) for m, d in zip(masters, dtypes, strict=True)
    ]
    launches = run(rule, masters, grads, states, 1, hp, copies=copies)
    run(rule, plain_masters, grads, plain_states, 1, hp)
    # bf16 {4096, 2048} aligned, fp16 {1000} and {0 (empty: none)}, float32 {33}
    assert launches == 3
    for c, want, d in zip(copies, plain_masters, dtypes, strict=True):
        if d == torch.float32:
            assert torch.equal(c, want)
        else:
            assert torch.equal(c.view(torch.int16), rounded(want, d))


def bad_copies(params: list, masters: list, grads: list) -> dict[str, tuple[Any, str]]:
    """Copies the modules refuse, each with a fragment of the message that names it."""
    wide = torch.zeros(SIZES[0] * 2, dtype=torch.bfloat16, device=DEVICE)
    return {
        "too few": (params[:2], "one per weight"),
        "not a list": (params[0], "one per weight"),
        "an integer tensor": ([*params[:2], params[2].to(torch.int16), *params[3:]], "copies[2]"),
        "another shape": ([params[0][:-1], *params[1:]], "copies[0]"),
        "not contiguous": ([wide[::2], *params[1:]], "copies[0]"),
        "a list": ([[1.0], *params[1:]], "copies[0]"),
        "a gradient": ([grads[0], *params[1:]], "copy"),
        "another's master": ([params[0], masters[0].view(torch.bfloat16)[: SIZES[1]], *params[2:]],
                             "copy"),
        "twice": ([*params[:4], params[0][: SIZES[4]]], "copy"),
        "its own master": ([masters[0].view(torch.bfloat16)[: SIZES[0]], *params[1:]], "copy"),
    }  # fmt: skip


@pytest.mark.parametrize(
    "case",
    [
        "too few",
        "not a list",
        "an integer tensor",
        "another shape",
        "not contiguous",
        "a list",
        "a gradient",
        "another's master",
        "twice",
        "its own master",
    ],
)
def test_bad_copies_are_refused_before_any_write(case: str) -> None:
    rule, hp = "adam", {"lr": 0.01}
    params, masters, grads, states = setup(rule, torch.bfloat16)
    copies, names = bad_copies(params, masters, grads)[case]
    seen = clone(masters) + clone(params) + clone(states)
    for prechecked in (False, True):  # a table is never built unchecked
        with pytest.raises((ValueError, TypeError), match=re.escape(names)) as error:
            run(rule, masters, grads, states, 1, hp, copies=copies, prechecked=prechecked)
        assert "adam" in str(error.value)
    after = masters + params + states
    for a, b in zip(seen, after, strict=True):
        if torch.is_tensor(a):
            assert torch.equal(a, b), case
        else:
            assert all(torch.equal(v, b[k]) for k, v in a.items()), case


def test_a_cached_table_is_not_taken_for_other_copies() -> None:
    """The chunk table cache (``prepared_table``) keys on the copies too: the same
    buffers with copies, then with other copies, then with none, each writes what it was given
    (a stale table would write the old copies' addresses or skip the new ones)."""
    rule, hp = "adam", {"lr": 0.01}
    params, masters, grads, states = setup(rule, torch.float16)
    first = [p.clone() for p in params]
    second = [p.clone() for p in params]
    run(rule, masters, grads, states, 1, hp, copies=first)
    kept = [c.clone() for c in first]
    run(rule, masters, grads, states, 2, hp, copies=second)
    assert all(torch.equal(a, b) for a, b in zip(first, kept, strict=True))  # not written again
    for c, m in zip(second, masters, strict=True):
        assert torch.equal(c.view(torch.int16), rounded(m, torch.float16))
    run(rule, masters, grads, states, 3, hp)
    for c, m in zip(second, masters, strict=True):  # left as step 2 wrote them
        assert not m.numel() or not torch.equal(c.view(torch.int16), rounded(m, torch.float16))


def copy_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every torch copy the class makes from a master after the kernels: ``Tensor.copy_`` and
    ``torch._foreach_copy_`` calls, recorded."""
    calls: list[str] = []
    copy_, foreach = torch.Tensor.copy_, torch._foreach_copy_

    def spy_copy(self: torch.Tensor, src: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.dtype in LOW and src.dtype == torch.float32:
            calls.append("copy_")
        return copy_(self, src, *args, **kwargs)

    def spy_foreach(dst: list, src: list, *args: Any, **kwargs: Any) -> Any:
        calls.append(f"foreach x{len(dst)}")
        return foreach(dst, src, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "copy_", spy_copy)
    monkeypatch.setattr(torch, "_foreach_copy_", spy_foreach)
    return calls


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", ["Adam", "Adafactor"])
def test_the_classes_copy_only_what_the_kernel_cannot(
    monkeypatch: pytest.MonkeyPatch, name: str, dtype: torch.dtype
) -> None:
    """``multi_precision=True`` on the Triton kernels, full steps and fast ones: every
    parameter is its master rounded after each step, the masters and states those of the
    same optimizer copying after the step (the module's COPIES off), and the only copies left
    are of the channels_last parameter (its elements are not in its master's order)."""
    g = torch.Generator().manual_seed(1)
    shapes = [(64, 16), (33,), (8, 4, 3, 3)]

    def make() -> tuple[Any, list]:
        g.manual_seed(1)
        params = [torch.nn.Parameter(torch.randn(s, generator=g).to(DEVICE, dtype)) for s in shapes]
        params[2].data = params[2].data.to(memory_format=torch.channels_last)
        opt = getattr(gt, name)(params, lr=0.01, backend="triton", multi_precision=True)
        return opt, params

    def steps(opt: Any, params: list, record: list | None, kernel: bool = True) -> None:
        for t in range(4):
            g.manual_seed(10 + t)
            for p in params:
                p.grad = torch.randn(p.shape, generator=g).to(DEVICE, dtype)
            if record is not None:
                record.append(len(calls))
            opt.step()
            for p in params:  # the channels_last one: copied by torch (to nearest)
                master = opt.state[p]["master"].contiguous()
                by_torch = p is params[2] or not kernel
                want = master.to(dtype).view(torch.int16) if by_torch else rounded(master, dtype)
                assert torch.equal(p.contiguous().view(torch.int16), want.view(p.shape))

    calls = copy_calls(monkeypatch)
    fused, params = make()
    marks: list[int] = []
    steps(fused, params, marks)
    marks.append(len(calls))
    per_step = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    # the full steps copy the channels_last parameter alone (copy_), the fast ones in one
    # foreach of one tensor
    assert calls and all(c in ("copy_", "foreach x1") for c in calls), calls
    assert per_step == [1, 1, 1, 1], (per_step, calls)
    monkeypatch.setattr(fused.TRITON, "COPIES", False)
    copied, others = make()
    steps(copied, others, None, kernel=False)
    for p, q in zip(params, others, strict=True):
        a, b = fused.state[p], copied.state[q]
        assert all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))
        assert torch.equal(p, q)  # the same rounding (to nearest even): the same bits


# A matrix rule's writes' kernel (codegen.matrix_plan.in_place: <rule>_commit_kernel) takes
# copies too; shapes of both orientations, one that is not a multiple of 16 elements, an empty one.
MATRIX_CASES = [("muon", {"lr": 0.02}), ("adamuon", {"lr": 0.02})]
MATRIX_SHAPES = [(64, 16), (12, 9), (0, 4), (16, 64)]


def matrix_setup(rule: str, dtype: torch.dtype) -> tuple[list, list, list, list]:
    g = torch.Generator().manual_seed(2)
    params = [torch.randn(s, generator=g).to(dtype).to(DEVICE) for s in MATRIX_SHAPES]
    masters = [p.float() for p in params]
    grads = [torch.randn(s, generator=g).to(dtype).to(DEVICE) for s in MATRIX_SHAPES]
    return params, masters, grads, [module(rule).init_state(m) for m in masters]


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
@pytest.mark.parametrize(("rule", "hp"), MATRIX_CASES, ids=[c[0] for c in MATRIX_CASES])
def test_a_matrix_rules_writes_copy_out_too(rule: str, hp: dict, dtype: torch.dtype) -> None:
    """Steps with copies give the masters and states of the same steps without, to the bit,
    and each copy the stored master rounded; a tensor without a copy is not written, and a copy
    off the 16-byte grid is written whole and nothing beside it."""
    params, masters, grads, states = matrix_setup(rule, dtype)
    plain_masters, plain_states = clone(masters), clone(states)
    base = torch.zeros(MATRIX_SHAPES[3][0] * MATRIX_SHAPES[3][1] + 1, dtype=dtype, device=DEVICE)
    copies: list[Any] = [p.clone() for p in params]
    copies[1] = None
    copies[3] = base[1:].view(MATRIX_SHAPES[3])  # 2-byte aligned
    before = params[1].clone()
    for t in (1, 2):
        module(rule).step_multi(masters, grads, states, t, **hp, copies=copies)
        module(rule).step_multi(plain_masters, grads, plain_states, t, **hp)
        for j, (m, want) in enumerate(zip(masters, plain_masters, strict=True)):
            assert torch.equal(m, want), (rule, t, j)
            if copies[j] is not None:
                assert torch.equal(copies[j].view(torch.int16), rounded(want, dtype)), (t, j)
        for s, want in zip(states, plain_states, strict=True):
            assert all(torch.equal(s[k], v) for k, v in want.items()), (rule, t)
    assert all(
        bool((m != p.float()).any()) for m, p in zip(masters, params, strict=True) if m.numel()
    )
    assert torch.equal(params[1], before)  # no copy given: nothing written there
    assert base[0].item() == 0  # the element before the misaligned copy: untouched


@pytest.mark.parametrize("case", ["another shape", "a gradient", "twice", "its own master"])
def test_a_matrix_rule_refuses_bad_copies_before_any_write(case: str) -> None:
    params, masters, grads, states = matrix_setup("muon", torch.bfloat16)
    bad = {
        "another shape": ([params[0][:-1], *params[1:]], "copies[0]"),
        "a gradient": ([grads[0], *params[1:]], "copy"),
        "twice": ([params[0], params[0].view(-1)[:108].view(12, 9), *params[2:]], "copy"),
        "its own master": (
            [masters[0].view(torch.bfloat16).view(-1)[:1024].view(64, 16), *params[1:]],
            "copy",
        ),
    }
    copies, names = bad[case]
    seen = clone(masters) + clone(params) + clone(states)
    with pytest.raises((ValueError, TypeError), match=re.escape(names)) as error:
        module("muon").step_multi(masters, grads, states, 1, lr=0.02, copies=copies)
    assert "muon" in str(error.value)
    for a, b in zip(seen, masters + params + states, strict=True):
        if torch.is_tensor(a):
            assert torch.equal(a, b), case
        else:
            assert all(torch.equal(v, b[k]) for k, v in a.items()), case


@pytest.mark.parametrize("dtype", LOW, ids=["bf16", "fp16"])
def test_muon_on_masters_copies_nothing_after_the_kernels(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    """``Muon(..., multi_precision=True)`` on the Triton kernels: every parameter is its master
    rounded after each step with no copy after the kernels (the writes' kernel wrote it), and
    the masters and states are those of the same optimizer copying after the step."""
    g = torch.Generator().manual_seed(3)

    def make() -> tuple[Any, list]:
        g.manual_seed(3)
        params = [
            torch.nn.Parameter(torch.randn(s, generator=g).to(DEVICE, dtype)) for s in MATRIX_SHAPES
        ]
        return gt.Muon(params, lr=0.02, backend="triton", multi_precision=True), params

    def steps(opt: Any, params: list, kernel: bool) -> None:
        for t in range(3):
            g.manual_seed(20 + t)
            for p in params:
                p.grad = torch.randn(p.shape, generator=g).to(DEVICE, dtype)
            opt.step()
            for p in params:
                master = opt.state[p]["master"]
                want = rounded(master, dtype) if kernel else master.to(dtype).view(torch.int16)
                assert torch.equal(p.view(torch.int16), want)

    calls = copy_calls(monkeypatch)
    fused, params = make()
    steps(fused, params, kernel=True)
    assert calls == []
    monkeypatch.setattr(fused.TRITON, "COPIES", False)
    copied, others = make()
    steps(copied, others, kernel=False)
    assert calls  # copied after the step
    for p, q in zip(params, others, strict=True):
        a, b = fused.state[p], copied.state[q]
        assert all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))
