"""The generic suites for every rule with matrix equations (codegen/matrix.py: Muon, AdaMuon, and
any spec added later, picked up from ``conftest.MATRIX_RULES``), on 2-D weights.

The rule-parametrized suites (``rule_name`` in conftest) run the per-element rules on 1-D sizes
and per-element kernels; a matrix rule refuses a 1-D weight. Here the same properties are
checked for the matrix rules on matrices (reusing the suites' own checkers where they take a
shape), and :data:`NOT_FOR_MATRIX_RULES` says, module by module, what does not apply and why;
``test_every_generic_suite_is_classified`` keeps that list complete. Each rule's comparison with
its reference optimizer is its own file (tests/test_muon.py, tests/test_adamuon.py). The
torch classes on matrices, the compiled (numba) modules and a probe rule's compiled and
GPU writes: tests/test_matrix_rules_torch_classes.py, with this file's shapes, variants
and one-product helpers.
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
        [
            "test_matrix_rules_torch_classes.py::test_torch_class_refuses_a_non_matrix_parameter_before_writing"
        ],
    ),
    "test_input_guards_inputs.py": (
        "test_input_guards.py's per-element inputs (AdaHessian's hessian; no matrix rule takes "
        "one), 1-D parameters",
        [
            "test_matrix_rules_torch_classes.py::test_torch_class_refuses_a_non_matrix_parameter_before_writing"
        ],
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
        [
            "test_matrix_rules_torch_classes.py::test_a_later_weights_refusal_leaves_the_earlier_ones_unwritten"
        ],
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
            "test_matrix_rules_torch_classes.py::test_torch_class_matches_the_numpy_module",
            "test_matrix_rules_torch_classes.py::test_state_dict_round_trip_is_bit_identical",
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
    "test_numba_row_column.py",  # test_numba.py's row/column rules, split off
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
