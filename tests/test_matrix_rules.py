"""The generic suites for every rule with matrix equations (codegen/matrix.py: Muon, AdaMuon, and
any spec added later, picked up from ``conftest.MATRIX_RULES``), on 2-D weights.

The rule-parametrized suites (``rule_name`` in conftest) run the per-element rules on 1-D sizes
and per-element kernels; a matrix rule refuses a 1-D weight. Here the same properties are
checked for the matrix rules on matrices (reusing the suites' own checkers where they take a
shape), and :data:`NOT_FOR_MATRIX_RULES` says, module by module, what does not apply and why;
``test_every_generic_suite_is_classified`` keeps that list complete. Each rule's comparison with
its reference optimizer is its own file (tests/test_muon.py, tests/test_adamuon.py).
"""

from __future__ import annotations

import copy
import re
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
from matrix_reference import as_float, mp_array, reference_step
from reference import resolved, sample_hyperparams
from test_triton import lockstep

from generated.torch import RULES as CLASSES
from optgen_runtime import held

SHAPES = [(12, 9), (9, 12), (8, 8), (1, 7)]
SHAPE = (4, 6)

# Generic suites (test modules reading conftest's rule lists) that do not run the matrix rules:
# module -> (why, the tests "file::name" that check what does apply on the matrix rules).
NOT_FOR_MATRIX_RULES: dict[str, tuple[str, list[str]]] = {
    "test_absent.py": ("torch_sgd's absent momentum buffer; matrix rules refuse absent_when", []),
    "test_special.py": (
        "sgd's and the torch_* rules' special cases; matrix rules refuse special_case",
        ["test_special.py::test_a_matrix_rule_refuses_a_special_case"],
    ),
    "test_aot.py": (
        "per-element <rule>_kernel/_multi_kernel names",
        ["test_aot.py::test_no_arguments_compiles_the_matrix_rules_segment_kernels"],
    ),
    "test_extremes.py": (
        "1-D weights; Newton-Schulz with a coefficient of 1e300 overflows by design (a degree-5 "
        "polynomial per step)",
        ["test_matrix_rules.py::test_hyperparameter_errors"],
    ),
    "test_grad_scaler_device.py": ("amp flags on the device: refused by rules with reductions", []),
    "test_input_guards.py": (
        "the torch classes' guards on 1-D parameters",
        ["test_matrix_rules.py::test_torch_class_refuses_a_non_matrix_parameter_before_writing"],
    ),
    "test_kernel_structure.py": (
        "the chunked per-element kernels' structure (multi-tensor launches, masks)",
        ["test_muon.py::test_the_gpu_kernels_compile_ahead_of_time_for_sm80_and_sm90"],
    ),
    "test_lowering.py": (
        "codegen.lower's passes; matrix rules are planned by codegen.matrix_plan.plan",
        [
            "test_muon.py::test_op_counts_are_pinned",
            "test_adamuon.py::test_the_iteration_is_muons_and_the_op_counts_are_pinned",
        ],
    ),
    "test_host_cache.py": (
        "the cached chunk table of the per-element multi-tensor kernels; matrix rules step tensor"
        " by tensor, checking each every step",
        ["test_matrix_rules.py::test_step_multi_checks_every_tensor_before_writing"],
    ),
    "test_mxnet_goldens.py": ("MXNet has no matrix rule", []),
    "test_noise.py": ("a matrix rule draws no noise (matrix_targets refuses draws)", []),
    "test_not_vacuous.py": (
        "reference.spec_trajectory evaluates per-element equations only",
        ["test_matrix_rules.py::test_numpy_float64_matches_the_equations_at_40_digits"],
    ),
    "test_numerics.py": (
        "1-D special values",
        [
            "test_matrix_rules.py::test_zero_gradients_stay_finite",
            "test_matrix_rules.py::test_nan_gradient_propagates_the_same_way",
        ],
    ),
    "test_numpy_api.py": (
        "1-D inputs, chunk memory",
        [
            "test_matrix_rules.py::test_api_shape",
            "test_matrix_rules.py::test_numpy_bad_inputs_raise_before_any_write",
            "test_matrix_rules.py::test_hyperparameter_errors",
            "test_matrix_rules.py::test_dtype_is_preserved",
            "test_matrix_rules.py::test_float32_is_never_promoted_to_float64",
        ],
    ),
    "test_columns.py": (
        "host scalars by columns of per-tensor sums (a matrix rule's host scalars are per matrix, "
        "each range-checked as computed)",
        ["test_matrix_rules.py::test_a_later_weights_refusal_leaves_the_earlier_ones_unwritten"],
    ),
    "test_ops.py": (
        "the per-element ops",
        ["test_muon.py::test_the_matrix_ops_come_from_the_one_table_with_costs"],
    ),
    "test_references.py": (
        "tools/references.py runs 1-D weights",
        ["test_adamuon.py::test_numpy_matches_pytorch_optimizer_adamuon"],
    ),
    "test_symbolic.py": (
        "per-element 40-digit trajectories",
        ["test_matrix_rules.py::test_numpy_float64_matches_the_equations_at_40_digits"],
    ),
    "test_torch_classes.py": (
        "1-D parameters",
        [
            "test_matrix_rules.py::test_torch_class_matches_the_numpy_module",
            "test_matrix_rules.py::test_state_dict_round_trip_is_bit_identical",
        ],
    ),
    "test_torch_optim.py": (
        "the per-element rules' torch.optim peers",
        ["test_muon.py::test_torch_class_matches_torch_muon_and_exchanges_state"],
    ),
    "test_triton.py": (
        "1-D sizes",
        [
            "test_matrix_rules.py::test_triton_matches_numpy_in_lockstep",
            "test_matrix_rules.py::test_triton_matches_numpy_on_every_flag_and_choice",
            "test_matrix_rules.py::test_triton_bad_inputs_raise_before_any_write",
            "test_matrix_rules.py::test_step_multi_checks_every_tensor_before_writing",
            "test_matrix_rules.py::test_an_empty_matrix_is_a_no_op",
        ],
    ),
}
# Generic suites that run every rule, matrix rules included (they read ALL_RULES or every file).
FOR_EVERY_RULE = {
    "test_distributed.py",  # every class on 2-D weights (a sharded matrix rule refused: tested)
    "test_freshness.py",
    "test_layouts.py",  # every class; matrix rules on transposed and sliced 2-D weights
    "test_lr_zero.py",  # every class on a 4 x 6 weight
    "test_names.py",
    "test_numba.py",  # a matrix rule's numba module is an explicit fallback (tested)
    "test_runtime_imports.py",
}


def test_every_generic_suite_is_classified() -> None:
    """A test module that reads conftest's rule lists either runs the matrix rules too or says
    here why not, naming the tests that check on matrices what does apply: each exists."""
    here = Path(__file__).parent
    generic = {
        p.name
        for p in here.glob("test_*.py")
        if p.name != Path(__file__).name
        and re.search(r"\b(RULES|RULE_NAMES|rule_name)\b", p.read_text())
    }
    assert generic - set(NOT_FOR_MATRIX_RULES) - FOR_EVERY_RULE == set()
    assert set(NOT_FOR_MATRIX_RULES) <= generic
    for _, tests in NOT_FOR_MATRIX_RULES.values():
        for test in tests:
            file, name = test.split("::")
            assert f"def {name}(" in (here / file).read_text(), test


def variants(rule) -> list[tuple[str, dict]]:
    """The defaults, every other value of every flag and choice, and a random setting."""
    out = [("defaults", {})]
    for h in rule.hypers.values():
        if h.legal.flag:
            out.append((f"{h.name}={not h.default}", {h.name: not h.default}))
        for choice in h.legal.choices or ():
            if choice != rule.hyperparameter_defaults()[h.name]:
                out.append((f"{h.name}={choice}", {h.name: choice}))
        if h.legal.allow_none and h.legal.choices:  # what None stands for (Muon's adjust_lr_fn)
            out.append((f"{h.name}=None", {h.name: None}))
    out.append(("sampled", sample_hyperparams(rule, np.random.default_rng(5))))
    return out


VARIANTS = [
    pytest.param(name, hp, id=f"{name}-{label}")
    for name in MATRIX_RULE_NAMES
    for label, hp in variants(MATRIX_RULES[name])
]


def test_the_matrix_rules_are_found() -> None:
    assert {"muon", "adamuon"} <= set(MATRIX_RULES)
    assert all(r.matrix_values for r in MATRIX_RULES.values())


# ------------------------------------------------------------------------------------ API
@pytest.mark.parametrize("name", MATRIX_RULE_NAMES)
def test_api_shape(name: str) -> None:
    rule = MATRIX_RULES[name]
    for m in (numpy_module(name), triton_module(name)):
        assert m.RULE == name and m.SPEC == f"specs/{name}.py"
        assert list(m.HYPERPARAMS) == list(rule.hypers)
        assert m.STATES == tuple(rule.states)
        assert list(m.MATRIX_VALUES) == [it.name for it in rule.matrix_values.values()]
        assert callable(m.init_state) and callable(m.step) and callable(m.step_multi)
    assert CLASSES[name].__name__ == rule.class_name


NP_BAD = {
    "grad shape": (lambda w, g: (w, g[:-1]), ValueError, r"grad shape is \(3, 6\)"),
    "grad dtype": (lambda w, g: (w, g.astype(np.float64)), TypeError, "grad dtype must be"),
    "float16 weight": (lambda w, g: (w.astype(np.float16), g), TypeError, "float32 or float64"),
    "non-contiguous": (
        lambda w, g: (w, np.zeros((4, 12), np.float32)[:, ::2]),
        ValueError,
        "grad must be C-contiguous",
    ),
    "aliasing": (lambda w, g: (w, w), ValueError, "weight and grad share memory"),
    "not an array": (lambda w, g: (w, g.tolist()), TypeError, "grad must be a numpy.ndarray"),
    "a vector": (lambda w, g: (w[0], g[0]), ValueError, r"2-D matrix.*shape \(6,\)"),
}
VECTOR_STATE = {"a vector"}  # the state made for the vector, so that only its shape is wrong


@pytest.mark.parametrize("bad", sorted(NP_BAD))
@pytest.mark.parametrize("name", MATRIX_RULE_NAMES)
def test_numpy_bad_inputs_raise_before_any_write(name: str, bad: str) -> None:
    make, error, message = NP_BAD[bad]
    m = numpy_module(name)
    rng = np.random.default_rng(0)
    w, g = (rng.standard_normal(SHAPE).astype(np.float32) for _ in range(2))
    state = m.init_state(w)
    w, g = make(w, g)
    if bad in VECTOR_STATE:
        state = {s: np.zeros_like(w) for s in m.STATES}
    before = [np.array(w, copy=True)] + [state[s].copy() for s in m.STATES]
    with pytest.raises(error, match=message):
        m.step(w, g, state, 1)
    for x, y in zip(before, [w, *(state[s] for s in m.STATES)], strict=True):
        np.testing.assert_array_equal(x, y)


TR_BAD = {
    "grad shape": (lambda w, g, s: (w, g[:-1], s), ValueError, r"grad shape is \(3, 6\)"),
    "grad dtype": (lambda w, g, s: (w, g.double(), s), TypeError, "grad dtype must be"),
    "weight dtype": (lambda w, g, s: (w.double(), g, s), TypeError, "weight dtype must be"),
    "state dtype": (
        lambda w, g, s: (w, g, {k: v.half() for k, v in s.items()}),
        TypeError,
        "dtype must be float32",
    ),
    "non-contiguous": (
        lambda w, g, s: (w, torch.randn(4, 12, device=DEVICE)[:, ::2], s),
        ValueError,
        "grad must be contiguous",
    ),
    "aliasing": (lambda w, g, s: (w, w, s), ValueError, "share memory"),
    "device": (lambda w, g, s: (w, g.to("meta"), s), ValueError, "grad is on meta"),
    "missing state": (lambda w, g, s: (w, g, {}), ValueError, "state must have exactly"),
    "a vector": (
        lambda w, g, s: (w[0], g[0], {k: v[0] for k, v in s.items()}),
        ValueError,
        r"2-D matrix.*shape \(6,\)",
    ),
}


@pytest.mark.parametrize("bad", sorted(TR_BAD))
@pytest.mark.parametrize("name", MATRIX_RULE_NAMES)
def test_triton_bad_inputs_raise_before_any_write(name: str, bad: str) -> None:
    make, error, message = TR_BAD[bad]
    m = triton_module(name)
    torch.manual_seed(0)
    w, g = torch.randn(SHAPE, device=DEVICE), torch.randn(SHAPE, device=DEVICE)
    state = m.init_state(w)
    w, g, state = make(w, g, state)
    buffers = list(state.values())
    before = [w.clone()] + [v.clone() for v in buffers]
    with pytest.raises(error, match=message):
        m.step(w, g, state, 1)
    for x, y in zip(before, [w, *buffers], strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("target", ["numpy", "triton"])
@pytest.mark.parametrize("name", MATRIX_RULE_NAMES)
def test_hyperparameter_errors(name: str, target: str) -> None:
    m = numpy_module(name) if target == "numpy" else triton_module(name)
    w = np.ones(SHAPE, np.float32) if target == "numpy" else torch.ones(SHAPE, device=DEVICE)
    g, state = w * 0.5, m.init_state(w)
    with pytest.raises(TypeError, match=rf"{name}: unknown hyperparameter\(s\) learning_rate"):
        m.step(w, g, state, 1, learning_rate=0.1)
    first = next(iter(m.HYPERPARAMS))
    with pytest.raises(ValueError, match=f"{first}=inf is outside"):
        m.step(w, g, state, 1, **{first: float("inf")})
    with pytest.raises(TypeError, match="must be a real number"):
        m.step(w, g, state, 1, **{first: "fast"})
    with pytest.raises(TypeError, match="step count t must be an int"):
        m.step(w, g, state, 1.5)
    with pytest.raises(ValueError, match="step count t must be >= 1"):
        m.step(w, g, state, 0)
    steps = [it.steps.name for it in MATRIX_RULES[name].matrix_values.values()]
    for count in steps:  # the iteration counts take whole numbers only
        with pytest.raises(ValueError, match=count):
            m.step(w, g, state, 1, **{count: 2.5})
    assert bool((w == 1).all())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", MATRIX_RULE_NAMES)
def test_dtype_is_preserved(name: str, dtype) -> None:
    m = numpy_module(name)
    rng = np.random.default_rng(0)
    w, g = (rng.standard_normal(SHAPE).astype(dtype) for _ in range(2))
    state = m.init_state(w)
    hp = sample_hyperparams(MATRIX_RULES[name], np.random.default_rng(1))
    for t in range(1, 4):
        m.step(w, g, state, t, **hp)
    assert w.dtype == dtype and all(state[s].dtype == dtype for s in m.STATES)
    assert np.all(np.isfinite(w))


@pytest.mark.parametrize("name", MATRIX_RULE_NAMES)
def test_float32_is_never_promoted_to_float64(name: str, monkeypatch) -> None:
    """No NumPy call of a float32 step gets a float64 operand (the reductions' float64
    accumulation is np.sum's dtype= argument, not an operand)."""
    # here, not at the top: test_numpy_api needs the generator (jinja2), which the GPU check's
    # machine may lack, and tools/gpu_check.py collects this file there
    numpy_api = pytest.importorskip("test_numpy_api")
    m = numpy_module(name)
    recorder = numpy_api.RecordingNumPy()
    monkeypatch.setattr(m, "np", recorder)
    monkeypatch.setattr(held, "np", recorder)  # an iteration with a precision runs its ops there
    rng = np.random.default_rng(0)
    w, g = (rng.standard_normal((20, 30)).astype(np.float32) for _ in range(2))
    state = m.init_state(w)
    for t in range(1, 4):
        m.step(w, g, state, t, **sample_hyperparams(MATRIX_RULES[name], rng))
    assert {name for name, _ in recorder.calls} >= {"matmul", "multiply"}
    assert [c for c in recorder.calls if "float64" in c[1]] == []
    assert numpy_api.operand_kind(1.0) == "weak"


@pytest.mark.parametrize("target", ["numpy", "triton"])
@pytest.mark.parametrize("name", MATRIX_RULE_NAMES)
def test_an_empty_matrix_is_a_no_op(name: str, target: str) -> None:
    m = numpy_module(name) if target == "numpy" else triton_module(name)
    for shape in [(0, 5), (5, 0)]:
        w = np.zeros(shape, np.float32) if target == "numpy" else torch.zeros(shape, device=DEVICE)
        m.step(w, w + 0, m.init_state(w), 1)


# ---------------------------------------------------------------------------- 40-digit equations
@pytest.mark.parametrize(("name", "hp"), VARIANTS)
def test_numpy_float64_matches_the_equations_at_40_digits(name: str, hp: dict) -> None:
    """Three steps on a 3 x 4 weight, each flag and choice: the NumPy module in float64 against
    the spec's equations evaluated at 40 digits (tests/matrix_reference.py)."""
    rule = MATRIX_RULES[name]
    m = numpy_module(name)
    rng = np.random.default_rng(1)
    hp = {**hp, **{it.steps.name: 3 for it in rule.matrix_values.values()}}
    weight = rng.standard_normal((3, 4))
    state = m.init_state(weight.copy())
    ref_w, ref_state = mp_array(weight), {s: mp_array(np.zeros((3, 4))) for s in m.STATES}
    ours = weight.copy()
    for t in range(1, 4):
        g = rng.standard_normal((3, 4))
        m.step(ours, g.copy(), state, t, **hp)
        ref_w, ref_state = reference_step(rule, ref_w, g.tolist(), ref_state, t, resolved(rule, hp))
        np.testing.assert_allclose(ours, np.array(as_float(ref_w)), rtol=1e-12, atol=1e-13)
        for s in m.STATES:
            want = np.array(as_float(ref_state[s]))
            np.testing.assert_allclose(state[s], want, rtol=1e-11, atol=1e-13 * np.abs(want).max())
    assert np.abs(ours - weight).max() > 1e-4  # it moved: 1e9 times the bound


# -------------------------------------------------------------------------------- GPU path
_MATMUL = torch.matmul
PRODUCTS = [0]  # how many ``one_product`` has made


def one_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The float32 matrix product both modules make in the lockstep tests: torch's on the CPU,
    of contiguous operands (a BLAS call's rounding depends on its operands' layouts; in a GPU
    run the Triton module's operands are CUDA tensors, copied for the product and back)."""
    PRODUCTS[0] += 1
    return _MATMUL(a.contiguous().cpu(), b.contiguous().cpu()).to(a.device)


class OneProductNumPy:
    """NumPy, but for ``matmul``: ``one_product``."""

    def __getattr__(self, name: str) -> object:
        return getattr(np, name)

    @staticmethod
    def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return one_product(torch.from_numpy(a), torch.from_numpy(b)).numpy()


class OneProductTorch:
    """torch, but for ``matmul``: ``one_product``."""

    def __getattr__(self, name: str) -> object:
        return getattr(torch, name)

    matmul = staticmethod(one_product)


@pytest.fixture
def one_product_both(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both modules' matrix products made alike. A product's rounding is its library's and its
    operands' layouts' (NumPy's BLAS takes ``A @ A.T`` as a symmetric rank-k update; torch's its
    own gemm; the modules' elementwise steps keep different layouts), and Newton-Schulz
    amplifies a difference in the last bit by the quintic's slope, 3.4445 per step (~485x over
    5): up to 8e-5 of a Muon step's update between NumPy's and torch's products on an AMD EPYC
    machine, where another machine's BLAS had given the same bits. So the lockstep tests give
    both modules one product and check everything else to float32's last bit; each module's
    own products are checked in tests/test_muon.py and tests/test_adamuon.py (NumPy float64
    against the equations at 40 digits; the Triton path against NumPy within their bound)."""
    for name in MATRIX_RULE_NAMES:
        monkeypatch.setattr(numpy_module(name), "np", OneProductNumPy())
        monkeypatch.setattr(triton_module(name), "torch", OneProductTorch())
    # an iteration with a precision runs its ops in optgen_runtime.held: NumPy's emulation there
    # (torch's CPU ops hidden) and the GPU path's torch ops, rerouted alike (a held format's
    # fused addmm makes its own product)
    monkeypatch.setattr(held, "np", OneProductNumPy())
    monkeypatch.setattr(held, "_torch_module", OneProductTorch)
    monkeypatch.setattr(held, "HAVE_TORCH", False)
    monkeypatch.setattr(held, "_HELD", {})


def test_the_modules_products_are_rerouted(one_product_both: None) -> None:
    """The fixture reaches both modules' products (else the lockstep tests below compare two
    libraries' products, equal to the last bit only by luck)."""
    for name in MATRIX_RULE_NAMES:
        npm, trm = numpy_module(name), triton_module(name)
        for module, weight in (
            (npm, np.ones(SHAPE, np.float32)),
            (trm, torch.ones(SHAPE, device=DEVICE)),
        ):
            before = PRODUCTS[0]
            module.step(weight, weight * 0.5 + 0.25, module.init_state(weight), 1)
            assert PRODUCTS[0] > before, (name, module.__name__)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", MATRIX_RULE_NAMES)
def test_triton_matches_numpy_in_lockstep(name: str, shape, dtype, one_product_both: None) -> None:
    """test_triton.py's lockstep (every step of the GPU path against one NumPy step from the
    same inputs, float32 rounding budget; a bf16/fp16 weight within one ulp) on matrices, the
    products made alike (``one_product_both``)."""
    hp = sample_hyperparams(MATRIX_RULES[name], np.random.default_rng(0))
    assert len(list(lockstep(name, shape, dtype, hp=hp))) == 5


@pytest.mark.parametrize(("name", "hp"), VARIANTS)
def test_triton_matches_numpy_on_every_flag_and_choice(
    name: str, hp: dict, one_product_both: None
) -> None:
    assert len(list(lockstep(name, (12, 9), hp=hp))) == 5


@pytest.mark.parametrize("name", MATRIX_RULE_NAMES)
def test_step_multi_checks_every_tensor_before_writing(name: str) -> None:
    m = triton_module(name)
    torch.manual_seed(0)
    weights = [torch.randn(s, device=DEVICE) for s in SHAPES]
    grads = [torch.randn_like(w) for w in weights]
    grads[-1] = grads[-1][:, :-1]
    states = [m.init_state(w) for w in weights]
    before = [w.clone() for w in weights]
    with pytest.raises(ValueError, match="grad shape"):
        m.step_multi(weights, grads, states, 1)
    assert all(torch.equal(a, b) for a, b in zip(weights, before, strict=True))


@pytest.mark.parametrize("target", ["numpy", "numba", "triton"])
@pytest.mark.parametrize("name", MATRIX_RULE_NAMES)
def test_step_multi_refuses_buffers_shared_across_tensors(name: str, target: str) -> None:
    """A gradient that is another tensor's weight or state, or one weight or state dict given
    twice, is refused before anything is written, as every per-element module's
    ``step_multi`` refuses it: the writes are queued (the compiled module's compute the new
    values then, from the gradient), so the second tensor would read the first's new weight."""
    if target == "numba":
        pytest.importorskip("numba")  # the GPU check's machine may lack it
    m = {"numpy": numpy_module, "numba": numba_module, "triton": triton_module}[target](name)
    torch.manual_seed(0)
    first, second, grad = (torch.randn(SHAPE) for _ in range(3))
    if target == "triton":
        first, second, grad = (x.to(DEVICE) for x in (first, second, grad))
    else:
        first, second, grad = (x.numpy() for x in (first, second, grad))
    state = m.init_state(first)
    key = next(iter(state))
    cases = [
        ([first, second], [grad, first], [state, m.init_state(second)], "tensor 0's weight"),
        ([first, second], [grad, state[key]], [state, m.init_state(second)], "state"),
        ([first, first], [grad, grad], [state, m.init_state(first)], "tensor 0's weight"),
        ([first, second], [grad, grad], [state, state], "share one state dict"),
    ]
    for weights, grads, states, why in cases:
        before = [copy.deepcopy(x) for x in (first, second, state)]
        with pytest.raises(ValueError, match=why):
            m.step_multi(weights, grads, states, 1)
        for was, now in zip(before[:2], (first, second), strict=True):
            assert (was == now).all()
        assert all((before[2][k] == v).all() for k, v in state.items())


@pytest.mark.parametrize("target", ["numpy", "triton"])
@pytest.mark.parametrize("name", MATRIX_RULE_NAMES)
def test_zero_gradients_stay_finite(name: str, target: str) -> None:
    m = numpy_module(name) if target == "numpy" else triton_module(name)

    def make(shape: tuple[int, ...]) -> object:
        return np.zeros(shape) if target == "numpy" else torch.zeros(shape, device=DEVICE)

    w = make(SHAPE) + 0.5
    state = m.init_state(w)
    for t in range(1, 51):
        m.step(w, make(SHAPE), state, t)
    finite = np.isfinite if target == "numpy" else torch.isfinite
    assert all(bool(finite(v).all()) for v in [w, *state.values()])


@pytest.mark.parametrize("name", MATRIX_RULE_NAMES)
def test_nan_gradient_propagates_the_same_way(name: str) -> None:
    """A NaN in the gradient reaches the whole matrix through the norm and the products: every
    weight and state element that depends on it is NaN in both paths."""
    rng = np.random.default_rng(9)
    g = rng.standard_normal(SHAPE).astype(np.float32)
    g[1, 2] = np.nan
    w = rng.standard_normal(SHAPE).astype(np.float32)
    npm, trm = numpy_module(name), triton_module(name)
    tw = torch.tensor(w, device=DEVICE)
    nstate, tstate = npm.init_state(w), trm.init_state(tw)
    with np.errstate(invalid="ignore"):
        npm.step(w, g.copy(), nstate, 1)
    trm.step(tw, torch.tensor(g, device=DEVICE), tstate, 1)
    assert np.isnan(w).all()
    for ours, theirs in [(w, tw)] + [(nstate[s], tstate[s]) for s in npm.STATES]:
        np.testing.assert_array_equal(np.isnan(theirs.cpu().numpy()), np.isnan(ours))


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
