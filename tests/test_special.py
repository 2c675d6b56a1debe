"""Special cases (``Rule.special_case``): hyperparameter values substituted exactly, so what they
make vanish is not computed (codegen/variants.py).

SGD at its defaults (``sgd``: wd = 0, rescale_grad = 1; ``torch_sgd``: momentum = 0,
weight_decay = 0) runs ``w - lr * g``: one multiply and one add per element where the whole
update computes five, and what MXNet's and torch's code give there for every weight, an
infinite one included (the whole update's ``w - lr*wd*w`` is inf - inf = NaN there). Every
torch_* rule with weight decay runs without it at weight_decay = 0 (``no_decay``), as torch
skips it there: an infinite weight keeps its value where ``g + 0*w`` would be NaN. The
references are independent: MXNet's ``sgd_update`` formula as its kernel writes it, evaluated
in float32 NumPy, and torch.optim's classes. Malformed declarations are refused naming the spec
file and line.
"""

from __future__ import annotations

import importlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
import torch
from conftest import RULES, ulp
from test_spec_errors import write_spec

import generated.torch.optim as dropin
from codegen.generate import generate_all
from codegen.load import SPECS_DIR, load_rule
from codegen.lower import lower, reconstruct
from codegen.spec import SpecError
from codegen.variants import special_variants

TARGETS = ("numpy", "numba", "triton")
# every kind of weight: infinities, NaN, signed zeros, subnormal, huge, ordinary
WEIGHTS = np.array([np.inf, -np.inf, np.nan, -0.0, 0.0, 1e-45, 3e38, -1.5, 0.1], np.float32)
GRADS = np.array([1.0, -2.0, 0.5, 0.0, -0.0, 1.0, -1e38, 2.0, 0.25], np.float32)
LR = 0.1


def bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, np.float32).view(np.uint32)


def mxnet_sgd_update(w: np.ndarray, g: np.ndarray, lr: float, wd: float) -> np.ndarray:
    """MXNet 1.9.1's ``sgd_update`` kernel without clipping, in float32 as it computes:
    ``(1 - lr*wd) * w - lr * (rescale_grad * g)`` (../shared/reference/mxnet_rules.md, 2.1)."""
    f = np.float32
    with np.errstate(all="ignore"):
        return (f(1) - f(lr) * f(wd)) * w - f(lr) * (f(1) * g)


def step(target: str, rule: str, w: np.ndarray, **hp: float) -> np.ndarray:
    module = importlib.import_module(f"generated.{target}.{rule}")
    x = torch.tensor(w) if target == "triton" else w.copy()
    g = torch.tensor(GRADS) if target == "triton" else GRADS.copy()
    module.step(x, g, module.init_state(x, **hp) if target != "triton" else {}, 1, lr=LR, **hp)
    return np.asarray(x)


@pytest.mark.parametrize("target", TARGETS)
def test_sgd_at_its_defaults_is_mxnets_sgd_update_to_the_bit(target: str) -> None:
    """Every weight, infinities and NaN included, gets the bits of MXNet's formula; with weight
    decay the whole update runs (an infinite weight: inf - inf, NaN, where MXNet keeps inf)."""
    got = step(target, "sgd", WEIGHTS)
    np.testing.assert_array_equal(bits(got), bits(mxnet_sgd_update(WEIGHTS, GRADS, LR, 0.0)))
    decayed = step(target, "sgd", WEIGHTS, wd=0.01)
    assert np.isnan(decayed[0]) and np.isnan(decayed[1])  # the whole update's w - lr*wd*w


@pytest.mark.parametrize("target", TARGETS)
def test_torch_sgd_at_its_defaults_is_torchs_sgd(target: str) -> None:
    """Non-finite weights as torch.optim.SGD leaves them; finite ones within an ulp (torch's
    CPU kernel fuses the multiply-add)."""
    param = torch.nn.Parameter(torch.tensor(WEIGHTS))
    param.grad = torch.tensor(GRADS)
    torch.optim.SGD([param], lr=LR, foreach=False).step()
    want = param.detach().numpy()
    got = step(target, "torch_sgd", WEIGHTS)
    finite = np.isfinite(want)
    np.testing.assert_array_equal(bits(got[~finite]), bits(want[~finite]))
    np.testing.assert_allclose(got[finite], want[finite], rtol=2**-23, atol=0)


@pytest.mark.parametrize("backend", ["numpy", "numba", "triton"])
@pytest.mark.parametrize(
    ("name", "kw"), [("SGD", {}), ("SGD", {"momentum": 0.9}), ("Adam", {"amsgrad": True})]
)
def test_the_torch_class_switches_in_and_out_of_the_special_case(
    backend: str, name: str, kw: dict[str, object]
) -> None:
    """weight_decay 0 -> 0.1 -> 0 between steps (the fast step's plan kept): each step as
    torch.optim's class computes it (plain SGD, then the no_decay cases with their states)."""
    ours = torch.nn.Parameter(torch.tensor(WEIGHTS[3:]))
    theirs = torch.nn.Parameter(torch.tensor(WEIGHTS[3:]))
    opt = getattr(dropin, name)([ours], lr=LR, backend=backend, **kw)
    ref = getattr(torch.optim, name)([theirs], lr=LR, foreach=False, **kw)
    for k, wd in enumerate([0.0, 0.0, 0.1, 0.0, 0.0]):
        for o in (opt, ref):
            o.param_groups[0]["weight_decay"] = wd
        grad = torch.tensor(GRADS[3:]) * (k + 1)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        opt.step()
        ref.step()
        # (atol: an ulp at 1, the ordinary weights' scale, for a value that cancelled to ~0)
        np.testing.assert_allclose(ours.detach(), theirs.detach(), rtol=4 * 2**-23, atol=2**-23)


# torch.optim's classes with weight decay (the drop-ins of the torch_* rules, same names), in
# settings that run a different update at weight_decay = 0 (each flag or branch it decides)
NO_DECAY: dict[str, list[dict[str, object]]] = {
    "SGD": [{}, {"maximize": True}, {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True}],
    "Adam": [{}, {"amsgrad": True, "maximize": True}, {"decoupled_weight_decay": True}],
    "AdamW": [{"weight_decay": 0.0}],
    "Adamax": [{}],
    "NAdam": [{}, {"decoupled_weight_decay": True}],
    "RAdam": [{}, {"decoupled_weight_decay": True, "betas": (0.9, 0.5)}],  # rectified at step 3
    "RMSprop": [{}, {"momentum": 0.9, "centered": True}, {"momentum": 0.9}, {"centered": True}],
    "Adagrad": [{}],
    "Adadelta": [{}],
    "ASGD": [{"t0": 2.0}],  # averaging from step 3: ax + (w - ax) * mu, inf - inf in both
}
NO_DECAY_CASES = [(name, kw) for name, settings in NO_DECAY.items() for kw in settings]
# an infinite weight of each sign among ordinary ones (a zero, a tiny one)
INF_WEIGHTS = np.array([np.inf, -np.inf, 1.5, -0.25, 0.0, 3.0, -2.0, 1e-3], np.float32)
NO_DECAY_ULPS = 8  # finite values: torch's operation order rounds differently


def test_every_torch_rule_with_weight_decay_skips_it_at_0() -> None:
    """Each torch_* rule with a weight_decay has the special case ``no_decay`` at 0 (only), and
    its drop-ins are all compared with torch below."""
    rules = [r for n, r in RULES.items() if n.startswith("torch_") and "weight_decay" in r.hypers]
    assert len(rules) == 9
    for rule in rules:
        assert rule.special["no_decay"] == {rule.hypers["weight_decay"].symbol: 0.0}
    assert {d.class_name for r in rules for d in r.drop_ins} == set(NO_DECAY)


@pytest.mark.parametrize("backend", ["numpy", "numba", "triton"])
@pytest.mark.parametrize(("name", "kw"), NO_DECAY_CASES, ids=[f"{n}{k}" for n, k in NO_DECAY_CASES])
def test_at_weight_decay_0_infinite_weights_are_torchs(
    backend: str, name: str, kw: dict[str, object]
) -> None:
    """Four steps of the drop-in and of torch.optim's class (single-tensor path) at
    weight_decay = 0 from weights holding +inf and -inf: weights and per-element states
    non-finite exactly where torch's are, to the bit (NaN where torch's is NaN), the finite ones
    within ``NO_DECAY_ULPS`` ulps of torch's largest."""
    ours = torch.nn.Parameter(torch.tensor(INF_WEIGHTS))
    theirs = torch.nn.Parameter(torch.tensor(INF_WEIGHTS))
    opt = getattr(dropin, name)([ours], backend=backend, **kw)
    ref = getattr(torch.optim, name)([theirs], foreach=False, **kw)
    assert opt.param_groups[0]["weight_decay"] == 0.0
    rng = np.random.default_rng(3)
    for _ in range(4):
        grad = torch.tensor(rng.standard_normal(INF_WEIGHTS.size).astype(np.float32))
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        opt.step()
        ref.step()
    got = {"weight": ours.detach().numpy()}
    want = {"weight": theirs.detach().numpy()}
    for key, value in ref.state[theirs].items():
        if torch.is_tensor(value) and value.shape == theirs.shape:
            got[key] = opt.state_dict()["state"][0][key].numpy()
            want[key] = value.numpy()
    assert list(want["weight"][:2]) == [np.inf, -np.inf]  # torch's: inf - finite
    for key in want:
        finite = np.isfinite(want[key])
        np.testing.assert_array_equal(bits(got[key][~finite]), bits(want[key][~finite]), key)
        scale = ulp(np.abs(want[key][finite]).max(), np.float32)
        np.testing.assert_allclose(
            got[key][finite], want[key][finite], rtol=0, atol=NO_DECAY_ULPS * scale, err_msg=key
        )


@pytest.mark.parametrize("target", TARGETS)
def test_a_special_case_module_refuses_other_values(target: str) -> None:
    """Called directly at another value it refuses, naming the hyperparameter; nothing
    written."""
    module = importlib.import_module(f"generated.{target}.sgd_plain")
    w = torch.tensor(WEIGHTS) if target == "triton" else WEIGHTS.copy()
    g = torch.tensor(GRADS) if target == "triton" else GRADS.copy()
    with pytest.raises(ValueError, match=r"sgd: hyperparameter wd=0.5 is outside .* only 0"):
        module.step(w, g, {}, 1, lr=LR, wd=0.5)
    np.testing.assert_array_equal(bits(np.asarray(w)), bits(WEIGHTS))


def test_the_special_cases_compute_less() -> None:
    """Fewer operations per element than the whole update: SGD's clamps (clip_gradient) and one
    multiply-add are left (tools/op_counts pins both in its golden)."""
    want = {
        "sgd": ({"add": 1, "max": 1, "min": 1, "mul": 1}, {"add": 2, "max": 1, "min": 1, "mul": 3}),
        "torch_sgd": ({"add": 1, "mul": 1}, None),
    }
    for name, (counts, whole) in want.items():
        special = special_variants(RULES[name])[0]
        assert special.name == f"{name}_plain"
        assert lower(special).op_counts() == counts
        if whole is not None:
            assert lower(RULES[name]).op_counts() == whole


def test_no_decay_computes_less() -> None:
    """Each ``no_decay`` case leaves out the decay's multiply-add (torch_sgd's, with momentum,
    and torch_adamax's, which uses the gradient twice, one each; torch_adam's, NAdam's and
    RAdam's decoupled select too) and computes nothing the rule does not (torch_rmsprop's case
    had one division more until its weight's (-lr * g) / avg became a quotient of its own in
    both, as torch's addcdiv_: 2026-12-06)."""
    for name, rule in RULES.items():
        if "no_decay" not in rule.special:
            continue
        (case,) = [v for v in special_variants(rule) if v.name == f"{name}_no_decay"]
        less = Counter(lower(rule).op_counts())
        less.subtract(lower(case).op_counts())
        assert not -less and less["add"] >= 1 and less["mul"] >= 1, name


def test_no_decay_leaves_no_trace_of_the_decay() -> None:
    """The outputs rebuilt from the ops of each ``no_decay`` case: neither weight_decay nor
    decoupled_weight_decay enter them (both forms vanish, on the host too), the new weight is
    the weight plus what does not depend on it (no ``0*w``, no ``(1 - lr*0)*w``; ASGD's own
    ``(1 - lambd*eta)*w`` stays), and no state reads the weight (ASGD's average: the new one)."""
    for name, rule in RULES.items():
        if "no_decay" not in rule.special:
            continue
        (case,) = [v for v in special_variants(rule) if v.name == f"{name}_no_decay"]
        rebuilt = reconstruct(lower(case))
        hypers = {h.symbol for n, h in rule.hypers.items() if "weight_decay" in n}
        assert hypers and not hypers & set().union(*(e.free_symbols for e in rebuilt.values()))
        w = rule.weight
        for new, expr in rebuilt.items():
            if name == "torch_asgd":
                continue
            slope = sp.diff(expr, w)
            assert slope == (1 if new == rule.weight_new else 0), (name, new, slope)


CASES = {
    "not a hyperparameter": (
        "RULE.update(w, w - mx.lr * RULE.grad)\nRULE.special_case('plain', {RULE.t: 1}, doc='x')",
        r"specs/bad.py:10: special_case 'plain' names t, which is not a hyperparameter",
    ),
    "illegal value": (
        "RULE.update(w, w - mx.lr * RULE.grad)\nRULE.special_case('plain', {mx.wd: -1}, doc='x')",
        r"specs/bad.py:10: special_case 'plain' wd=-1 is outside its legal values",
    ),
    "bad name": (
        "RULE.update(w, w - mx.lr * RULE.grad)\nRULE.special_case('No', {mx.wd: 0}, doc='x')",
        r"specs/bad.py:10: special_case 'No': the name must be a lower-case identifier",
    ),
    "twice": (
        "RULE.update(w, w - mx.lr * RULE.grad)\nRULE.special_case('a', {mx.wd: 0}, doc='x')\n"
        "RULE.special_case('a', {mx.wd: 1}, doc='x')",
        r"specs/bad.py:11: special_case 'a' is declared twice",
    ),
    "same values": (
        "RULE.update(w, w - mx.lr * RULE.grad)\nRULE.special_case('a', {mx.wd: 0}, doc='x')\n"
        "RULE.special_case('b', {mx.wd: 0}, doc='x')",
        r"specs/bad.py:11: special_case 'b' has the values of special case 'a'",
    ),
    "a multi-line doc": (
        "RULE.update(w, w - mx.lr * RULE.grad)\nRULE.special_case('a', {mx.wd: 0}, doc='x\\ny')",
        r"specs/bad.py:10: the doc of special case 'a' must be one line",
    ),
    "an absent state neither included nor excluded": (
        "m = RULE.state('m', absent_when={mx.wd: 0})\n"
        "RULE.update(m, mx.wd * m + RULE.grad)\nRULE.update(w, w - mx.lr * mx.wd * m)\n"
        "RULE.special_case('a', {mx.rescale_grad: 1}, doc='x')",
        r"specs/bad.py:12: special case 'a' runs at wd = 0, rescale_grad = 1, where state\(s\) "
        r"'m' are absent \(absent_when\), but keeps them",
    ),
    "an absent state declared after a case that would keep it": (
        "RULE.special_case('a', {mx.rescale_grad: 1}, doc='x')\n"
        "m = RULE.state('m', absent_when={mx.wd: 0})\n"
        "RULE.update(m, mx.wd * m + RULE.grad)\nRULE.update(w, w - mx.lr * mx.wd * m)",
        r"specs/bad.py:10: state 'm': special case 'a' runs at wd = 0, rescale_grad = 1, where "
        r"state\(s\) 'm' are absent",
    ),
    "the case that runs where the state is absent declared after": (
        "m = RULE.state('m', absent_when={mx.wd: 0})\n"
        "RULE.update(m, mx.wd * m + RULE.grad)\nRULE.update(w, w - mx.lr * mx.wd * m)\n"
        "RULE.special_case('a', {mx.rescale_grad: 1}, doc='x')\n"
        "RULE.special_case('b', {mx.wd: 0, mx.rescale_grad: 1}, doc='x')",
        r"specs/bad.py:12: special case 'a' runs at wd = 0, .* or follow special cases that",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_special_case_is_refused(tmp_path: Path, case: str) -> None:
    body, message = CASES[case]
    path = write_spec(tmp_path, body)
    with pytest.raises(SpecError, match=message):
        lower(load_rule(path))


def test_a_special_case_drops_the_states_it_makes_absent(tmp_path: Path) -> None:
    """The error cases above fail for their own reason: these load. A special case including an
    absent_when's values has no such state; one excluding them keeps it, and so does one
    after a case with its values and the absent_when's (that one runs where m is absent)."""
    path = write_spec(
        tmp_path,
        "m = RULE.state('m', absent_when={mx.wd: 0})\n"
        "RULE.update(m, mx.wd * m + RULE.grad)\nRULE.update(w, w - mx.lr * mx.wd * m)\n"
        "RULE.special_case('a', {mx.wd: 0, mx.rescale_grad: 1}, doc='x')\n"
        "RULE.special_case('b', {mx.wd: 1}, doc='x')\n"
        "RULE.special_case('c', {mx.rescale_grad: 1}, doc='x')",
    )
    a, b, c = special_variants(load_rule(path))
    assert [(v.name, list(v.states)) for v in (a, b, c)] == [
        ("bad_a", []),
        ("bad_b", ["m"]),
        ("bad_c", ["m"]),
    ]


def test_a_special_case_may_not_overwrite_another_rules_modules(tmp_path: Path) -> None:
    write_spec(
        tmp_path,
        "RULE.update(w, w - mx.lr * RULE.grad)\nRULE.special_case('x', {mx.wd: 0}, doc='x')",
    )
    write_spec(tmp_path, "RULE.update(w, w - mx.lr * RULE.grad)", name="bad_x")
    (tmp_path / "specs" / "bad_x.py").write_text(
        (tmp_path / "specs" / "bad_x.py").read_text().replace('Rule("bad"', 'Rule("bad_x"')
    )
    with pytest.raises(SpecError, match=r"specs/bad.py: its variant's modules 'bad_x' would"):
        generate_all(tmp_path / "specs")


def test_a_matrix_rule_refuses_a_special_case(tmp_path: Path) -> None:
    """Not supported in matrix rules yet: refused naming the spec, nothing generated."""
    specs = tmp_path / "specs"
    specs.mkdir()
    text = (SPECS_DIR / "muon.py").read_text()
    text += "\nRULE.special_case('plain', {RULE.hypers['lr'].symbol: 0.5}, doc='x')\n"
    (specs / "muon.py").write_text(text)
    with pytest.raises(SpecError, match=r"specs/muon.py: special_case is not supported in matrix"):
        generate_all(specs)
