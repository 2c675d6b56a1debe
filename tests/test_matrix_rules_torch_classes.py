"""The matrix rules (``conftest.MATRIX_RULES``) through their torch classes and compiled
modules, on 2-D weights: the compiled (numba) module equal to the NumPy module to the bit; a probe
rule whose writes take every path of the compiled and the GPU commit; the torch classes against
the NumPy module, their state_dict round trip and their refusals (a non-matrix parameter, a scalar
float32 cannot hold, a later weight's refusal leaving the earlier ones unwritten). Shapes,
variants and the one-product helpers from tests/test_matrix_rules.py.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    DEVICE,
    MATRIX_RULE_NAMES,
    MATRIX_RULES,
    assert_matches_float32,
    numba_module,
    numpy_module,
    triton_module,
)
from reference import sample_hyperparams
from test_matrix_rules import CLASSES, SHAPE, SHAPES, VARIANTS, OneProductNumPy, OneProductTorch


# ----------------------------------------------------------------------------- torch classes
def _params(seed: int = 1, device: str = "cpu") -> list[torch.nn.Parameter]:
    torch.manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s).to(device)) for s in SHAPES]


def _device(backend: str) -> str:
    """The triton backend's parameters live on DEVICE (CUDA in a GPU run), NumPy's on the CPU."""
    return DEVICE if backend == "triton" else "cpu"


def _groups(name: str, params: list) -> list[dict]:
    hp = sample_hyperparams(MATRIX_RULES[name], np.random.default_rng(3))
    return [{"params": params[:2], **hp}, {"params": params[2:], **hp, "lr": 0.5 * hp["lr"]}]


def _train(opt, params, start: int, steps: int) -> None:
    for t in range(start, start + steps):
        gen = torch.Generator().manual_seed(100 + t)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(p.device)
        opt.step()


@pytest.mark.parametrize(("name", "hp"), VARIANTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_compiled_module_equals_the_numpy_module_to_the_bit(name, hp, dtype) -> None:
    """generated.numba's matrix module: each per-element stage one compiled loop, the
    reductions and products the reference's own calls: every flag and choice, float32 and
    float64, a wide and a tall matrix (the products on either orientation), four steps, the
    same bits (the modules take C-contiguous arrays only: test_numpy_bad_inputs_...)."""
    pytest.importorskip("numba")  # the GPU check's machine may lack it
    ref, compiled = numpy_module(name), numba_module(name)
    assert compiled.COMPILED and compiled.step is not ref.step
    rng = np.random.default_rng(3)
    for shape in [(12, 31), (40, 9)]:
        w0 = rng.standard_normal(shape).astype(dtype)
        ours, theirs = w0.copy(), w0.copy()
        s_ref, s_ours = ref.init_state(theirs), compiled.init_state(ours)
        for t in range(1, 5):
            g = rng.standard_normal(shape).astype(dtype)
            ref.step(theirs, g.copy(), s_ref, t, **hp)
            compiled.step(ours, g, s_ours, t, **hp)
        np.testing.assert_array_equal(ours, theirs)
        for name_ in s_ref:
            np.testing.assert_array_equal(s_ours[name_], s_ref[name_])
        assert np.abs(ours - w0).max() > 0


# A matrix rule whose writes take every path of the compiled module's commit loop
# (codegen.matrix_targets.numba_kernels): a new state a later stage reads (m_new: the iteration's
# start; s_new: the update's), so stored by its segment and copied; a state set to the matrix
# value itself (last); the new weight computed at commit from a value a segment stored (U);
# a summand's buffer taken again by a later segment (X0).
PROBE = '''"""Probe of the compiled matrix module's writes."""

import sympy as sp

from codegen import matrix
from codegen.spec import Rule, integer, nonnegative, unit

RULE = Rule("probe_matrix", __doc__)
lr = RULE.hyper("lr", 0.1, nonnegative(), doc="rate")
beta = RULE.hyper("beta", 0.9, unit(), doc="decay")
steps = RULE.hyper("ns_steps", 2, integer(0, 9), doc="iterations")
w, g = RULE.weight, RULE.grad
m = RULE.state("m", 0, doc="momentum")
s = RULE.state("s", 1, doc="scale, of the weight")
last = RULE.state("last", 0, doc="the last iterate")
m_new = RULE.update(m, beta * m + (1 - beta) * g)
X0 = RULE.let("X0", m_new / sp.Max(RULE.norm("m_norm", m_new), sp.Float("1e-7")))


def step(X: matrix.Mat) -> matrix.Mat:
    return sp.Rational(3, 2) * X - sp.Rational(1, 2) * ((X @ X.T) @ X)


ortho = matrix.iterate(RULE, "ortho", X0, steps, step)
RULE.update(last, ortho)
s_new = RULE.update(s, beta * s + (1 - beta) * w * w)
U = RULE.let("U", ortho / (sp.sqrt(s_new) + 1) + m)
RULE.update(w, w - lr * U / (RULE.norm("U_norm", U) + 1))
'''


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PROBE generated into a temporary package, ``probe_package``, importable (skipped where
    the generator's templates and formatter are not installed: the GPU check's machine)."""
    pytest.importorskip("jinja2")
    pytest.importorskip("ruff")
    from codegen.generate import generate_all, write

    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "probe_matrix.py").write_text(PROBE)
    write(generate_all(tmp_path / "specs", ["probe_matrix"]), tmp_path / "probe_package")
    (tmp_path / "probe_package" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path / "probe_package"


def test_the_compiled_writes_of_a_probe_rule_equal_the_numpy_modules(probe: Path) -> None:
    """PROBE's compiled module (the new values made in place by the writes, buffers taken
    again) equals its NumPy module to the bit, one weight at a time and two in one
    ``step_multi`` (their writes queued), over steps of the iteration and none (the matrix value
    is then its start), float32 and float64."""
    pytest.importorskip("numba")  # the GPU check's machine may lack it
    import importlib

    ref = importlib.import_module("probe_package.numpy.probe_matrix")
    compiled = importlib.import_module("probe_package.numba.probe_matrix")
    text = (probe / "numba" / "probe_matrix.py").read_text()
    assert "X0 = _sum_m_norm  # its buffer" in text and "last_new = ortho" in text
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        for ns_steps in (0, 2):
            shapes = [(5, 7), (8, 3)]
            w0 = [rng.standard_normal(s).astype(dtype) for s in shapes]
            ours, theirs = [w.copy() for w in w0], [w.copy() for w in w0]
            s_ours = [compiled.init_state(w) for w in ours]
            s_ref = [ref.init_state(w) for w in theirs]
            for t in range(1, 4):
                gs = [rng.standard_normal(s).astype(dtype) for s in shapes]
                ref.step_multi(theirs, gs, s_ref, t, ns_steps=ns_steps)
                if t == 2:  # one at a time
                    for w, g, st in zip(ours, gs, s_ours, strict=True):
                        compiled.step(w, g, st, t, ns_steps=ns_steps)
                else:
                    compiled.step_multi(ours, gs, s_ours, t, ns_steps=ns_steps)
            for a, b, sa, sb in zip(ours, theirs, s_ours, s_ref, strict=True):
                np.testing.assert_array_equal(a, b)
                assert sa.keys() == sb.keys()
                for key in sa:
                    np.testing.assert_array_equal(sa[key], sb[key])
            assert all(np.abs(a - w).max() > 0 for a, w in zip(ours, w0, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_the_gpu_writes_of_a_probe_rule_match_the_numpy_modules(
    probe: Path, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PROBE's Triton module (the new values made in place by the writes' kernel, buffers
    taken again) against its NumPy module in lockstep: every step from the same weight, states
    and gradient, one product for both (``one_product``), to float32's rounding (a bfloat16
    weight within one ulp); one weight at a time and two in one ``step_multi`` (their writes
    queued), over steps of the iteration and none."""
    import importlib

    ref = importlib.import_module("probe_package.numpy.probe_matrix")
    gpu = importlib.import_module("probe_package.triton.probe_matrix")
    monkeypatch.setattr(ref, "np", OneProductNumPy())
    monkeypatch.setattr(gpu, "torch", OneProductTorch())
    text = (probe / "triton" / "probe_matrix.py").read_text()
    assert "X0 = _sum_m_norm  # its buffer" in text and "probe_matrix_commit_kernel" in text
    assert ".copy_(" not in text.split("def _step(")[1]  # nothing copied at commit
    rng = np.random.default_rng(0)
    shapes = [(5, 7), (8, 3)]
    for ns_steps in (0, 2):
        ws = [torch.tensor(rng.standard_normal(s), dtype=dtype, device=DEVICE) for s in shapes]
        w0 = [w.clone() for w in ws]
        states = [gpu.init_state(w) for w in ws]
        for t in range(1, 4):
            gs = [torch.tensor(rng.standard_normal(s), dtype=dtype, device=DEVICE) for s in shapes]
            before = [
                (w.float().cpu().numpy(), {k: v.cpu().numpy() for k, v in st.items()})
                for w, st in zip(ws, states, strict=True)
            ]
            want = [(w.copy(), {k: v.copy() for k, v in st.items()}) for w, st in before]
            ref.step_multi(
                [w for w, _ in want],
                [g.float().cpu().numpy() for g in gs],
                [st for _, st in want],
                t,
                ns_steps=ns_steps,
            )
            if t == 2:  # one at a time
                for w, g, st in zip(ws, gs, states, strict=True):
                    gpu.step(w, g, st, t, ns_steps=ns_steps)
            else:
                gpu.step_multi(ws, gs, states, t, ns_steps=ns_steps)
            for (w, st), (w_before, st_before), ours, ours_st in zip(
                want, before, ws, states, strict=True
            ):
                assert ours.dtype == dtype
                assert_matches_float32(ours.float().cpu().numpy(), w, dtype, w_before, f"t={t}")
                assert st.keys() == ours_st.keys()
                for key in st:
                    scale = np.maximum(np.abs(st_before[key]), np.abs(st[key]))
                    assert_matches_float32(
                        ours_st[key].cpu().numpy(), st[key], torch.float32, scale, f"{key}, t={t}"
                    )
        assert all(bool((a != w).any()) for a, w in zip(ws, w0, strict=True))


@pytest.mark.parametrize("backend", ["numpy", "numba", "triton"])
@pytest.mark.parametrize("name", MATRIX_RULE_NAMES)
def test_torch_class_matches_the_numpy_module(name: str, backend: str) -> None:
    if backend == "numba":
        pytest.importorskip("numba")  # the GPU check's machine may lack it
    params = _params(device=_device(backend))
    groups = _groups(name, params)
    opt = CLASSES[name](groups, backend=backend)
    m = numpy_module(name)
    arrays = [p.detach().cpu().numpy().copy() for p in params]
    states = [m.init_state(a) for a in arrays]
    for t in range(1, 11):
        _train(opt, params, t, 1)
        for i, (a, s) in enumerate(zip(arrays, states, strict=True)):
            hp = {k: v for k, v in groups[i // 2].items() if k in m.HYPERPARAMS}
            m.step(a, params[i].grad.cpu().numpy().copy(), s, t, **hp)
    for p, a in zip(params, arrays, strict=True):
        if backend in ("numpy", "numba"):  # numba: the same IEEE ops, the same products
            np.testing.assert_array_equal(p.detach().numpy(), a)
        else:  # matmul's summation order (torch vs NumPy's BLAS) differs
            np.testing.assert_allclose(p.detach().cpu().numpy(), a, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", ["numpy", "triton"])
@pytest.mark.parametrize("name", MATRIX_RULE_NAMES)
def test_state_dict_round_trip_is_bit_identical(name: str, backend: str) -> None:
    cls = CLASSES[name]
    straight = _params(device=_device(backend))
    opt = cls(_groups(name, straight), backend=backend)
    _train(opt, straight, 1, 10)
    first = _params(device=_device(backend))
    opt = cls(_groups(name, first), backend=backend)
    _train(opt, first, 1, 5)
    saved = copy.deepcopy(opt.state_dict())
    fresh = [torch.nn.Parameter(p.detach().clone()) for p in first]
    resumed = cls(_groups(name, fresh), backend=backend)
    resumed.load_state_dict(saved)
    _train(resumed, fresh, 6, 5)
    for a, b in zip(straight, fresh, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", MATRIX_RULE_NAMES)
def test_torch_class_refuses_a_non_matrix_parameter_before_writing(name: str) -> None:
    """A bias among matrices is refused when its group is added (torch.optim.Muon refuses it at
    construction too), naming its shape; a state_dict with it is never made."""
    params = [*_params(), torch.nn.Parameter(torch.ones(5))]
    with pytest.raises(ValueError, match=rf"{name}: the weight must be a 2-D matrix.*\(5,\)"):
        CLASSES[name](params)
    opt = CLASSES[name](params[:2])
    with pytest.raises(ValueError, match=r"2-D matrix.*\(5,\)"):
        opt.add_param_group({"params": params[2:]})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("target", ["numpy", "triton"])
@pytest.mark.parametrize("name", MATRIX_RULE_NAMES)
def test_a_scalar_float32_cannot_hold_is_refused_before_writing(name: str, target: str) -> None:
    """lr=1e300 is a legal learning rate, but -lr * wd + 1 and -lr_adj overflow float32: refused,
    naming the scalar and its host code, with nothing written (before the range check reached
    the matrix rules' modules, both wrote infinite weights); float64 NumPy weights take it."""
    m = numpy_module(name) if target == "numpy" else triton_module(name)
    w = np.ones(SHAPE, np.float32) if target == "numpy" else torch.ones(SHAPE, device=DEVICE)
    g, state = w * 0.5, m.init_state(w)
    before = [w.copy() if target == "numpy" else w.clone()]
    before += [v.copy() if target == "numpy" else v.clone() for v in state.values()]
    refused = rf"{name}: .*kernel scalar \w+ \(.*lr.*\) is -?[\d.]+e\+\d+"
    with pytest.raises(ValueError, match=refused):
        m.step(w, g, state, 1, lr=1e300)
    for x, y in zip(before, [w, *state.values()], strict=True):
        assert bool((x == y).all())
    if target == "numpy":
        w64 = np.ones(SHAPE)
        m.step(w64, w64 * 0.5, m.init_state(w64), 1, lr=1e300)
        assert np.isfinite(w64).all() and not (w64 == 1).all()


@pytest.mark.parametrize(
    "target", ["numpy", "numba", "triton", "class-numpy", "class-numba", "class-triton"]
)
@pytest.mark.parametrize("name", ["muon"])  # AdaMuon's zero gradient gives NaN, not a refusal
def test_a_later_weights_refusal_leaves_the_earlier_ones_unwritten(name: str, target: str) -> None:
    """``step_multi`` (and a torch class's step, over two param groups) on two weights, the
    second with a zero gradient: its norm is 0, so 1 / max(epsilon, norm) at epsilon = 1e-40 is
    past float32's range, refused (``checked_scalar``) once the first weight's step was computed,
    which must not be written (the writes are queued: ``optgen_runtime.writes.commit``; the
    matrix modules' code is one template, so AdaMuon's step_multi queues them alike; the
    compiled module's queued writes compute the new values in place, ``_commit``)."""
    if target.endswith("numba"):
        pytest.importorskip("numba")  # the GPU check's machine may lack it
    modules = {"numpy": numpy_module, "numba": numba_module, "triton": triton_module}
    m = modules[target.removeprefix("class-")](name)
    torch.manual_seed(0)
    first, second = torch.randn(SHAPE), torch.zeros(SHAPE)
    grads = [torch.randn(SHAPE), torch.zeros(SHAPE)]
    if target.startswith("class"):
        params = [torch.nn.Parameter(w.clone().to(_device(target[6:]))) for w in (first, second)]
        opt = CLASSES[name](
            [{"params": params[:1]}, {"params": params[1:]}], backend=target[6:], epsilon=1e-40
        )
        for p, g in zip(params, grads, strict=True):
            p.grad = g.to(p.device)
        with pytest.raises(ValueError, match=r"cannot hold"):
            opt.step()
        assert torch.equal(params[0].detach().cpu(), first) and not opt.state
        return
    if target in ("numpy", "numba"):
        weights = [first.numpy().copy(), second.numpy().copy()]
        gs = [g.numpy() for g in grads]
    else:
        weights, gs = [first.clone().to(DEVICE), second.clone().to(DEVICE)], grads
        gs = [g.to(DEVICE) for g in gs]
    states = [m.init_state(w) for w in weights]
    with pytest.raises(ValueError, match=r"cannot hold"):
        m.step_multi(weights, gs, states, 1, epsilon=1e-40)
    got = weights[0] if target != "triton" else weights[0].cpu().numpy()
    np.testing.assert_array_equal(got, first.numpy())
    assert all(bool((v == 0).all()) for s in states for v in s.values())
