"""Muon (specs/muon.py), the first rule with matrix equations (codegen/matrix.py).

References, none of them the generator's own output:
- ``torch.optim.Muon`` (torch 2.13) with its bfloat16 cast patched to a float32 copy (so torch's
  own code runs the same algorithm in float32): the NumPy module agrees over 25 steps on square,
  tall, wide and 1 x n weights to a few float32 ulps;
- the unpatched ``torch.optim.Muon`` (Newton-Schulz in bfloat16): its difference from our float32
  iteration is bounded (a few percent of how far the weight moved);
- the spec's own equations, evaluated at 40 digits (mpmath; the matrix equations node by node)
  vs the NumPy module in float64;
- the GPU path (Triton kernels under the interpreter, torch.matmul) vs NumPy;
- ``ns_dtype="bfloat16"``: the NumPy emulation in float64 against the equations at 40 digits with
  each matrix op's result rounded to bfloat16 there too (tests/test_matrix_rules.py, every
  choice); torch's bfloat16 ops on float32 weights (optgen_runtime.held) against the emulation;
  the unpatched ``torch.optim.Muon`` within the same bound as the float32 iteration.
"""

from __future__ import annotations

import importlib
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
import torch
from conftest import float32_newton_schulz
from matrix_reference import as_float, mp_array, reference_step

from codegen import matrix, ops
from codegen.load import SPECS_DIR, load_rule
from codegen.spec import SpecError

muon = importlib.import_module("generated.numpy.muon")
tmuon = importlib.import_module("generated.triton.muon")
RULE = load_rule(SPECS_DIR / "muon.py")
SHAPES = [(8, 8), (12, 5), (5, 12), (1, 7)]
SETTINGS = [
    {"lr": 0.02},
    {"lr": 0.02, "nesterov": False, "wd": 0.0},
    {"lr": 0.05, "adjust_lr_fn": "match_rms_adamw", "momentum": 0.9, "ns_steps": 3},
]
TORCH_NAMES = {"wd": "weight_decay", "epsilon": "eps"}


def _torch_kwargs(hp: dict) -> dict:
    kw = {TORCH_NAMES.get(k, k): v for k, v in hp.items() if not k.startswith("ns_")}
    kw.setdefault("weight_decay", muon.HYPERPARAMS["wd"])
    if "ns_steps" in hp:
        kw["ns_steps"] = hp["ns_steps"]
    return kw


def _run_both(shape, hp, steps, monkeypatch=None, seed=0):
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal(shape).astype(np.float32)
    grads = [rng.standard_normal(shape).astype(np.float32) for _ in range(steps)]
    ours = w0.copy()
    state = muon.init_state(ours)
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = torch.optim.Muon([p], **_torch_kwargs(hp))
    for t, g in enumerate(grads, start=1):
        muon.step(ours, g.copy(), state, t, **hp)
        p.grad = torch.tensor(g)
        opt.step()
    return w0, ours, p.detach().numpy(), state, opt.state[p]["momentum_buffer"].numpy()


@pytest.mark.parametrize("hp", SETTINGS, ids=["default", "no_nesterov", "match_rms"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_numpy_matches_torch_muon_in_float32(shape, hp, monkeypatch) -> None:
    float32_newton_schulz(monkeypatch)
    w0, ours, theirs, state, buf = _run_both(shape, hp, steps=25)
    assert np.abs(ours - w0).max() > 0.05  # it moved
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=16 * np.finfo(np.float32).eps)
    np.testing.assert_allclose(state["momentum_buffer"], buf, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_torch_bfloat16_iteration_is_within_a_bound_of_ours(shape) -> None:
    """torch iterates on bfloat16 operands (8 bits of mantissa); ours on float32. Over 20 steps
    the weights differ by at most 3% of how far they moved (measured: under 1%)."""
    w0, ours, theirs, _, _ = _run_both(shape, {"lr": 0.02}, steps=20)
    moved = np.abs(ours - w0).max()
    diff = np.abs(ours - theirs).max()
    assert 0 < diff <= 0.03 * moved, (diff, moved)


@pytest.mark.parametrize("shape", SHAPES + [(64, 96), (200, 50)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_bfloat16_iteration_is_within_the_bound_of_torchs(shape) -> None:
    """Both iterate in bfloat16 and round the same values, but for the start (torch rounds the
    momentum before normalising it): over 20 steps the weights differ by the float32
    iteration's bound (measured 0.3-0.7% of how far they moved, the float32 iteration's
    0.2-0.9%)."""
    w0, ours, theirs, _, _ = _run_both(shape, {"lr": 0.02, "ns_dtype": "bfloat16"}, steps=20)
    moved = np.abs(ours - w0).max()
    diff = np.abs(ours - theirs).max()
    assert 0 < diff <= 0.03 * moved, (diff, moved)
    _, ours32, _, _, _ = _run_both(shape, {"lr": 0.02}, steps=20)
    assert np.abs(ours - ours32).max() > 1e-4 * moved  # the option changed the iteration


@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (64, 96)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_bfloat16_by_torchs_ops_matches_the_emulation(shape, monkeypatch) -> None:
    """A float32 weight's bfloat16 iteration runs on torch's CPU ops (NumPy has no bfloat16
    product); with torch hidden, on NumPy's emulation: the same steps but for each product's
    accumulation order (NumPy's BLAS takes ``X @ X.T`` as a symmetric rank-k update; a bfloat16
    rounding flips where a sum lies near a midpoint, and Newton-Schulz amplifies it: measured
    the same bits at 12 x 5 and 5 x 12, 0.3% of the movement at 64 x 96). The bound lies below
    how far the float32 iteration's weights are from these (1.4-3.4% over these 5 steps)."""
    from optgen_runtime import held

    assert isinstance(held.held_ops("bfloat16", np.zeros(1, np.float32)), held.HeldTorch)
    assert isinstance(held.held_ops("bfloat16", np.zeros(1)), held.HeldNumPy)  # float64
    rng = np.random.default_rng(4)
    w0 = rng.standard_normal(shape).astype(np.float32)
    grads = [rng.standard_normal(shape).astype(np.float32) for _ in range(5)]
    results = []
    for have_torch in (True, False):
        monkeypatch.setattr(held, "HAVE_TORCH", have_torch)
        monkeypatch.setattr(held, "_HELD", {})
        w, state = w0.copy(), muon.init_state(w0)
        for t, g in enumerate(grads, start=1):
            muon.step(w, g, state, t, lr=0.02, ns_dtype="bfloat16")
        results.append(w)
    moved = np.abs(results[1] - w0).max()
    assert moved > 0.04
    np.testing.assert_allclose(results[0], results[1], rtol=0, atol=0.01 * moved)


@pytest.mark.parametrize("fmt", ["bfloat16", "float16"])
def test_each_held_op_by_torch_equals_the_emulations(fmt) -> None:
    """optgen_runtime.held's ops one by one, torch's (the GPU path's and the CPU one for float32
    weights) against NumPy's emulation, bit for bit: on multiples of 1/8 below 8 and dyadic
    scales every float32 sum is exact, so no library's summation order shows, while a held
    result (13 bits and more) is rounded to the format's 8 or 11."""
    from optgen_runtime import held

    by_torch, emulated = held.HeldTorch(fmt), held.HeldNumPy(fmt)
    rng = np.random.default_rng(6)

    def value(shape: tuple[int, int]) -> np.ndarray:
        return (rng.integers(-64, 64, shape) / 8).astype(np.float32)

    a, b, c = value((24, 40)), value((40, 24)), value((24, 24))
    s, t = np.float32(-4.78125), np.float32(2.0625)  # 8 and 6 significant bits
    cases = [
        ("matmul", (a, b, True)),
        ("matmul", (a, b, False)),
        ("add", (c, c * 3.125, True)),
        ("add", (c, c * 3.125, False)),
        ("multiply", (s, c, True)),
        ("multiply", (t, c, False)),
        ("addmm", (c, a, b, s, t)),
        ("addmm", (c, a, b, None, t)),
        ("addmm", (c, a, b, s, None)),
    ]
    for name, args in cases:
        want = getattr(emulated, name)(*args)
        tensors = [torch.from_numpy(x) if isinstance(x, np.ndarray) else x for x in args]
        if name == "addmm":  # its operands are held: the format's tensors
            tensors[:3] = [by_torch.start(x) for x in tensors[:3]]
        got = getattr(by_torch, name)(*tensors)
        assert got.dtype == (by_torch.dtype if args[-1] is not False else torch.float32), name
        np.testing.assert_array_equal(got.float().numpy(), want, err_msg=f"{name}{args[-1:]}")
        held_result = name == "addmm" or args[-1] is True
        if held_result:  # the cases reach the format's rounding: it changed something
            assert (getattr(held.WEIGHT_OPS, name)(*args) != want).any(), name


def test_bfloat16_rounding_is_torchs() -> None:
    """``held_in`` against torch's own conversion, bit for bit: float32 and float64 values over
    the whole exponent range, ties, infinities, NaN, subnormals and overflow."""
    from optgen_runtime.held import held_in

    rng = np.random.default_rng(5)
    scale = 10.0 ** rng.integers(-44, 38, 20_000)
    x32 = (rng.standard_normal(20_000) * scale).astype(np.float32)
    ties = np.float32(1) + np.float32(2**-8) * np.arange(1, 8, dtype=np.float32)
    specials = [np.nan, np.inf, -np.inf, 0.0, -0.0, 3.4e38, -3.4e38, 1e-45, 1e-39]
    x32 = np.concatenate([x32, ties, np.array(specials, np.float32)])
    x64 = np.concatenate([rng.standard_normal(20_000) * 10.0 ** rng.integers(-300, 300, 20_000)])
    for x in (x32, x64):
        for fmt, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
            want = torch.from_numpy(x).to(dtype).to(torch.float64).numpy()
            got = held_in(x, fmt)
            assert got.dtype == x.dtype
            np.testing.assert_array_equal(got.astype(np.float64), want)


# ------------------------------------------------------------------------ 40-digit equations
@pytest.mark.parametrize("shape", [(3, 4), (4, 2), (1, 3)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("nesterov", [True, False])
def test_numpy_float64_matches_the_equations_at_40_digits(shape, nesterov) -> None:
    rng = np.random.default_rng(1)
    hp = dict(muon.HYPERPARAMS, lr=0.1, nesterov=nesterov, ns_steps=3)
    resolved = {k: float(v) if not isinstance(v, str) else 0.0 for k, v in hp.items()}
    weight = rng.standard_normal(shape)
    state = muon.init_state(weight.copy())
    ref_w = mp_array(weight)
    ref_state = {"momentum_buffer": mp_array(np.zeros(shape))}
    ours = weight.copy()
    for t in range(1, 4):
        g = rng.standard_normal(shape)
        muon.step(ours, g.copy(), state, t, **hp)
        ref_w, ref_state = reference_step(RULE, ref_w, g.tolist(), ref_state, t, resolved)
        expected = np.array(as_float(ref_w))
        np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-13)
        buf = np.array(as_float(ref_state["momentum_buffer"]))
        np.testing.assert_allclose(state["momentum_buffer"], buf, rtol=1e-13, atol=1e-14)


# ---------------------------------------------------------------------------------- GPU path
@pytest.mark.parametrize("shape", SHAPES + [(40, 33)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_triton_path_matches_numpy(shape) -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal(shape).astype(np.float32)
    ours, theirs = w.copy(), torch.tensor(w)
    s_np, s_tr = muon.init_state(ours), tmuon.init_state(theirs)
    for t in range(1, 6):
        g = rng.standard_normal(shape).astype(np.float32)
        muon.step(ours, g, s_np, t, lr=0.02)
        tmuon.step(theirs, torch.tensor(g), s_tr, t, lr=0.02)
    # the same float32 ops, except matmul's summation order (NumPy's BLAS vs torch's)
    np.testing.assert_allclose(theirs.numpy(), ours, rtol=0, atol=1e-5)
    np.testing.assert_allclose(s_tr["momentum_buffer"].numpy(), s_np["momentum_buffer"], atol=1e-6)


def test_step_multi_is_step_on_each() -> None:
    rng = np.random.default_rng(3)
    ws = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    gs = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    one, many = [w.copy() for w in ws], [w.copy() for w in ws]
    s1, s2 = [muon.init_state(w) for w in one], [muon.init_state(w) for w in many]
    for w, g, s in zip(one, gs, s1, strict=True):
        muon.step(w, g, s, 1)
    assert muon.step_multi(many, gs, s2, 1) == len(SHAPES)
    for a, b in zip(one, many, strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("shape", [(7,), (), (2, 3, 4)])
def test_a_weight_that_is_not_a_matrix_is_refused_before_anything_is_written(shape) -> None:
    """torch.optim.Muon refuses every non-2-D parameter; so do the NumPy and the GPU path."""
    w = np.ones(shape, np.float32)
    with pytest.raises(ValueError, match=r"muon: the weight must be a 2-D matrix"):
        muon.init_state(w)
    good = muon.init_state(np.ones((2, 2), np.float32))
    state = {"momentum_buffer": np.zeros(shape, np.float32)}
    before = w.copy()
    with pytest.raises(ValueError, match=r"2-D matrix.*shape " + re.escape(repr(shape))):
        muon.step(w, np.ones(shape, np.float32), state, 1)
    np.testing.assert_array_equal(w, before)
    assert not state["momentum_buffer"].any()
    weights = [np.ones((2, 2), np.float32), w]
    first = weights[0].copy()
    with pytest.raises(ValueError, match="2-D matrix"):
        muon.step_multi(weights, [np.ones_like(x) for x in weights], [good, state], 1)
    np.testing.assert_array_equal(weights[0], first)  # the good one was not written either
    with pytest.raises(ValueError, match="2-D matrix"):
        tmuon.init_state(torch.ones(shape))
    tw = torch.ones(shape)
    with pytest.raises(ValueError, match="2-D matrix"):
        tmuon.step(tw, torch.ones(shape), {"momentum_buffer": torch.zeros(shape)}, 1)
    assert bool((tw == 1).all())


def test_ns_steps_must_be_a_whole_number() -> None:
    w = np.ones((2, 2), np.float32)
    with pytest.raises(ValueError, match="ns_steps"):
        muon.step(w, w.copy(), muon.init_state(w), 1, ns_steps=2.5)


# ------------------------------------------------------------------------------- the lowering
def test_the_matrix_ops_come_from_the_one_table_with_costs() -> None:
    (it,) = matrix.iterations(RULE)
    assert {op.kind for op in it.program} <= set(ops.MATRIX_OPS)
    assert matrix.op_counts(it) == {"mscale": 3, "transpose": 1, "matmul": 3, "madd": 2}
    r, c = sp.symbols("r c", positive=True)
    # X X^T (r r c), A A (r^3), (..) X (r r c): 2 flops per multiply-add, plus the scales/sums
    assert it.cost(r, c) == sp.expand(2 * (r * r * c + r**3 + r * r * c) + 3 * r * r + 2 * r * c)
    assert ops.matrix_cost("matmul", (4, 3), (3, 5)) == 2 * 4 * 3 * 5
    assert it.equivariant  # an odd polynomial p(X X^T) X: either orientation is the same matrix


def test_the_cheaper_orientation_is_taken_as_torch_does() -> None:
    """torch transposes a tall matrix (rows > cols): the smaller Gram matrix. The generated
    code decides from the ops' costs; a tall weight runs on its transpose."""
    (it,) = matrix.iterations(RULE)
    r, c = sp.symbols("r c", positive=True)
    for rows, cols in [(12, 5), (5, 12), (8, 8), (1, 7)]:
        swapped = it.cost(c, r).subs({r: rows, c: cols}) < it.cost(r, c).subs({r: rows, c: cols})
        assert swapped == (rows > cols)


def test_equivariance_is_proven_for_other_steps(tmp_path: Path) -> None:
    """A word in X and X^T mapping (rows, cols) to itself is X (X^T X)^k: always equivariant."""
    rule = _spec(tmp_path, "return X @ X.T @ X + X.T.T")
    (it,) = matrix.iterations(rule)
    assert it.equivariant  # X X^T X + X
    rule = _spec(tmp_path, "return a * X + X @ X.T @ X @ X.T @ X", name="probe2")
    assert matrix.iterations(rule)[0].equivariant


def _spec(
    tmp_path: Path, body: str, steps: str = "n", name: str = "probe", precision: str = "None"
) -> object:
    path = tmp_path / f"{name}.py"
    path.write_text(
        textwrap.dedent(
            f'''
            """Probe."""
            from codegen import matrix
            from codegen.spec import Rule, integer
            RULE = Rule("{name}", __doc__)
            a = RULE.hyper("a", 1.0)
            n = RULE.hyper("n", 2, integer(0, 9))
            fmt = RULE.choice("fmt", "weight", ("weight", "float16"))
            odd = RULE.choice("odd", "weight", ("weight", "int8"))
            x0 = RULE.let("x0", RULE.grad)
            def body(X):
                {body}
            ortho = matrix.iterate(RULE, "ortho", x0, {steps}, body, precision={precision})
            RULE.update(RULE.weight, RULE.weight - ortho)
            '''
        )
    )
    return load_rule(path)


@pytest.mark.parametrize(
    ("body", "steps", "message"),
    [
        ("return X @ X", "n", r"probe.py:\d+: matrix equation: product of shapes \(rows, cols\)"),
        ("return X @ X.T", "n", r"probe.py:\d+: the step of matrix value 'ortho' maps"),
        ("return X * X", "n", r"probe.py:\d+: matrix equation: \* of two matrices"),
        ("return RULE.grad * X", "n", r"probe.py:\d+: matrix equation: .*host scalar"),
        ("return X", "a", r"probe.py:\d+: matrix value 'ortho' repeats its step a times"),
        ("return 3", "n", r"probe.py:\d+: the step of matrix value 'ortho' returns 3"),
    ],
)
def test_a_malformed_matrix_equation_is_refused_naming_the_spec_line(
    tmp_path, body, steps, message
) -> None:
    with pytest.raises(SpecError, match=message):
        _spec(tmp_path, body, steps)


@pytest.mark.parametrize(
    ("precision", "message"),
    [
        ("a", r"probe.py:\d+: matrix value 'ortho': precision=a must be a choice hyperparameter"),
        ("odd", r"probe.py:\d+: matrix value 'ortho': precision 'odd' offers \['int8'\]"),
    ],
)
def test_a_precision_that_is_not_a_choice_of_formats_is_refused(
    tmp_path, precision, message
) -> None:
    with pytest.raises(SpecError, match=message):
        _spec(tmp_path, "return X", precision=precision)
    rule = _spec(tmp_path, "return X", precision="fmt", name="probe_ok")  # float16 is one
    assert matrix.iterations(rule)[0].precisions == ("weight", "float16")


def test_op_counts_are_pinned() -> None:
    """The generated step's ops (per-element segments, matrix ops per iteration step) against
    tests/goldens/op_counts.json (``python -m tools.op_counts --write``)."""
    import json

    from codegen import matrix_targets

    golden = json.loads((Path(__file__).parent / "goldens" / "op_counts.json").read_text())
    assert matrix_targets.op_counts(RULE) == golden["muon"]
    assert golden["muon"]["matrix_plan"]["ortho (per step)"]["matmul"] == 3


# ------------------------------------------------------------------------------ torch class
def test_torch_class_matches_torch_muon_and_exchanges_state(monkeypatch) -> None:
    """``generated.torch.Muon`` (CPU: the NumPy module) vs torch.optim.Muon (float32
    Newton-Schulz) over 20 steps, then its state moved into a torch.optim.Muon and back."""
    from generated.torch import Muon

    float32_newton_schulz(monkeypatch)
    rng = np.random.default_rng(4)
    w0 = [rng.standard_normal(s).astype(np.float32) for s in [(6, 4), (3, 9)]]
    ours = [torch.nn.Parameter(torch.tensor(w)) for w in w0]
    theirs = [torch.nn.Parameter(torch.tensor(w)) for w in w0]
    opt = Muon(ours, lr=0.02, nesterov=False)
    ref = torch.optim.Muon(theirs, lr=0.02, nesterov=False)  # adjust_lr_fn=None: "original"
    for _ in range(20):
        for a, b in zip(ours, theirs, strict=True):
            g = torch.tensor(rng.standard_normal(tuple(a.shape)).astype(np.float32))
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=2e-6)
    exported = opt.to_torch_state_dict()
    moved_params = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    moved = torch.optim.Muon(moved_params)
    moved.load_state_dict(exported)
    for i, p in enumerate(ours):
        torch.testing.assert_close(
            moved.state_dict()["state"][i]["momentum_buffer"], opt.state[p]["momentum_buffer"]
        )
    assert type(moved.param_groups[0]["ns_steps"]) is int  # torch's range(ns_steps)
    for p in moved_params:
        p.grad = torch.ones_like(p)
    moved.step()  # torch runs what was exported
    back = Muon([torch.nn.Parameter(p.detach().clone()) for p in theirs], lr=0.02)
    back.load_torch_state_dict(ref.state_dict())
    assert back.param_groups[0]["nesterov"] is False
    assert back.param_groups[0]["adjust_lr_fn"] is None  # torch's None, kept: "original"


def test_adjust_lr_fn_none_is_original_as_in_torch() -> None:
    """torch.optim.Muon's adjust_lr_fn defaults to None and scales as "original" then
    (torch/optim/_muon.py, _adjust_lr); the spec says so (``none="original"``): the NumPy
    module, the Triton path and the torch class take None, and a torch state_dict with it
    loads; any other value is refused naming the choices."""
    rng = np.random.default_rng(5)
    w, g = (rng.standard_normal((6, 4)).astype(np.float32) for _ in range(2))
    runs = {}
    for setting in ("original", None, "match_rms_adamw"):
        ours = w.copy()
        muon.step(ours, g.copy(), muon.init_state(ours), 1, lr=0.05, adjust_lr_fn=setting)
        theirs = torch.tensor(w)
        tmuon.step(
            theirs, torch.tensor(g), tmuon.init_state(theirs), 1, lr=0.05, adjust_lr_fn=setting
        )
        np.testing.assert_allclose(theirs.numpy(), ours, rtol=0, atol=1e-6)
        runs[setting] = ours
    np.testing.assert_array_equal(runs[None], runs["original"])
    assert np.abs(runs["match_rms_adamw"] - runs["original"]).max() > 0.01
    with pytest.raises(ValueError, match=r"adjust_lr_fn='sqrt' is not one of .* or None"):
        muon.step(w, g, muon.init_state(w), 1, adjust_lr_fn="sqrt")
    from generated.torch import Muon

    p = torch.nn.Parameter(torch.tensor(w))
    ref = torch.optim.Muon([p], lr=0.02)
    p.grad = torch.tensor(g)
    ref.step()
    ours = Muon([torch.nn.Parameter(torch.tensor(w))], lr=0.02, adjust_lr_fn="match_rms_adamw")
    ours.load_torch_state_dict(ref.state_dict())
    assert ours.param_groups[0]["adjust_lr_fn"] is None
    assert ours.to_torch_state_dict()["param_groups"][0]["adjust_lr_fn"] is None


def test_a_non_matrix_parameter_is_refused_when_added_as_torch_does() -> None:
    """torch.optim.Muon refuses a parameter that is not 2-D at construction; so does ours, and
    add_param_group leaves the optimizer as it was."""
    from generated.torch import Muon

    bias = torch.nn.Parameter(torch.ones(5))
    with pytest.raises(ValueError, match="Muon only supports 2D parameters"):
        torch.optim.Muon([bias])
    with pytest.raises(ValueError, match=r"muon: the weight must be a 2-D matrix.*\(5,\)"):
        Muon([bias])
    opt = Muon([torch.nn.Parameter(torch.ones(3, 2))])
    with pytest.raises(ValueError, match=r"2-D matrix.*\(2, 3, 4\)"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2, 3, 4))]})
    assert len(opt.param_groups) == 1


def test_the_gpu_kernels_compile_ahead_of_time_for_sm80_and_sm90() -> None:
    """``python -m tools.aot muon``: every generated kernel, fp32/bf16/fp16 weights, IEEE
    division (the PTX check of tools/aot.py) - without a GPU."""
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run(
        [sys.executable, "-m", "tools.aot", "--json", "muon"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(done.stdout)
    kernels = {r["kernel"] for r in rows}
    # the weight's update is made by the writes' kernel with the new momentum (in place)
    assert kernels == {"muon_segment0_kernel", "muon_segment1_kernel", "muon_commit_kernel"}
    # kernels x archs x weight dtypes x (un)aligned variants, and the writes' kernel's
    # bf16-master and fp16-master variants (it writes the parameter from its master)
    assert len(rows) == 3 * 2 * 3 * 2 + 2 * 2 * 2
    # the writes' kernel: gradient, momentum, weight and the iteration's result read, momentum
    # and weight written in place (fp32: 6 x 4 bytes; a bf16 weight and gradient: 2 bytes each;
    # a float32 master with a bf16 gradient, its bf16 parameter written: 24 bytes)
    commit = {(r["weight"], r["variant"]): r for r in rows if r["kernel"] == "muon_commit_kernel"}
    for weight, size in (("fp32", 24), ("bf16", 18), ("fp16", 18), ("bf16-master", 24)):
        for variant in ("aligned", "unaligned"):
            row = commit[weight, variant]
            assert row["bytes_per_element"] == row["min_bytes_per_element"] == size, row


def test_the_drop_in_takes_ns_dtype_and_keeps_torchs_state_dict() -> None:
    """``optim.Muon(..., ns_dtype="bfloat16")``: torch's signature plus the keyword-only setting
    torch lacks; it iterates in bfloat16 (within the bound of torch's own bfloat16 Muon, and not
    the float32 drop-in's weights); given, the groups and the state_dict hold it besides
    torch's keys, and a checkpoint loaded takes the saved value; at its default neither does
    (torch's keys alone, as torch.distributed.checkpoint's flattened load needs)."""
    from generated.torch import optim

    torch.manual_seed(0)
    weights = [torch.randn(24, 40), torch.randn(40, 16)]
    runs = {}
    for label, make in (
        ("bf16", lambda ps: optim.Muon(ps, lr=0.02, ns_dtype="bfloat16")),
        ("f32", lambda ps: optim.Muon(ps, lr=0.02)),
        ("torch", lambda ps: torch.optim.Muon(ps, lr=0.02)),
    ):
        ps = [torch.nn.Parameter(w.clone()) for w in weights]
        opt = make(ps)
        gen = torch.Generator().manual_seed(1)
        for _ in range(10):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        runs[label] = (ps, opt)
    for i, w in enumerate(weights):
        moved = (runs["torch"][0][i] - w).abs().max().item()
        assert (runs["bf16"][0][i] - runs["torch"][0][i]).abs().max().item() <= 0.03 * moved
        assert (runs["bf16"][0][i] - runs["f32"][0][i]).abs().max().item() > 1e-4 * moved
    ours = runs["bf16"][1]
    assert ours.param_groups[0]["ns_dtype"] == "bfloat16"
    saved = ours.state_dict()
    torchs = runs["torch"][1].state_dict()["param_groups"][0].keys()
    assert saved["param_groups"][0]["ns_dtype"] == "bfloat16"
    assert saved["param_groups"][0].keys() - {"ns_dtype"} == torchs
    again = optim.Muon([torch.nn.Parameter(w.clone()) for w in weights])
    again.load_state_dict(saved)
    assert again.param_groups[0]["ns_dtype"] == "bfloat16"
    plain = runs["f32"][1]
    assert "ns_dtype" not in plain.param_groups[0]
    assert plain.state_dict()["param_groups"][0].keys() == torchs
    with pytest.raises(ValueError, match="ns_dtype"):
        optim.Muon([torch.nn.Parameter(weights[0].clone())], ns_dtype="float8")
