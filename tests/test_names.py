"""The name registry (codegen/names.py): every identifier in generated code is a name the spec
declared or one the registry hands out, and a spec cannot declare a registered name."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ALL_RULES, RULES, temporary_rule

from codegen import names
from codegen.generate import GENERATED_DIR
from codegen.load import load_rule
from codegen.spec import SpecError

FILES = sorted(GENERATED_DIR.rglob("*.py"))
BUFFERS = {"weight", "grad"}


def identifiers(source: str) -> set[str]:
    """Every name a module binds or reads, its parameters, functions, imports and keywords."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.arg):
            found.add(node.arg)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            found.add(node.name)
        elif isinstance(node, ast.alias):
            found.add(node.asname or node.name.split(".")[0])
        elif isinstance(node, ast.keyword) and node.arg:
            found.add(node.arg)
    return found


def unregistered(source: str, spec_names: set[str]) -> list[str]:
    return sorted(i for i in identifiers(source) if not names.registered(i, spec_names))


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(GENERATED_DIR)) for p in FILES])
def test_every_generated_identifier_is_declared_or_registered(path: Path) -> None:
    rule = ALL_RULES.get(path.stem)
    declared = rule.spec_names if rule else set().union(*(r.spec_names for r in ALL_RULES.values()))
    assert unregistered(path.read_text(), declared | BUFFERS) == []


def called_names(source: str) -> set[str]:
    """The names a module calls by name (``f(...)``, not ``x.f(...)``)."""
    return {
        node.func.id
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(GENERATED_DIR)))
def test_no_generated_module_calls_a_builtin_a_spec_may_name(path: Path) -> None:
    """``names.UNCALLED_BUILTINS`` (``sum``: torch_adagrad's state) may be a spec's names only
    while no generated module calls the builtin, which such a local would shadow."""
    assert not called_names(path.read_text()) & names.UNCALLED_BUILTINS


def test_the_builtin_call_check_sees_a_call() -> None:
    assert called_names("def f(x):\n    return sum(x) + y.sum()\n") == {"sum"}


def test_the_identifier_check_catches_an_unregistered_name() -> None:
    """Test the tester: a template local that nobody registered is reported."""
    source = (GENERATED_DIR / "triton" / "adam.py").read_text()
    assert "    hp = resolve" in source
    mutated = source.replace("    hp = resolve", "    settings = resolve", 1)
    assert unregistered(mutated, RULES["adam"].spec_names | BUFFERS) == ["settings"]


SPEC = '''"""Probe rule for the name registry."""
import sympy as sp
from codegen.spec import Rule, positive
RULE = Rule("probe", __doc__)
lr = RULE.hyper("lr", 0.1, positive())
{extra}
'''
DECLARE = {
    "state": 'x = RULE.state("{name}", 0)\nRULE.update(x, 0.5 * x + RULE.grad)\n'
    "RULE.update(RULE.weight, RULE.weight - lr * RULE.new(x))",
    "hyper": 'h = RULE.hyper("{name}", 0.5)\n'
    "RULE.update(RULE.weight, RULE.weight - lr * h * RULE.grad)",
    "let": 'u = RULE.let("{name}", 2 * RULE.grad)\nRULE.update(RULE.weight, RULE.weight - lr * u)',
}
TAKEN = [
    "key", "amp", "tensor", "weights", "grads", "states", "stream_ids", "scalars", "meta",
    "partial", "found_inf", "inv_scale", "offs", "mask", "pid", "hp", "buffers", "BLOCK_SIZE",
    "AMP", "np", "tl", "math", "sums", "host", "update", "mean_like", "x_ptr", "x_new", "x_flat",
    "probe_kernel", "lr2_kernel_body", "_private", "HYPERPARAMS", "step_multi", "len",
]  # fmt: skip


def spec_file(tmp_path: Path, kind: str, name: str) -> Path:
    path = tmp_path / "probe.py"
    path.write_text(SPEC.format(extra=DECLARE[kind].format(name=name)))
    return path


@pytest.mark.parametrize("kind", sorted(DECLARE))
@pytest.mark.parametrize("name", TAKEN)
def test_a_registered_name_is_refused_naming_the_file_and_the_symbol(
    tmp_path: Path, kind: str, name: str
) -> None:
    with pytest.raises(SpecError) as error:
        load_rule(spec_file(tmp_path, kind, name))
    message = str(error.value)
    assert "probe.py" in message and repr(name) in message, message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["\u00b5", "\ufb01t", "\u210cx"])  # µ, the ﬁ ligature, ℌx
def test_a_name_unicode_normalisation_changes_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(SpecError, match="Unicode normalisation"):
        load_rule(spec_file(tmp_path, "hyper", name))


FREE_SPEC = '''"""Names next to registered ones that a spec may take: they work on every target."""
import sympy as sp
from codegen.spec import Rule, positive
RULE = Rule("freenames", __doc__)
lr = RULE.hyper("lr", 0.1, positive())
k = RULE.hyper("k", 0.5)
s = RULE.hyper("s", 0.25)
keys = RULE.state("keys", 0)
tensors = RULE.state("tensors", 1)
x = RULE.let("x", k * RULE.grad)
meta_data = RULE.let("meta_data", sp.sqrt(RULE.grad * RULE.grad + s))
keys_new = RULE.update(keys, 0.5 * keys + x)
tensors_new = RULE.update(tensors, tensors * s + meta_data)
RULE.update(RULE.weight, RULE.weight - lr * keys_new / tensors_new)
'''


@pytest.fixture(scope="module")
def freenames(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("freenames")
    with temporary_rule(root, "freenames", FREE_SPEC):
        yield root / "out"


def test_names_next_to_registered_ones_work_on_every_target(freenames: Path) -> None:
    """``k``, ``s``, ``keys``, ``tensors``, ``x``, ``meta_data``: NumPy and Triton agree."""
    rule = load_rule(freenames.parent / "specs" / "freenames.py")
    for path in freenames.rglob("freenames.py"):
        assert unregistered(path.read_text(), rule.spec_names | BUFFERS) == []
    kernel = (freenames / "triton" / "freenames.py").read_text()
    assert "    x = " in kernel and "meta_data = " in kernel  # the lets, by name
    numpy_module = importlib.import_module("generated.numpy.freenames")
    triton_module = importlib.import_module("generated.triton.freenames")
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(3000).astype(np.float32)
    w, wt = w0.copy(), torch.from_numpy(w0.copy())
    state, state_t = numpy_module.init_state(w), triton_module.init_state(wt)
    for t in range(1, 4):
        g = rng.standard_normal(3000).astype(np.float32)
        numpy_module.step(w, g, state, t, k=0.7, s=0.3)
        triton_module.step(wt, torch.from_numpy(g), state_t, t, k=0.7, s=0.3)
    np.testing.assert_allclose(wt.numpy(), w, rtol=2e-6, atol=1e-7)
    assert not np.array_equal(w, w0)


@pytest.mark.parametrize("rule", sorted(RULES))  # (matrix rules keep no SCALARS)
def test_scalar_legends_use_the_specs_function_names(rule: str) -> None:
    """A kernel scalar's legend (``SCALARS``, quoted by every refusal of its value) is in the
    spec's terms: ``f32(lr)``, ``Max(...)``, not the runtime helpers the host code calls
    (``host_f32``, ``host_max``, ``host_min``), which a spec author never wrote."""
    module = importlib.import_module(f"generated.rules.{rule}")
    for name, legend in module.SCALARS.items():
        for helper in ("host_f32", "host_max", "host_min"):
            assert helper not in legend, (name, legend)
