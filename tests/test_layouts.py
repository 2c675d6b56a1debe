"""Parameters that are not contiguous (``optgen_runtime/optim/layout.py``): channels_last
convolution weights, transposed and sliced views. Every class (every rule's, matrix rules
included) updates them in place, as the same class updates contiguous copies laid out as the
module is shown them: in the parameter's memory order for a rule that sees each element alone
(its whole-tensor sums then add in memory order), as indexed for the others. The drop-ins match
torch.optim on a channels_last network and keep torch's state layout; a parameter or state
buffer that overlaps itself is refused before anything is written."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import DEVICE, class_inputs

from generated.torch import RULES
from generated.torch import optim as dropin
from optgen_runtime.optim.layout import elementwise, memory_order

MATRIX = {name for name, cls in RULES.items() if getattr(cls.META, "MATRIX_VALUES", ())}


def channels_last(device: str = "cpu") -> torch.Tensor:
    return torch.randn(4, 3, 2, 5).to(device).to(memory_format=torch.channels_last)


def transposed(device: str = "cpu") -> torch.Tensor:
    return torch.randn(6, 5).to(device).t()


def sliced(device: str = "cpu") -> torch.Tensor:
    # gaps between its rows: no order makes it contiguous
    return torch.randn(5, 9).to(device)[:, 1:7]


LAYOUTS = {"channels_last": channels_last, "transposed": transposed, "sliced": sliced}
BACKENDS = ["auto", "numpy", "triton"]  # auto: the compiled numba loops where numba imports


def _device(backend: str) -> str:
    """The Triton backend's tensors on the GPU check's device (the interpreter's CPU here)."""
    return DEVICE if backend == "triton" else "cpu"


def _arranged(x: torch.Tensor, perm: tuple[int, ...] | None) -> torch.Tensor:
    """A copy of ``x`` laid out as the module is shown it: permuted to memory order,
    contiguous."""
    return (x.permute(perm) if perm else x).clone(memory_format=torch.contiguous_format)


def _grad_like(p: torch.Tensor, g: torch.Tensor, t: int) -> torch.Tensor:
    """The gradient in the parameter's strides (as autograd makes it) on odd steps, contiguous
    on even ones (a user's own): both must give the same update."""
    return torch.empty_like(p).copy_(g) if t % 2 else g.contiguous()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("name", sorted(RULES))
def test_a_parameter_of_any_layout_is_updated_as_its_contiguous_copy(
    name: str, layout: str, backend: str
) -> None:
    cls = RULES[name]
    if name in MATRIX and layout == "channels_last":
        pytest.skip("matrix rules take 2-D weights")
    torch.manual_seed(11)
    x = LAYOUTS[layout](_device(backend))
    perm = memory_order(x) if elementwise(cls.META) else None
    p = torch.nn.Parameter(x)  # the very view: its strides, its storage
    q = torch.nn.Parameter(_arranged(x.detach(), perm))
    strides, address = p.stride(), p.data_ptr()
    ours, ref = cls([p], backend=backend), cls([q], backend=backend)
    for t in range(1, 5):
        g = torch.randn(x.shape).to(x.device)
        p.grad, q.grad = _grad_like(p, g, t), _arranged(g, perm)
        inputs = class_inputs(ours, t)
        ours.step(**inputs)
        ref.step(
            **{
                k: [_arranged(v, perm) for v in vs] if k in cls.META.INPUTS else vs
                for k, vs in inputs.items()
            }
        )
    assert p.stride() == strides and p.data_ptr() == address  # updated in place
    assert torch.equal(_arranged(p.detach(), perm), q.detach()), f"{name}: weights differ"
    mine, theirs = ours.state[p], ref.state[q]
    assert sorted(mine) == sorted(theirs)
    for key, value in theirs.items():
        if not isinstance(value, torch.Tensor) or key == "step":
            assert mine[key] == value, key
            continue
        if value.shape == q.shape and value.dim() == x.dim():
            assert torch.equal(_arranged(mine[key], perm), value), f"{name}: state {key}"
        else:
            assert torch.equal(mine[key], value), f"{name}: state {key}"
    if perm is not None and name not in MATRIX:  # made in the weight's strides: no copies
        for key in cls.META.STATES:
            if key in mine and mine[key].shape == p.shape:
                assert mine[key].stride() == p.stride(), key
    assert not torch.equal(p.detach(), x.detach().clone().zero_())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_state_buffer_of_other_strides_is_written_in_place(backend: str) -> None:
    """A contiguous weight whose state buffer was replaced by one of other strides (the same
    values, transposed in memory): the same bits as the untouched optimizer, the buffer the
    same tensor, written in place."""
    dev = _device(backend)
    weights = [
        torch.nn.Parameter(torch.linspace(-1.0, 1.0, 20, device=dev).reshape(4, 5))
        for _ in range(2)
    ]
    opts = [RULES["adam"]([w], backend=backend) for w in weights]
    for t in range(1, 5):
        for w, opt in zip(weights, opts, strict=True):
            w.grad = torch.full((4, 5), 0.25 * t, device=dev) - w.detach()
            opt.step()
        if t == 1:
            state = opts[0].state[weights[0]]
            state["var"] = state["var"].t().contiguous().t()
            strided = state["var"]
            assert not strided.is_contiguous()
    assert opts[0].state[weights[0]]["var"] is strided
    assert torch.equal(weights[0], weights[1])
    for key in ("mean", "var"):
        assert torch.equal(opts[0].state[weights[0]][key], opts[1].state[weights[1]][key])


def test_which_rules_are_shown_memory_order() -> None:
    """A rule with per-row or per-column states, matrix values or per-element draws is shown
    its parameters as indexed (in memory order its rows and columns, or the noise each element
    draws, would change); a rule that sees each element alone, sums over the whole tensor
    included, in memory order."""
    as_indexed = {name for name, cls in RULES.items() if not elementwise(cls.META)}
    assert {"adafactor", "came", "sm3", "sgld", "muon", "adamuon"} <= as_indexed
    assert not {"adam", "lamb", "lars", "prodigy", "adam_clip", "torch_sgd"} & as_indexed


def _network() -> torch.nn.Module:
    torch.manual_seed(5)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU(), torch.nn.Conv2d(6, 4, 3), torch.nn.Flatten()
    )
    return net.to(memory_format=torch.channels_last)


def _train(net: torch.nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    """Gradients as test_dropin's (a pull towards 0.5 plus noise: independent of the weights,
    so a last-ulp difference does not grow through the network), in the weights' strides, as
    autograd gives them."""
    for t in steps:
        gen = torch.Generator().manual_seed(1000 + t)
        for p in net.parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.grad = torch.empty_like(p).copy_((p.detach() - 0.5) + noise)
        opt.step()


def _assert_torchs_strides(ours: torch.optim.Optimizer, peer: torch.optim.Optimizer) -> None:
    """Each of our buffers in the strides of torch's (exported by torch's keys), and each live
    buffer of a weight's shape in the weight's strides (made so: no copy per step)."""
    mine, theirs = ours.state_dict()["state"], peer.state_dict()["state"]
    for index, state in theirs.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 1:
                assert mine[index][key].stride() == value.stride(), (index, key)
    for p in (p for group in ours.param_groups for p in group["params"]):
        for key, value in ours.state[p].items():
            if isinstance(value, torch.Tensor) and value.shape == p.shape:
                assert value.stride() == p.stride(), key


# Muon takes 2-D weights only, SparseAdam sparse gradients only (tests/test_sparse_adam.py: a
# transposed table)
@pytest.mark.parametrize("name", [n for n in dropin.__all__ if n not in ("Muon", "SparseAdam")])
def test_drop_ins_match_torch_on_a_channels_last_network(name: str) -> None:
    """torch's channels_last recipe (``model.to(memory_format=torch.channels_last)``; a
    backward gives each gradient its weight's strides, tested below): the drop-in's weights
    within ULPS of torch.optim's after 12 steps, its state buffers in torch's strides, and a
    checkpoint crossing at step 6 either way."""
    from test_dropin import LR, ULPS, ulps

    mine, theirs = _network(), _network()
    assert not mine[0].weight.is_contiguous()  # the recipe gives strided weights
    kwargs = {"lr": LR[name], "foreach": False}
    ours = getattr(dropin, name)(mine.parameters(), **kwargs)
    peer = getattr(torch.optim, name)(theirs.parameters(), **kwargs)
    _train(mine, ours, range(1, 7))
    _train(theirs, peer, range(1, 7))
    _assert_torchs_strides(ours, peer)
    crossed = [_network(), _network()]  # torch's state into ours and ours into torch's
    for net, src in zip(crossed, (theirs, mine), strict=True):
        net.load_state_dict(src.state_dict())
    ours2 = getattr(dropin, name)(crossed[0].parameters(), **kwargs)
    ours2.load_state_dict(copy.deepcopy(peer.state_dict()))
    peer2 = getattr(torch.optim, name)(crossed[1].parameters(), **kwargs)
    peer2.load_state_dict(copy.deepcopy(ours.state_dict()))  # as saved (torch's loader
    # keeps a same-dtype tensor it is given: a live one would be shared)
    _assert_torchs_strides(ours2, peer)  # loaded in the parameter's strides
    for net, opt in ((mine, ours), (theirs, peer), (crossed[0], ours2), (crossed[1], peer2)):
        _train(net, opt, range(7, 13))
    for net in (mine, *crossed):
        for p, q in zip(net.parameters(), theirs.parameters(), strict=True):
            assert p.stride() == q.stride()
            assert ulps(p, q) <= ULPS, name
    start = _network()
    assert all(
        not torch.equal(p, q) for p, q in zip(theirs.parameters(), start.parameters(), strict=True)
    )


def test_autograd_gives_a_channels_last_weight_its_strides() -> None:
    """What ``_train`` assumes of autograd, and a class's step on those gradients."""
    net = _network()
    x = torch.randn(2, 3, 7, 7).to(memory_format=torch.channels_last)
    net(x).pow(2).mean().backward()
    weights = [p for p in net.parameters() if p.dim() == 4]
    assert weights and all(
        p.grad.stride() == p.stride() != p.contiguous().stride() for p in weights
    )
    before = [p.detach().clone() for p in weights]
    RULES["adam"](net.parameters()).step()
    assert all(not torch.equal(p, b) for p, b in zip(weights, before, strict=True))


def test_a_resumed_channels_last_run_is_bit_identical() -> None:
    """state_dict() of a channels_last run, loaded into a new optimizer (by torch.save and
    torch.load), resumes with the same bits as the run that went on."""
    import io

    net, copy_net = _network(), _network()
    opt = RULES["lamb"](net.parameters(), backend="numpy")
    _train(net, opt, range(1, 4))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    copy_net.load_state_dict(net.state_dict())
    resumed = RULES["lamb"](copy_net.parameters(), backend="numpy")
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    _train(net, opt, range(4, 7))
    _train(copy_net, resumed, range(4, 7))
    for p, q in zip(net.parameters(), copy_net.parameters(), strict=True):
        assert torch.equal(p, q) and p.stride() == q.stride()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where", ["parameter", "state", "bf16 parameter"])
def test_a_buffer_that_overlaps_itself_is_refused_before_any_write(
    where: str, backend: str
) -> None:
    """An ``expand``ed tensor (a stride of 0: one element behind several indices) cannot be
    updated in place: refused, naming it, with everything as it was."""
    dev = _device(backend)
    if where == "bf16 parameter":  # written from its fp32 master copy: refused all the same
        low = torch.arange(3.0, device=dev).bfloat16()
        p = torch.nn.Parameter(low.reshape(3, 1).expand(3, 4))
        other = torch.nn.Parameter(torch.ones(5, device=dev))
        opt = RULES["adam"]([other, p], backend=backend, multi_precision=True)
        match = r"Adam: parameter 1 overlaps itself"
    elif where == "parameter":
        p = torch.nn.Parameter(torch.arange(3.0, device=dev).reshape(3, 1).expand(3, 4))
        other = torch.nn.Parameter(torch.ones(5, device=dev))
        opt = RULES["adam"]([other, p], backend=backend)
        match = r"Adam: parameter 1 overlaps itself \(shape \(3, 4\), strides \(1, 0\)\)"
    else:
        p = torch.nn.Parameter(torch.arange(12.0, device=dev).reshape(3, 4))
        other = torch.nn.Parameter(torch.ones(5, device=dev))
        opt = RULES["adam"]([other, p], backend=backend)
        other.grad, p.grad = torch.ones(5, device=dev), torch.ones(3, 4, device=dev)
        opt.step()
        opt.state[p]["mean"] = torch.zeros(3, 1, device=dev).expand(3, 4)
        match = r"Adam: parameter 1's state\['mean'\] overlaps itself"
    other.grad = torch.full((5,), 0.5, device=dev)
    p.grad = torch.full((3, 4), 0.5, device=dev, dtype=p.dtype)
    before = [x.detach().clone() for x in (other, p, other.grad, p.grad)]
    states = {k: {n: v.clone() for n, v in s.items()} for k, s in opt.state.items()}
    with pytest.raises(ValueError, match=match):
        opt.step()
    after = [x.detach() for x in (other, p, other.grad, p.grad)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert set(opt.state) == set(states)
    for k, s in states.items():
        assert all(torch.equal(opt.state[k][n], v) for n, v in s.items())


@pytest.mark.parametrize("backend", ["auto", "triton"])
@pytest.mark.parametrize("name", ["adam", "lamb", "torch_sgd"])
def test_the_fast_step_takes_channels_last_buffers_as_they_lie(name: str, backend: str) -> None:
    """Once a step has passed, the fast step (``optgen_runtime.optim.fast``) takes channels_last
    weights, gradients and states flat, with no copy; a gradient of other strides sends a step
    back to the full one. The same bits as contiguous copies in memory order throughout."""
    cls = RULES[name]
    torch.manual_seed(3)
    xs = [channels_last(_device(backend)), torch.randn(7, 3).to(_device(backend))]
    perms = [memory_order(x) for x in xs]
    ps = [torch.nn.Parameter(x) for x in xs]
    qs = [torch.nn.Parameter(_arranged(x.detach(), q)) for x, q in zip(xs, perms, strict=True)]
    ours, ref = cls(ps, backend=backend), cls(qs, backend=backend)
    plans = []
    for t in range(1, 9):
        gs = [torch.randn(x.shape).to(x.device) for x in xs]
        for p, q, g, perm in zip(ps, qs, gs, perms, strict=True):
            p.grad = g.contiguous() if t == 6 else torch.empty_like(p).copy_(g)
            q.grad = _arranged(g, perm)
        ours.step()
        ref.step()
        plans.append(ours._plan)
    if backend == "auto" and not ours._use_numba():
        pytest.skip("numba is not importable: no fast step on the NumPy reference")
    assert plans[2] is not None and plans[2] is plans[3] is plans[4]  # fast steps, one plan
    assert plans[5] is not plans[4]  # a contiguous gradient: the full step
    for p, q, perm in zip(ps, qs, perms, strict=True):
        assert torch.equal(_arranged(p.detach(), perm), q.detach())
