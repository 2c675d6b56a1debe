"""Per-step scalar inputs (``RULE.scalar``), shown on a demonstration spec generated into a
temp dir: a Polyak-type step size min(lr, loss / ||g||^2) (Loizou et al. 2021, SPS_max, with
f* = 0), computed on the host from the loss and a reduction, and a host state averaging the
loss. No shipped rule needs a scalar input yet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tolerance
from reference import spec_trajectory

from codegen.load import load_rule
from optgen_runtime.optim import GeneratedOptimizer

SPEC = '''"""Polyak-type step: w -= min(lr, loss / (sum g^2 + eps)) * g (demonstration)."""

import sympy as sp

from codegen.spec import Rule, positive

RULE = Rule("polyak_demo", __doc__)
lr = RULE.hyper("lr", 0.5, positive(), doc="largest step size")
loss = RULE.scalar("loss", doc="the loss at this step (minus its floor)")
w, g = RULE.weight, RULE.grad
avg = RULE.host_state("loss_avg", 0.0, doc="running mean of the loss")
RULE.update(avg, sp.Rational(9, 10) * avg + loss / 10)
size = RULE.let("size", sp.Min(lr, loss / (RULE.sum("g_sq", g**2) + sp.Float("1e-12"))))
RULE.update(w, w - size * g)
'''


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    from conftest import temporary_rule

    root = tmp_path_factory.mktemp("polyak")
    with temporary_rule(root, "polyak_demo", SPEC) as modules:
        yield modules, load_rule(root / "specs" / "polyak_demo.py")


def expected(w: np.ndarray, g: np.ndarray, loss: float, lr: float = 0.5) -> np.ndarray:
    return w - min(lr, loss / (float(np.sum(g * g)) + 1e-12)) * g


def test_the_loss_is_a_host_input(demo) -> None:
    modules, _ = demo
    meta = modules["rules"]
    assert meta.STEP_SCALARS == ("loss",) and meta.INPUTS == ()
    # the kernel's one scalar, from the loss (the let size names its inputs)
    assert meta.SCALARS == {"_h0": "= -size, in specs/polyak_demo.py:14, from g_sq, loss, lr"}
    assert "loss" in meta.host_scalars.__code__.co_varnames


def test_numpy_triton_and_the_equations_agree(demo) -> None:
    modules, rule = demo
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(9)
    grads = [rng.standard_normal(9) for _ in range(4)]
    losses = [3.0, 0.5, 0.01, 2.0]  # the step size is lr, then the Polyak ratio
    w, state = w0.copy(), modules["numpy"].init_state(w0.copy())
    tw = torch.tensor(w0, dtype=torch.float32)
    tstate = modules["triton"].init_state(tw)
    history = []
    for t, (g, loss) in enumerate(zip(grads, losses, strict=True), start=1):
        want = expected(w, g, loss)
        modules["numpy"].step(w, g.copy(), state, t, loss=loss)
        modules["triton"].step(tw, torch.tensor(g, dtype=torch.float32), tstate, t, loss=loss)
        np.testing.assert_allclose(w, want, **tolerance(np.float64))
        np.testing.assert_allclose(tw.numpy(), w, **tolerance(np.float32, t, scale=1.0))
        assert tstate["loss_avg"] == state["loss_avg"]
        history.append({"weight": w.copy(), "loss_avg": np.array(state["loss_avg"])})
    avg = 0.0
    for loss in losses:
        avg = 0.9 * avg + loss / 10
    assert state["loss_avg"] == pytest.approx(avg, rel=1e-15)
    reference = spec_trajectory(rule, w0, grads, {}, inputs=lambda t: {"loss": losses[t - 1]})
    for got, want in zip(history, reference, strict=True):
        for key in want:
            np.testing.assert_allclose(got[key], want[key], **tolerance(np.float64, 4))


BAD = [
    ({}, TypeError, "the scalar input loss is missing"),
    ({"loss": float("nan")}, ValueError, "scalar input loss=nan must be finite"),
    ({"loss": float("inf")}, ValueError, "scalar input loss=inf must be finite"),
    ({"loss": "1.0"}, TypeError, "scalar input loss must be a real number"),
    ({"loss": True}, TypeError, "scalar input loss must be a real number"),
    ({"loss": torch.ones(2)}, TypeError, "scalar input loss must be a real number"),
]


@pytest.mark.parametrize(("given", "error", "match"), BAD, ids=[str(b[0]) for b in BAD])
@pytest.mark.parametrize("target", ["numpy", "triton"])
def test_a_bad_loss_is_refused_before_anything_is_written(demo, target, given, error, match):
    modules, _ = demo
    module = modules[target]
    w = np.ones(4) if target == "numpy" else torch.ones(4)
    g = w * 0.5
    state = module.init_state(w)
    with pytest.raises(error, match=f"^polyak_demo: {match}"):
        module.step(w, g, state, 1, **given)
    if target == "triton":
        with pytest.raises(error, match=f"^polyak_demo: {match}"):
            module.step_multi([w], [g], [state], 1, **given)
    assert np.all(np.asarray(w) == 1.0) and state == {"loss_avg": 0.0}


def test_a_torch_class_takes_the_loss_from_the_closure(demo) -> None:
    """A rule that declares ``loss`` takes the closure's return value; ``step(loss=...)``
    passes it by hand (it wins over the closure's); without either the step is refused."""
    modules, rule = demo

    class PolyakDemo(GeneratedOptimizer):
        RULE = rule.name
        META, NUMPY, TRITON = modules["rules"], modules["numpy"], modules["triton"]

    for backend in ("numpy", "triton"):
        p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
        opt = PolyakDemo([p], {"lr": 0.5}, backend=backend)

        def closure(p=p, opt=opt):
            opt.zero_grad()
            loss = (p**2).sum() / 2
            loss.backward()
            return loss

        with pytest.raises(TypeError, match="PolyakDemo: the scalar input loss is missing"):
            p.grad = p.detach().clone()
            opt.step()
        assert not opt.state
        w = p.detach().clone()
        loss = float(opt.step(closure).detach())
        # loss = |w|^2 / 2, g = w: the Polyak size is 1/2 = lr: w halves
        torch.testing.assert_close(p.detach(), w - min(0.5, loss / float((w**2).sum())) * w)
        assert opt.state[p]["loss_avg"] == pytest.approx(loss / 10)
        before = p.detach().clone()
        opt.step(closure, loss=0.0)  # by hand: a zero step
        assert torch.equal(p.detach(), before)


def test_the_triton_kernel_gets_no_loss_argument(demo) -> None:
    """The loss is folded into the host scalar ``size``: the kernels take no extra argument."""
    import inspect

    modules, _ = demo
    source = inspect.getsource(modules["triton"])
    assert "loss" not in source.split("def polyak_demo_kernel_body(")[1].split("):")[0]


ROW_STATE_WITH_INPUT = '''"""An input next to a row state (not supported yet)."""

from codegen.spec import Rule

RULE = Rule("row_input", __doc__)
h = RULE.input("hessian", doc="an input")
r = RULE.state("r", 0, doc="one per row", axis=-1)
RULE.update(r, r + RULE.sum("hsq", h**2, axis=-1))
RULE.update(RULE.weight, RULE.weight - RULE.grad * h)
'''

GROUP_WITH_SCALAR = '''"""A scalar input next to a group reduction (not supported yet)."""

from codegen.spec import Rule

RULE = Rule("group_loss", __doc__)
loss = RULE.scalar("loss", doc="the loss")
n = RULE.sum("g_sq", RULE.grad**2, group=True)
RULE.update(RULE.weight, RULE.weight - loss / (n + 1) * RULE.grad)
'''


@pytest.mark.parametrize(
    ("name", "spec"), [("row_input", ROW_STATE_WITH_INPUT), ("group_loss", GROUP_WITH_SCALAR)]
)
def test_inputs_next_to_row_states_or_group_reductions_are_refused_by_name(
    tmp_path, name: str, spec: str
) -> None:
    """Not supported yet: refused when generating, naming the spec file and the inputs."""
    from codegen.generate import generate_all
    from codegen.spec import SpecError

    (tmp_path / f"{name}.py").write_text(spec)
    with pytest.raises(SpecError, match=rf"{name}.py: inputs \((hessian|loss)\) are not supported"):
        generate_all(tmp_path)
