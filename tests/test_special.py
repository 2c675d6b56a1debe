"""Special cases (``Rule.special_case``): hyperparameter values substituted exactly, so what they
make vanish is not computed (codegen/variants.py).

SGD at its defaults (``sgd``: wd = 0, rescale_grad = 1; ``torch_sgd``: momentum = 0,
weight_decay = 0, maximize = False) runs ``w - lr * g``: one multiply and one add per element
where the whole update computes five, and what MXNet's and torch's code give there for every
weight, an infinite one included (the whole update's ``w - lr*wd*w`` is inf - inf = NaN there).
The references are independent: MXNet's ``sgd_update`` formula as its kernel writes it,
evaluated in float32 NumPy, and torch.optim.SGD. Malformed declarations are refused naming
the spec file and line.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RULES
from test_spec_errors import write_spec

from codegen.generate import generate_all
from codegen.load import SPECS_DIR, load_rule
from codegen.lower import lower
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
def test_the_torch_class_switches_in_and_out_of_the_special_case(backend: str) -> None:
    """weight_decay 0 -> 0.1 -> 0 between steps (the fast step's plan kept): each step as
    torch.optim.SGD computes it, the infinite weight included."""
    from generated.torch import TorchSGD

    ours = torch.nn.Parameter(torch.tensor(WEIGHTS[3:]))
    theirs = torch.nn.Parameter(torch.tensor(WEIGHTS[3:]))
    opt = TorchSGD([ours], lr=LR, backend=backend)
    ref = torch.optim.SGD([theirs], lr=LR, foreach=False)
    for k, wd in enumerate([0.0, 0.0, 0.1, 0.0, 0.0]):
        for o in (opt, ref):
            o.param_groups[0]["weight_decay"] = wd
        grad = torch.tensor(GRADS[3:]) * (k + 1)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        opt.step()
        ref.step()
        np.testing.assert_allclose(ours.detach(), theirs.detach(), rtol=4 * 2**-23, atol=0)


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
        (special,) = special_variants(RULES[name])
        assert special.name == f"{name}_plain"
        assert lower(special).op_counts() == counts
        if whole is not None:
            assert lower(RULES[name]).op_counts() == whole


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
        r"specs/bad.py:12: special_case 'a': state 'm' is absent at wd = 0 \(absent_when\)",
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
    absent_when's values has no such state; one excluding them keeps it."""
    path = write_spec(
        tmp_path,
        "m = RULE.state('m', absent_when={mx.wd: 0})\n"
        "RULE.update(m, mx.wd * m + RULE.grad)\nRULE.update(w, w - mx.lr * mx.wd * m)\n"
        "RULE.special_case('a', {mx.wd: 0, mx.rescale_grad: 1}, doc='x')\n"
        "RULE.special_case('b', {mx.wd: 1}, doc='x')",
    )
    a, b = special_variants(load_rule(path))
    assert (a.name, list(a.states), b.name, list(b.states)) == ("bad_a", [], "bad_b", ["m"])


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
