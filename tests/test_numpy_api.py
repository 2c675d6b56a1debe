"""The generated NumPy modules' API: inputs checked before any write, bounded memory, dtypes."""

from __future__ import annotations

import inspect
import tracemalloc
import types

import numpy as np
import pytest
from conftest import RULES, numpy_module, step_inputs, tolerance
from reference import sample_hyperparams, spec_trajectory
from test_symbolic import case, max_rel_error, run_numpy

from codegen.lower import lower
from codegen.lowered import Op
from codegen.targets.numpy import TARGET as NUMPY_TARGET
from optgen_runtime.numpy_support import THREADS


def _inputs(rule_name, dtype=np.float32, size=10, shape=None):
    m = numpy_module(rule_name)
    rng = np.random.default_rng(0)
    shape = shape or (size,)
    w = rng.standard_normal(shape).astype(dtype)
    return m, w, rng.standard_normal(shape).astype(dtype), m.init_state(w)


def test_api_shape(rule_name: str) -> None:
    m = numpy_module(rule_name)
    assert m.RULE == rule_name and m.SPEC == f"specs/{rule_name}.py"
    assert list(m.HYPERPARAMS) == list(RULES[rule_name].hypers)
    assert m.STATES == tuple(RULES[rule_name].states)
    for name in ("lr", "wd", "rescale_grad", "clip_gradient"):
        if name in RULES[rule_name].hypers:
            assert name in m.HYPERPARAMS


BAD = {
    "grad shape": (lambda w, g, s: (w, g[:-1], s), ValueError, r"grad shape is \(9,\)"),
    "grad dtype": (
        lambda w, g, s: (w, g.astype(np.float64), s),
        TypeError,
        "grad dtype must be the weight.s",
    ),
    "float16 weight": (
        lambda w, g, s: (w.astype(np.float16), g, s),
        TypeError,
        "weight dtype must be float32 or float64",
    ),
    "non-contiguous": (
        lambda w, g, s: (w, np.zeros(20, np.float32)[::2], s),
        ValueError,
        "grad must be C-contiguous",
    ),
    "aliasing": (lambda w, g, s: (w, w, s), ValueError, "weight and grad share memory"),
    "not an array": (lambda w, g, s: (w, list(g), s), TypeError, "grad must be a numpy.ndarray"),
}


@pytest.mark.parametrize("bad", sorted(BAD))
def test_bad_inputs_raise_before_any_write(rule_name: str, bad: str) -> None:
    make, error, message = BAD[bad]
    m, w, g, state = _inputs(rule_name)
    extra = step_inputs(m, w, 1)
    w, g, state = make(w, g, state)
    buffers = [state[name] for name in m.STATES]
    before = [np.array(w, copy=True)] + [v.copy() for v in buffers]
    with pytest.raises(error, match=message):
        m.step(w, g, state, 1, **extra)
    for x, y in zip(before, [w, *buffers], strict=True):
        np.testing.assert_array_equal(x, y)


def test_hyperparameter_errors(rule_name: str) -> None:
    m, w, g, state = _inputs(rule_name)
    x = step_inputs(m, w, 1)
    with pytest.raises(TypeError, match=r"unknown hyperparameter\(s\) learning_rate"):
        m.step(w, g, state, 1, learning_rate=0.1, **x)
    first = next(iter(m.HYPERPARAMS))
    with pytest.raises(ValueError, match=f"{first}=inf is outside"):
        m.step(w, g, state, 1, **{first: float("inf")}, **x)
    with pytest.raises(TypeError, match="must be a real number"):
        m.step(w, g, state, 1, **{first: "fast"}, **x)
    with pytest.raises(TypeError, match="step count t must be an int"):
        m.step(w, g, state, 1.5, **x)
    if "clip_gradient" in m.HYPERPARAMS:
        with pytest.raises(ValueError, match=r"clip_gradient=0.0 is outside"):
            m.step(w, g, state, 1, clip_gradient=0.0, **x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved(rule_name: str, dtype) -> None:
    """NumPy 2 promotion: float32 arrays stay float32 (host scalars are cast, literals weak)."""
    m, w, g, state = _inputs(rule_name, dtype)
    hp = sample_hyperparams(RULES[rule_name], np.random.default_rng(1))
    for t in range(1, 4):
        m.step(w, g, state, t, **hp, **step_inputs(m, w, t))
    assert w.dtype == dtype and all(state[s].dtype == dtype for s in m.STATES)
    assert np.all(np.isfinite(w))


class RecordingNumPy:
    """Stands in for a generated module's ``np`` global: forwards every attribute and records
    the operand dtypes of each call made through it (ufuncs, ``np.where``, ``np.sum``, ...)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def __getattr__(self, name: str) -> object:
        value = getattr(np, name)
        if isinstance(value, type) or not callable(value):
            return value  # np.float64 (a dtype= argument), np.inf, np.ndarray

        def call(*args: object, **kwargs: object) -> object:
            out = kwargs.get("out", ())
            operands = [*args, *(out if isinstance(out, tuple) else (out,))]
            self.calls.append((name, [operand_kind(x) for x in operands]))
            return value(*args, **kwargs)

        return call


def operand_kind(x: object) -> str:
    """An operand's dtype; a Python scalar is NEP 50 'weak' (it takes the array's dtype)."""
    if isinstance(x, np.ndarray | np.generic):
        return x.dtype.name
    if type(x) in (bool, int, float):
        return "weak"
    return type(x).__name__


def float64_operands(module: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> list:
    """Run ``module.step`` on float32 arrays with a recording ``np``; the float64 operands."""
    recorder = RecordingNumPy()
    monkeypatch.setattr(module, "np", recorder)
    _, w, g, _ = _inputs(module.RULE, np.float32, size=1000)
    state = module.init_state(w)
    hp = sample_hyperparams(RULES[module.RULE], np.random.default_rng(1))
    for t in range(1, 4):
        module.step(w, g, state, t, **hp, **step_inputs(module, w, t))
    assert len(recorder.calls) > 3, "the module made no calls through its np global"
    return [call for call in recorder.calls if "float64" in call[1]]


def test_float32_is_never_promoted_to_float64(
    rule_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No NumPy call in a float32 step gets a float64 operand (a host scalar left as
    np.float64 would compute in double and round into the float32 out= buffer, unseen by
    test_dtype_is_preserved). Python floats are NEP 50 weak scalars: allowed."""
    assert float64_operands(numpy_module(rule_name), monkeypatch) == []


def test_the_promotion_check_catches_a_float64_host_scalar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Test the tester: Adam with its host scalars cast to np.float64 instead of the dtype."""
    source = inspect.getsource(numpy_module("adam"))
    assert source.count("dtype(_x) for _x in scalars") == 1
    module = types.ModuleType("adam_float64_scalars")
    module.__package__ = "generated.numpy"  # the module imports its metadata relatively
    code = source.replace("dtype(_x) for _x in scalars", "np.float64(_x) for _x in scalars")
    exec(compile(code, module.__name__, "exec"), module.__dict__)
    found = float64_operands(module, monkeypatch)
    assert found and {name for name, _ in found} >= {"multiply", "add"}, found


def test_extra_memory_is_bounded_by_the_chunk(rule_name: str) -> None:
    m = numpy_module(rule_name)
    # per worker thread: at most 8 chunk-sized float32 scratch buffers, plus Philox's per-chunk
    # integer work arrays; the weight is made 4x larger than that bound (in bytes)
    bound = THREADS * (8 * 4 + 96 * len(m.DRAWS)) * m.CHUNK + 64 * 1024
    # a rule with row/column vectors holds a few of them (float64 accumulators included): a
    # matrix's are O(rows + cols); a 1-D weight's column vector is its full second moment
    side = int(bound**0.5) + 1
    shape = (side, side) if RULES[rule_name].vector_values else None
    m, w, g, state = _inputs(rule_name, np.float32, size=bound, shape=shape)
    x = step_inputs(m, w, 1)
    m.step(w, g, state, 1, **x)  # warm up
    tracemalloc.start()
    m.step(w, g, state, 2, **x)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < bound <= w.nbytes / 4, f"peak {peak} bytes"


def test_chunk_boundaries(rule_name: str) -> None:
    """A tensor spanning several chunks with a ragged tail gives the same result as small pieces."""
    m = numpy_module(rule_name)
    if m.REDUCTIONS or m.DRAWS:
        pytest.skip("reductions and noise streams: pieces of a tensor are different tensors")
    rng = np.random.default_rng(5)
    n = 2 * m.CHUNK + 3
    w, g = rng.standard_normal(n), rng.standard_normal(n)
    state = m.init_state(w)
    pieces = [slice(0, 5), slice(5, m.CHUNK + 1), slice(m.CHUNK + 1, n)]
    parts = [(w[s].copy(), m.init_state(w[s].copy())) for s in pieces]
    hp = sample_hyperparams(RULES[rule_name], rng)  # every hyperparameter active (wd, say)
    x = step_inputs(m, w, 1)
    m.step(w, g, state, 1, **hp, **x)
    for s, (pw, ps) in zip(pieces, parts, strict=True):
        mine = {k: v[s].copy() if k in m.INPUTS else v for k, v in x.items()}
        m.step(pw, g[s].copy(), ps, 1, **hp, **mine)
        np.testing.assert_array_equal(pw, w[s])


def mutant(rule_name: str, index: int, kind: str) -> types.ModuleType:
    """The rule's NumPy module with op ``index`` changed to ``kind`` (a deliberate bug)."""
    lowered = lower(RULES[rule_name])
    op = lowered.ops[index]
    lowered.ops[index] = Op(op.dest, kind, op.args)
    module = types.ModuleType(f"mutant_{rule_name}")
    module.__package__ = "generated.numpy"  # the module imports its metadata relatively
    exec(compile(NUMPY_TARGET.render(lowered), module.__name__, "exec"), module.__dict__)
    return module


@pytest.mark.parametrize("kind", ["sub", "max"])
def test_the_symbolic_check_catches_a_broken_kernel(kind: str) -> None:
    """Test the tester: a single wrong op in Adam's update is caught by the oracle comparison."""
    rule, hp, w0, grads = case("adam", 0)
    reference = spec_trajectory(rule, w0, grads, hp)
    rtol = tolerance(np.float64, len(grads))["rtol"]  # test_symbolic's bound
    adds = [i for i, op in enumerate(lower(rule).ops) if op.kind == "add"]
    for index in adds:
        broken = mutant("adam", index, kind)
        assert max_rel_error(run_numpy(broken, w0, grads, hp), reference) > rtol, index
    assert max_rel_error(run_numpy(numpy_module("adam"), w0, grads, hp), reference) < rtol


@pytest.mark.parametrize("rule_name", ["adam", "lamb", "sgld"])
def test_threads_do_not_change_results(rule_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks, not threads, define the arithmetic: 1 or 3 worker threads give the same bits."""
    import optgen_runtime.numpy_support as support

    m = numpy_module(rule_name)
    results = []
    for threads in (1, 3):
        monkeypatch.setattr(support, "THREADS", threads)
        rng = np.random.default_rng(4)
        w = rng.standard_normal(20 * m.CHUNK + 5).astype(np.float32)
        state = m.init_state(w)
        for t in range(1, 3):
            m.step(w, rng.standard_normal(w.size).astype(np.float32), state, t)
        results.append(w)
    np.testing.assert_array_equal(results[0], results[1])


def test_selects_write_in_place(rule_name: str) -> None:
    """Issue 10, bug 5: a select was ``np.copyto(dest, np.where(mask, a, b))``, a chunk-sized
    temporary per select; it is now ``np.copyto(..., where=mask)`` into its own buffer."""
    source = inspect.getsource(numpy_module(rule_name))
    assert "np.where(" not in source


@pytest.mark.parametrize("target", ["numpy", "triton"])
def test_init_state_takes_and_checks_the_hyperparameters(target: str) -> None:
    """A state initialised from a hyperparameter (Adagrad's history): init_state takes step's
    hyperparameters with the spec's defaults, and refuses unknown names and illegal values as
    step does; a rule whose initial state uses none accepts and checks them all the same."""
    import importlib

    import torch

    module = importlib.import_module(f"generated.{target}.adagrad")
    w = np.ones(3, np.float32) if target == "numpy" else torch.ones(3)
    assert module.INIT_HYPERPARAMS == ("initial_accumulator_value",)
    assert float(module.init_state(w)["history"].sum()) == 0.0  # the default: MXNet's 0
    state = module.init_state(w, initial_accumulator_value=0.25, lr=0.5)
    assert state["history"].dtype == (np.float32 if target == "numpy" else torch.float32)
    assert (np.asarray(state["history"]) == 0.25).all()
    with pytest.raises(TypeError, match=r"adagrad: unknown hyperparameter\(s\) initial_acc\b"):
        module.init_state(w, initial_acc=0.25)
    with pytest.raises(ValueError, match=r"initial_accumulator_value=-1.0 is outside"):
        module.init_state(w, initial_accumulator_value=-1.0)
    adam = importlib.import_module(f"generated.{target}.adam")
    assert adam.INIT_HYPERPARAMS == ()
    adam.init_state(w, lr=0.1, beta1=0.5)
    with pytest.raises(ValueError, match=r"adam: hyperparameter beta1=2.0 is outside"):
        adam.init_state(w, beta1=2.0)


def test_torch_class_initialises_state_from_each_groups_hyperparameters() -> None:
    """The torch class passes each param group's initial_accumulator_value to init_state."""
    import torch

    from generated.torch import Adagrad

    a, b = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(2))
    opt = Adagrad([{"params": [a], "initial_accumulator_value": 0.5}, {"params": [b]}], lr=0.1)
    a.grad, b.grad = torch.ones(4), torch.ones(2)
    opt.step()
    assert torch.equal(opt.state[a]["history"], torch.full((4,), 1.5))  # 0.5 + 1**2
    assert torch.equal(opt.state[b]["history"], torch.full((2,), 1.0))  # 0 + 1**2


def test_the_quick_pass_accepts_only_what_the_full_checks_accept(monkeypatch) -> None:
    """``flat_views`` takes plain, contiguous, disjoint arrays in one quick pass and runs the
    full checks only when that pass finds something: over random mixes of defects (aliasing,
    overlapping slices, other dtypes, shapes, strides, read-only buffers, memmaps, subclasses,
    missing or extra entries), the quick pass never accepts what the full checks refuse, and
    accepts every plain valid case."""
    from optgen_runtime import numpy_support as ns

    rng = np.random.default_rng(7)
    names, host = ("a", "b"), ("h",)
    accepted = refused = 0
    for _ in range(600):
        base = np.zeros(64, dtype=np.float32)
        arrays = {k: np.zeros(8, dtype=np.float32) for k in ("w", "g", "a", "b")}
        defects = int(rng.integers(0, 3))
        for _ in range(defects):
            k = str(rng.choice(list(arrays)))
            kind = int(rng.integers(0, 9))
            if kind == 0:  # a slice of a shared base, maybe overlapping another
                at = int(rng.integers(0, 12)) * 4
                arrays[k] = base[at : at + 8]
            elif kind == 1:
                arrays[k] = arrays[str(rng.choice(list(arrays)))]  # the same array twice
            elif kind == 2:
                arrays[k] = arrays[k].astype(np.float64)
            elif kind == 3:
                arrays[k] = np.zeros(9, dtype=np.float32)
            elif kind == 4:
                arrays[k] = np.zeros(16, dtype=np.float32)[::2]
            elif kind == 5:
                arrays[k].setflags(write=False)
            elif kind == 6:
                arrays[k] = np.zeros((8, 1), dtype=np.float32)
            elif kind == 7:
                arrays[k] = arrays[k].view(np.recarray)
            else:
                arrays[k] = np.zeros(8, dtype=">f4")
        state: dict = {"a": arrays["a"], "b": arrays["b"], "h": 1.0}
        if rng.random() < 0.05:
            del state["h"]
            defects += 1
        if rng.random() < 0.05:
            state["extra"] = 0.0
            defects += 1
        quick = ns._all_fine(arrays["w"], arrays["g"], state, names, host, {})
        monkeypatch.setattr(ns, "_all_fine", lambda *a: False)
        try:
            ns.flat_views("r", arrays["w"], arrays["g"], state, names, host)
            full = True
        except (TypeError, ValueError):
            full = False
        monkeypatch.undo()
        assert not quick or full, (arrays, state)
        assert quick or defects, "a plain valid case must take the quick pass"
        accepted += quick
        refused += not full
    assert accepted > 100 and refused > 100  # both sides drawn often


@pytest.mark.parametrize(
    ("dims", "chunk"),
    [((4096, 3, 3), 65536), ((5, 7, 9), 64), ((3, 4, 5), 20), ((2, 3, 100), 40), ((0, 3, 3), 8)],
)
def test_matrix_tiles_cover_the_view_in_order(dims: tuple[int, int, int], chunk: int) -> None:
    """The tiles of a factored rule's sweeps (``matrix_tiles``): every element once, in order,
    at most ``chunk`` per tile; runs of whole matrices where one fits (a convolution's 3 x 3
    kernels: 4,096 of them in one tile, where one tile per kernel made Adafactor's NumPy step
    on a 64 x 64 x 3 x 3 weight 80 times slower), else rows or pieces of one matrix's row."""
    from optgen_runtime.numpy_tiles import matrix_tiles

    tiles = matrix_tiles(dims, chunk)
    seen = np.zeros(dims, dtype=np.int64)
    order = []
    for m0, m1, r0, r1, c0, c1 in tiles:
        assert (m1 - m0) * (r1 - r0) * (c1 - c0) <= chunk
        assert m1 - m0 == 1 or (r0, r1, c0, c1) == (0, dims[1], 0, dims[2])
        seen[m0:m1, r0:r1, c0:c1] += 1
        order.append(np.ravel_multi_index((m0, r0, c0), dims) if seen.size else 0)
    assert (seen == 1).all() and order == sorted(order)
    if dims[1] * dims[2] <= chunk and seen.size:
        per = chunk // (dims[1] * dims[2])
        assert len(tiles) == -(-dims[0] // per)  # as few as whole matrices allow
