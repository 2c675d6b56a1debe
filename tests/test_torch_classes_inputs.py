"""What the generated torch.optim-style classes (``generated.torch``) take, on the CPU: named
parameters, a step under ``torch.compile``, unknown keywords (refused, naming what the class
takes), complex parameters (their real views, or refused), a parameter listed twice (refused).
Parameters and gradients from tests/test_torch_classes.py.
"""

from __future__ import annotations

import pytest
import torch
from test_torch_classes import CLASSES, make_params, set_grads


def test_named_parameters_input() -> None:
    model = torch.nn.Linear(3, 1)
    opt = CLASSES["adam"](model.named_parameters(), lr=0.1)
    before = model.weight.detach().clone()
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    assert not torch.equal(model.weight, before)
    assert opt.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("Adam", {}),  # the compiled CPU loops (numba)
        ("Adam", {"backend": "numpy"}),
        ("LAMB", {"backend": "triton"}),  # per-tensor sums, the Triton interpreter
        ("Muon", {}),  # a matrix rule
        ("optim.AdamW", {"foreach": True}),  # a drop-in: torch's argument names
    ],
    ids=["adam-numba", "adam-numpy", "lamb-triton", "muon", "dropin-adamw"],
)
@pytest.mark.parametrize("how", ["function", "method"])
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_a_step_under_torch_compile_runs_eagerly_with_the_same_bits(name, kwargs, how) -> None:
    """``torch.compile`` over a function calling ``opt.step()`` (torch's compiled-optimizer
    tutorial), or over ``opt.step`` itself: Dynamo breaks the graph there and the step runs
    eagerly (it used to trace into the step and fail in NumPy's interop), the same bits as the
    step without it; a step hook still runs (the method's case)."""
    import generated.torch
    import generated.torch.optim

    cls = generated.torch
    for part in name.split("."):
        cls = getattr(cls, part)
    torch._dynamo.reset()
    runs = []
    for compiled in (True, False):  # compiled first: its first step may be the process's
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(6, 4)), torch.nn.Parameter(torch.randn(4, 3))]
        opt = cls(params, **kwargs)
        hooked: list[int] = []
        if how == "method":  # torch's wrapper of step (hooks) then ours, and without
            opt.register_step_post_hook(lambda *_, seen=hooked: seen.append(1))
        step = opt.step
        if compiled and how == "method":
            step = torch.compile(opt.step)
        elif compiled:
            step = torch.compile(lambda opt=opt: opt.step())
        for t in range(3):
            set_grads(params, t)
            step()
        assert len(hooked) == (3 if how == "method" else 0)
        runs.append([p.detach().clone() for p in params])
    for traced, eager in zip(*runs, strict=True):
        assert torch.equal(eager, traced)


def test_an_unknown_keyword_is_refused_with_what_the_class_takes() -> None:
    """Python's TypeError, then the class's arguments, a close match and the classes that take
    the keyword: MXNet's ``SGD(momentum=...)`` points at SGDMomentum (and torch's drop-in SGD),
    a torch name given to an MXNet-named class at its own name. Other binding errors keep
    Python's message alone; the right names build as before."""
    import inspect

    import generated.torch.optim as dropins
    from generated.torch import SGD, Adam

    params = make_params()
    with pytest.raises(TypeError) as sgd:
        SGD(params, momentum=0.9)
    text = str(sgd.value)
    assert text.startswith("SGD.__init__() got an unexpected keyword argument 'momentum'; SGD")
    assert "SGD takes lr, wd, rescale_grad, clip_gradient, lazy_update, multi_precision, " in text
    assert "'momentum' is taken by generated.torch.optim.SGD, SGDMomentum, " in text
    with pytest.raises(TypeError, match=r"'bet1'; Adam takes .* \(did you mean 'beta1'\?\)$"):
        Adam(params, bet1=0.9)
    with pytest.raises(TypeError, match=r"\(did you mean 'betas'\?\); 'beta1' is taken by "):
        dropins.Adam(params, beta1=0.9)
    # torch's names of MXNet-named hyperparameters: the class's own name, not the closest
    # spelling (Adan offered 'weight_decouple' for 'weight_decay')
    for key, said in [
        ("weight_decay", "'wd': MXNet's name for torch's 'weight_decay'"),
        ("eps", "'epsilon': MXNet's name for torch's 'eps'"),
        ("betas", "'beta1' and 'beta2': MXNet's names for torch's 'betas'"),
    ]:
        with pytest.raises(TypeError) as error:
            CLASSES["adan"](params, **{key: 0.1})
        assert f"({said})" in str(error.value) and "did you mean" not in str(error.value)
    with pytest.raises(TypeError, match=r"^Adam\.__init__\(\) takes from 2 to \d+ positional "):
        Adam(params, *range(12))
    with pytest.raises(TypeError, match=r"^Adam\.__init__\(\) missing 1 required positional"):
        Adam()
    opt = Adam(params, lr=0.1, beta1=0.8)
    assert opt.param_groups[0]["beta1"] == 0.8
    assert list(inspect.signature(Adam).parameters)[:3] == ["params", "lr", "wd"]


@pytest.mark.parametrize("backend", ["numpy", "auto", "triton"])
@pytest.mark.parametrize("rule", ["adam", "lamb", "ftrl", "torch_rprop"])
def test_complex_parameters_step_as_their_real_views(rule: str, backend: str) -> None:
    """A complex parameter is updated as torch.optim updates one: its real view
    (``torch.view_as_real``) updated as a real parameter of that shape, each part alone (a
    whole-tensor sum, LAMB's norms, adds both parts' squares). 6 steps of a complex64
    parameter, a transposed one among them, to the bit a real parameter holding its real
    view; its states complex64, their real views the real parameter's."""
    torch.manual_seed(3)
    values = [torch.randn(4, 3, dtype=torch.complex64), torch.randn(5, 4, dtype=torch.complex64)]
    complex_params = [
        torch.nn.Parameter(values[0].clone()),
        torch.nn.Parameter(values[1].clone().t().contiguous().t()),  # not contiguous
    ]
    real_params = [torch.nn.Parameter(torch.view_as_real(v).clone()) for v in values]
    ours = CLASSES[rule](complex_params, backend=backend)
    peer = CLASSES[rule](real_params, backend=backend)
    for t in range(6):
        gen = torch.Generator().manual_seed(t)
        for c, r in zip(complex_params, real_params, strict=True):
            grad = torch.randn(c.shape, dtype=torch.complex64, generator=gen)
            c.grad, r.grad = grad, torch.view_as_real(grad).clone()
        ours.step()
        peer.step()
    for c, r in zip(complex_params, real_params, strict=True):
        assert torch.equal(torch.view_as_real(c.detach()), r.detach())
        for key, value in ours.state[c].items():
            if torch.is_tensor(value) and value.dim():
                assert value.dtype == torch.complex64, key
                assert torch.equal(torch.view_as_real(value), peer.state[r][key]), key
    assert not torch.equal(complex_params[0].detach(), values[0])


def test_complex_parameters_refused_where_no_real_view_applies() -> None:
    """A rule whose update does not see each element alone (Adafactor's row/column factors,
    Muon's matrices, SGLD's noise by index, AdaHessian's per-element input) refuses a complex
    parameter, naming it, and complex128 on the Triton path (its real view is float64); before
    anything is written."""
    for name in ("adafactor", "muon", "sgld", "adahessian"):
        p = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.complex64))
        opt = CLASSES[name]([p])
        p.grad = torch.ones_like(p)
        before = p.detach().clone()
        with pytest.raises(TypeError, match=r"parameter 0 is complex \(torch.complex64\)"):
            opt.step(**({"hessian": [torch.ones_like(p)]} if name == "adahessian" else {}))
        assert torch.equal(p.detach(), before) and not opt.state
    p = torch.nn.Parameter(torch.randn(3, dtype=torch.complex128))
    opt = CLASSES["adam"]([p], backend="triton")
    p.grad = torch.ones_like(p)
    with pytest.raises(TypeError, match="parameter 0 dtype must be float32, float16 or bfloat16"):
        opt.step()
    assert not opt.state


@pytest.mark.parametrize("rule", ["sgd_mom", "lamb", "torch_sgd"])
def test_a_parameter_listed_twice_is_refused_naming_both(rule: str) -> None:
    """torch.optim warns of a parameter listed twice in a group (it will refuse it,
    pytorch/pytorch#40967) and steps it twice meanwhile; ours refuses the step, naming both
    places, before anything is written."""
    params = make_params()
    with pytest.warns(UserWarning, match="duplicate parameters"):
        opt = CLASSES[rule]([params[0], params[1], params[0]])
    set_grads(params, 1)
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match="parameter 0 is listed again as parameter 2"):
        opt.step()
    assert not opt.state and all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
