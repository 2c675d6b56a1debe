"""AdaMuon (specs/adamuon.py): the second rule with matrix equations, written without a change to
codegen/ (the proof that the matrix extension is general).

References, none of them the generator's own output:
- ``pytorch_optimizer.AdaMuon`` (pytorch-optimizer 4.1.0, a ``use_muon=True`` group) with its
  Newton-Schulz iteration run in the weight's dtype (its own ``zero_power_via_newton_schulz_5``
  with ``dtype=float32``/``float64`` instead of its bfloat16 default): the NumPy module (25 steps)
  and the torch class (20 steps, a checkpoint) agree on square, tall, wide and 1 x n weights to a
  few ulps;
- the unpatched reference (Newton-Schulz on bfloat16 operands): its difference from our float32
  iteration, and from ours at ``ns_dtype="bfloat16"``, is bounded relative to how far the
  weight moved;
- the spec's equations at 40 digits (tests/matrix_reference.py) vs the NumPy module in float64;
- the GPU path (Triton kernels under the interpreter, torch.matmul) vs NumPy.

``python tests/test_adamuon.py`` prints the measured errors.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import pytorch_optimizer.optimizer.muon.adamuon as reference_module
import torch
from matrix_reference import as_float, mp_array, reference_step
from pytorch_optimizer import AdaMuon as Reference
from reference import resolved

from codegen import matrix, matrix_targets
from codegen.load import SPECS_DIR, load_rule

adamuon = importlib.import_module("generated.numpy.adamuon")
tadamuon = importlib.import_module("generated.triton.adamuon")
RULE = load_rule(SPECS_DIR / "adamuon.py")
SHAPES = [(8, 8), (12, 5), (5, 12), (1, 7)]
SETTINGS = [
    {},
    {"lr": 0.05, "wd": 0.1},
    {"wd": 0.1, "weight_decouple": False, "use_adjusted_lr": False, "ns_steps": 3},
    {"beta1": 0.5, "beta2": 0.8, "epsilon": 1e-3, "ns_a": 2.0, "ns_b": -1.5, "ns_c": 0.5},
]
SETTING_IDS = ["default", "wd", "coupled_jordan_ns3", "betas_eps_coeffs"]
NEWTON_SCHULZ = reference_module.zero_power_via_newton_schulz_5
STEPS = 25


def reference_kwargs(hp: dict) -> dict:
    """pytorch_optimizer.AdaMuon's keywords for our hyperparameters (defaults filled in)."""
    full = {**adamuon.HYPERPARAMS, **hp}
    return {
        "lr": full["lr"],
        "betas": (full["beta1"], full["beta2"]),
        "weight_decay": full["wd"],
        "weight_decouple": bool(full["weight_decouple"]),
        "eps": full["epsilon"],
        "ns_steps": int(full["ns_steps"]),
        "ns_coeffs": (full["ns_a"], full["ns_b"], full["ns_c"]),
        "use_adjusted_lr": bool(full["use_adjusted_lr"]),
    }


def reference(params: list[torch.Tensor], hp: dict) -> torch.optim.Optimizer:
    return Reference([{"params": params, "use_muon": True}], **reference_kwargs(hp))


def iterate_in(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype) -> None:
    """The reference's own Newton-Schulz, on operands of ``dtype`` instead of bfloat16."""
    monkeypatch.setattr(
        reference_module,
        "zero_power_via_newton_schulz_5",
        functools.partial(NEWTON_SCHULZ, dtype=dtype),
    )


def run_both(shape, hp, steps=STEPS, dtype=np.float32, seed=0, make=reference):
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal(shape).astype(dtype)
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(steps)]
    ours = w0.copy()
    state = adamuon.init_state(ours)
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = make([p], hp)
    for t, g in enumerate(grads, start=1):
        adamuon.step(ours, g.copy(), state, t, **hp)
        p.grad = torch.tensor(g)
        opt.step()
    theirs = {k: v.numpy().reshape(shape) for k, v in opt.state[p].items()}
    return w0, ours, p.detach().numpy(), state, theirs


def ulps(dtype) -> float:
    return float(np.finfo(dtype).eps)


@pytest.mark.parametrize("hp", SETTINGS, ids=SETTING_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_numpy_matches_pytorch_optimizer_adamuon(shape, hp, dtype, monkeypatch) -> None:
    """25 steps; the weights (|w| < 4) to 16 ulps of 1 (measured: at most 2.5 in float32, 3 in
    float64), the second moment to 1e-5 relative in float32 (it divides by the small
    elements of v: the relative error of one element of O doubles in O^2)."""
    iterate_in(monkeypatch, torch.float32 if dtype == np.float32 else torch.float64)
    w0, ours, theirs, state, their_state = run_both(shape, hp, dtype=dtype)
    assert np.abs(ours - w0).max() > 0.05  # it moved: 100000 times the bound in float32
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=16 * ulps(dtype))
    np.testing.assert_allclose(state["m"], their_state["m"], rtol=0, atol=16 * ulps(dtype))
    v_bound = (1e-5 if dtype == np.float32 else 1e-13) * np.abs(their_state["v"]).max()
    np.testing.assert_allclose(state["v"], their_state["v"], rtol=0, atol=v_bound)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_the_reference_bfloat16_iteration_is_within_a_bound_of_ours(shape) -> None:
    """The reference iterates on bfloat16 operands (8 bits of mantissa); ours on float32. Over 20
    steps the weights differ by at most 15% of how far they moved (measured: 9.5% on 8 x 8, at most
    1.4% on the others; AdaMuon divides each element of O by its own sqrt(v), which keeps each
    element's relative error where Muon's common scale averages it)."""
    w0, ours, theirs, _, _ = run_both(shape, {}, steps=20)
    moved = np.abs(ours - w0).max()
    diff = np.abs(ours - theirs).max()
    assert 0 < diff <= 0.15 * moved, (diff, moved)


@pytest.mark.parametrize("shape", SHAPES + [(64, 96)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_our_bfloat16_iteration_is_within_the_same_bound_of_the_references(shape) -> None:
    """``ns_dtype="bfloat16"``: both iterate in bfloat16, holding the same values but the start
    (the reference rounds the momentum before normalising it). Measured 0.3-9.1% of the
    movement (float32: 0.3-9.4%): the start's rounding, amplified per element as above."""
    w0, ours, theirs, _, _ = run_both(shape, {"ns_dtype": "bfloat16"}, steps=20)
    moved = np.abs(ours - w0).max()
    assert 0 < np.abs(ours - theirs).max() <= 0.15 * moved
    _, ours32, _, _, _ = run_both(shape, {}, steps=20)
    assert np.abs(ours - ours32).max() > 1e-4 * moved  # the option changed the iteration


def test_the_comparison_catches_a_learning_rate_off_by_a_hundredth_of_a_percent(
    monkeypatch,
) -> None:
    """Test the tester: the reference at 1.0001 times our rate fails the float32 bound."""
    iterate_in(monkeypatch, torch.float32)

    def faster(params, hp):
        return reference(params, {**hp, "lr": 1.0001 * adamuon.HYPERPARAMS["lr"]})

    _, ours, theirs, _, _ = run_both((8, 8), {}, make=faster)
    assert np.abs(ours - theirs).max() > 16 * ulps(np.float32)


# ------------------------------------------------------------------------ 40-digit equations
@pytest.mark.parametrize("shape", [(3, 4), (4, 2), (1, 3)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("hp", SETTINGS[1:3], ids=SETTING_IDS[1:3])
def test_numpy_float64_matches_the_equations_at_40_digits(shape, hp) -> None:
    rng = np.random.default_rng(1)
    hp = {**adamuon.HYPERPARAMS, "ns_steps": 3, **hp}
    numbers = resolved(RULE, hp)  # a choice as its index
    weight = rng.standard_normal(shape)
    state = adamuon.init_state(weight.copy())
    ref_w = mp_array(weight)
    ref_state = {name: mp_array(np.zeros(shape)) for name in adamuon.STATES}
    ours = weight.copy()
    for t in range(1, 4):
        g = rng.standard_normal(shape)
        adamuon.step(ours, g.copy(), state, t, **hp)
        ref_w, ref_state = reference_step(RULE, ref_w, g.tolist(), ref_state, t, numbers)
        np.testing.assert_allclose(ours, np.array(as_float(ref_w)), rtol=1e-12, atol=1e-13)
        for name in adamuon.STATES:
            want = np.array(as_float(ref_state[name]))
            np.testing.assert_allclose(
                state[name], want, rtol=1e-11, atol=1e-14 * np.abs(want).max()
            )


# ---------------------------------------------------------------------------------- GPU path
@pytest.mark.parametrize("shape", SHAPES + [(40, 33)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_triton_path_matches_numpy(shape) -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal(shape).astype(np.float32)
    ours, theirs = w.copy(), torch.tensor(w)
    s_np, s_tr = adamuon.init_state(ours), tadamuon.init_state(theirs)
    hp = {"lr": 0.05, "wd": 0.1, "weight_decouple": False}
    for t in range(1, 6):
        g = rng.standard_normal(shape).astype(np.float32)
        adamuon.step(ours, g, s_np, t, **hp)
        tadamuon.step(theirs, torch.tensor(g), s_tr, t, **hp)
    # the same float32 ops, except matmul's summation order (NumPy's BLAS vs torch's)
    assert np.abs(ours - w).max() > 0.02  # 10000 times the bound
    np.testing.assert_allclose(theirs.numpy(), ours, rtol=0, atol=2e-6)
    for name in adamuon.STATES:
        scale = np.abs(s_np[name]).max()
        np.testing.assert_allclose(s_tr[name].numpy(), s_np[name], rtol=0, atol=1e-5 * scale)


def test_step_multi_is_step_on_each() -> None:
    rng = np.random.default_rng(3)
    ws = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    gs = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    one, many = [w.copy() for w in ws], [w.copy() for w in ws]
    s1, s2 = [adamuon.init_state(w) for w in one], [adamuon.init_state(w) for w in many]
    for w, g, s in zip(one, gs, s1, strict=True):
        adamuon.step(w, g, s, 2)
    assert adamuon.step_multi(many, gs, s2, 2) == len(SHAPES)
    for a, b in zip(one, many, strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("shape", [(7,), (), (2, 3, 4)])
def test_a_weight_that_is_not_a_matrix_is_refused_before_anything_is_written(shape) -> None:
    """The reference flattens 3-D+ weights and gives 1-D ones to its AdamW branch; optgen
    refuses them (see the spec's docstring), in every path, before writing anything."""
    w = np.ones(shape, np.float32)
    with pytest.raises(ValueError, match=r"adamuon: the weight must be a 2-D matrix"):
        adamuon.init_state(w)
    state = {name: np.zeros(shape, np.float32) for name in adamuon.STATES}
    with pytest.raises(ValueError, match=r"2-D matrix.*shape " + re.escape(repr(shape))):
        adamuon.step(w, np.ones(shape, np.float32), state, 1)
    assert (w == 1).all() and not any(s.any() for s in state.values())
    tw = torch.ones(shape)
    with pytest.raises(ValueError, match="2-D matrix"):
        tadamuon.step(tw, torch.ones(shape), {n: torch.zeros(shape) for n in adamuon.STATES}, 1)
    assert bool((tw == 1).all())


# ------------------------------------------------------------------------------- the lowering
def test_the_iteration_is_muons_and_the_op_counts_are_pinned() -> None:
    """The same Newton-Schulz step as Muon's (3 products, equivariant, so the cheaper
    orientation), then AdaMuon's per-element second moment and two norms; the counts against
    tests/goldens/op_counts.json (``python -m tools.op_counts --write``)."""
    (it,) = matrix.iterations(RULE)
    assert matrix.op_counts(it) == {"mscale": 3, "transpose": 1, "matmul": 3, "madd": 2}
    assert it.equivariant
    golden = json.loads((Path(__file__).parent / "goldens" / "op_counts.json").read_text())
    assert matrix_targets.op_counts(RULE) == golden["adamuon"]
    assert sorted(r.name for r in RULE.reductions) == ["U_norm", "m_norm"]


# ------------------------------------------------------------------------------ torch class
def test_torch_class_matches_the_reference_and_round_trips_its_state(monkeypatch) -> None:
    """``generated.torch.AdaMuon`` (CPU: the NumPy module) vs the reference (float32
    Newton-Schulz) over 20 steps on two matrices, with a checkpoint taken at step 10 and loaded
    into a fresh instance that finishes the run."""
    from generated.torch import AdaMuon

    iterate_in(monkeypatch, torch.float32)
    hp = {"lr": 0.03, "wd": 0.05}
    rng = np.random.default_rng(4)
    w0 = [rng.standard_normal(s).astype(np.float32) for s in [(6, 4), (3, 9)]]
    ours = [torch.nn.Parameter(torch.tensor(w)) for w in w0]
    theirs = [torch.nn.Parameter(torch.tensor(w)) for w in w0]
    opt = AdaMuon(ours, **hp)
    ref = reference(theirs, hp)
    for i in range(20):
        if i == 10:
            saved = opt.state_dict()
            ours = [torch.nn.Parameter(p.detach().clone()) for p in ours]
            opt = AdaMuon(ours, **hp)
            opt.load_state_dict(saved)
        for a, b in zip(ours, theirs, strict=True):
            g = torch.tensor(rng.standard_normal(tuple(a.shape)).astype(np.float32))
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    for a, b, start in zip(ours, theirs, w0, strict=True):
        assert (a.detach() - torch.tensor(start)).abs().max() > 0.05
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=16 * ulps(np.float32))
        v_bound = 1e-5 * float(ref.state[b]["v"].abs().max())
        torch.testing.assert_close(
            opt.state[a]["v"].reshape(-1), ref.state[b]["v"], rtol=0, atol=v_bound
        )
    bias = torch.nn.Parameter(torch.ones(5))
    bias.grad = torch.ones(5)
    with pytest.raises(ValueError, match="2-D matrix"):
        AdaMuon([bias]).step()
    assert bool((bias == 1).all())


def _measure() -> None:
    """The errors against the reference (max |ours - theirs| over the final weights), 25 steps."""
    with pytest.MonkeyPatch.context() as mp:
        for dtype, tdtype in [(np.float32, torch.float32), (np.float64, torch.float64)]:
            iterate_in(mp, tdtype)
            worst = max(
                np.abs(o - t).max() / ulps(dtype)
                for hp in SETTINGS
                for shape in SHAPES
                for _, o, t, _, _ in [run_both(shape, hp, dtype=dtype)]
            )
            print(f"{np.dtype(dtype).name}: worst |ours - reference| = {worst:.1f} eps")
        mp.undo()
        for shape in SHAPES:
            w0, o, t, _, _ = run_both(shape, {}, steps=20)
            moved = np.abs(o - w0).max()
            print(f"bfloat16 reference {shape}: {np.abs(o - t).max() / moved:.2%} of the movement")


if __name__ == "__main__":
    _measure()
