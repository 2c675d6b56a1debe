"""The compiled CPU modules (``generated/numba``) against the NumPy reference, and the torch
classes on them.

Equal to the NumPy module to the last bit wherever each op rounds the same (every rule without
sums or libm functions, in float32 and float64); where a rule sums (reductions: a chunk summed
serially in float64 against NumPy's pairwise sum) or calls exp/log/tanh/softplus/cbrt/pow (the
platform's libm against NumPy's own routines), within the rounding budget of
``conftest.tolerance``, and the test says which of the two it is. A rule with noise draws
(SGLD) draws the NumPy module's Philox stream, its integers and uniforms to the bit and its
normals (its own float32 ``log``/``cos``, float64's rounded, against NumPy's SIMD
routines) within 4 ulp: its step is NumPy's to the bit wherever the two
normals are, and within those ulps elsewhere. Compiling costs about a second
per rule and dtype (cached in ``generated/numba/__pycache__`` afterwards), so the full sweep over
every rule is marked slow; a representative set covers each feature in the quick run. The
row and column rules' tiles, sweeps, chains and lane folds: tests/test_numba_row_column.py.
"""

from __future__ import annotations

import inspect

import numba
import numpy as np
import pytest
import torch
from conftest import ALL_RULES, RULE_NAMES, numba_module, numpy_module, step_inputs, tolerance
from reference import sample_hyperparams

from codegen.lower import lower
from codegen.targets.numba import fallback_reason
from optgen_runtime import numba_math, numba_support
from optgen_runtime.common import PLAIN
from optgen_runtime.hyperparams import resolve_hyperparams
from optgen_runtime.philox import randint4x, randn, stream_seed, tensor_seed, uniform

LIBM = frozenset({"exp", "log", "tanh", "softplus", "cbrt", "pow"})
# One rule per feature: plain elementwise, sign, selects, per-tensor sums over two phases,
# group sums, a per-element input, host states fed by sums, libm functions (exp, log: AdaHessian;
# the rules that run the NumPy reference are test_fallback_is_explicit's).
REPRESENTATIVE = [
    "adam",
    "signum",
    "amsgrad",
    "lamb",
    "adam_clip",
    "adahessian",
    "prodigy",
]
SHAPES = [(300, 7), (70001,), (3,), (0,)]  # several chunks with a tail, tiny, empty


def exactness(name: str) -> str:
    """'bits' where every op rounds as NumPy's does, else why not."""
    lowered = lower(ALL_RULES[name])
    if lowered.draws:
        return "noise (log, cos: NumPy's SIMD routines)"
    kinds = {op.kind for op in [*lowered.ops, *lowered.reduce_ops]}
    if kinds & LIBM:
        return f"libm ({', '.join(sorted(kinds & LIBM))})"
    if any(kind == "sum" for kind in lowered.rule.reduction_kinds.values()):
        return "sums"
    return "bits"


def run_both(
    name: str, dtype: type, steps: int = 3, specials: bool = False, **hp: float
) -> tuple[list, list]:
    """NumPy's step (step_multi for group rules) and numba's step_multi over SHAPES."""
    ref, nb = numpy_module(name), numba_module(name)
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    a = [w.copy() for w in weights]
    b = [w.copy() for w in weights]
    sa = [ref.init_state(w) for w in a]
    sb = [nb.init_state(w) for w in b]
    for t in range(1, steps + 1):
        grads = [(rng.standard_normal(s) * 3).astype(dtype) for s in SHAPES]
        if specials:  # what a clamp must pass through or cut: NaN, +-inf, huge values
            grads[1][:6] = [np.nan, np.inf, -np.inf, 1e30, -1e30, -0.0]
        extra = [step_inputs(ref, w, t, seed=j) for j, w in enumerate(weights)]
        if ref.DRAWS:  # step_multi's tensor j draws from the stream tensor_seed(seed, j)
            extra = [{**e, "seed": tensor_seed(hp.get("seed", 0), j)} for j, e in enumerate(extra)]
        if ref.GROUP_REDUCTIONS:
            ref.step_multi(a, grads, sa, t, **hp)
        else:
            for j in range(len(a)):
                ref.step(a[j], grads[j], sa[j], t, **extra[j], **hp)
        lists = {k: [e[k] for e in extra] for k in nb.INPUTS}
        scalars = {k: extra[0][k] for k in nb.STEP_SCALARS}
        nb.step_multi(b, grads, sb, t, **lists, **scalars, **hp)
    return list(zip(a, sa, strict=True)), list(zip(b, sb, strict=True))


def bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x).reshape(-1).view(np.uint8)


def compare(name: str, dtype: type, specials: bool = False, **hp: float) -> None:
    nb = numba_module(name)
    want, got = run_both(name, dtype, specials=specials, **hp)
    how = exactness(name)
    for (wa, sa), (wb, sb) in zip(want, got, strict=True):
        pairs = [("weight", wa, wb)] + [(k, sa[k], sb[k]) for k in nb.STATES]
        pairs += [(k, np.float64(sa[k]), np.float64(sb[k])) for k in nb.HOST_STATES]
        for label, x, y in pairs:
            if how == "bits":
                assert x.dtype == y.dtype and np.array_equal(bits(x), bits(y)), (
                    f"{name} {dtype.__name__} {label} ({x.shape}) differs from NumPy's bits"
                )
            else:
                np.testing.assert_allclose(
                    y, x, **tolerance(dtype, steps=3), err_msg=f"{name} {label} ({how})"
                )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_numba_equals_numpy(name: str, dtype: type) -> None:
    compare(name, dtype)


@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("name", ["sgd", "adam", "signum"])
def test_both_loops_of_a_clamped_rule_equal_numpy(name: str, clip: float | None) -> None:
    """A rule that clamps by a host scalar has two loops: without the clamps when every bound is
    infinite (clip_gradient=None), with them otherwise; both equal NumPy's bits, NaN and
    infinities included."""
    assert "clip_gradient == np.inf:" in inspect.getsource(numba_module(name)._update_chunk.py_func)
    compare(name, np.float32, specials=True, clip_gradient=clip)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", [n for n in RULE_NAMES if n not in REPRESENTATIVE and numba_module(n).COMPILED]
)
def test_numba_equals_numpy_every_rule(name: str) -> None:
    compare(name, np.float32)


def test_exact_rules_are_most_rules() -> None:
    """The claim in the module docstring, checked: the rules compared to the last bit."""
    exact = [n for n in RULE_NAMES if exactness(n) == "bits"]
    assert {"adam", "adamw", "sgd", "sgd_mom", "rmsprop", "adagrad", "signum"} <= set(exact)
    assert exactness("lamb") == "sums" and exactness("adahessian").startswith("libm")


def test_the_bit_comparison_catches_a_last_bit_difference(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel off by one ulp in one element fails the comparison (it is not vacuous)."""
    nb = numba_module("adam")

    def off_by_one_ulp(original):  # type: ignore[no-untyped-def]
        def kernel(addresses, chunks, table):  # type: ignore[no-untyped-def]
            original(addresses, chunks, table)
            first = nb.view(int(addresses[0, 0]), 0, 1, table)  # weight 0's first element
            first[0] = np.nextafter(first[0], np.inf)

        return kernel

    # the parallel loop and its serial twin (``launch`` takes it for a few chunks), as the
    # module finds them (``_UPDATES``, by layout: float32 arrays are PLAIN)
    loops = tuple(map(off_by_one_ulp, nb._UPDATES[PLAIN]))
    monkeypatch.setitem(nb._UPDATES, PLAIN, loops)
    with pytest.raises(AssertionError, match="differs from NumPy's bits"):
        compare("adam", np.float32)


def test_fallback_is_explicit() -> None:
    """Rules the target cannot compile say so and run the NumPy reference; the others are
    compiled."""
    for name in [*RULE_NAMES, "muon"]:
        nb, ref = numba_module(name), numpy_module(name)
        rule = ALL_RULES[name]
        reason = None if rule.matrix_values else fallback_reason(rule)
        assert nb.FALLBACK == reason and nb.COMPILED == (reason is None), name
        if reason is not None:
            assert nb.step is ref.step and nb.init_state is ref.init_state
    assert numba_module("sgld").COMPILED  # noise draws compile (numba_math.normals)
    assert numba_module("madgrad").COMPILED  # cube roots: numba_math.cbrt, vectorised
    for name in ("adafactor", "came", "sm3", "muon", "adamuon"):  # numba_tiles; matrix rules
        assert (
            numba_module(name).COMPILED and numba_module(name).step is not numpy_module(name).step
        )


def test_even_chunks_exactly_where_no_loop_reads_a_chunk_boundary() -> None:
    """A rule whose loops sum per chunk keeps the NumPy module's chunks (its partials); every
    other compiled rule takes even chunks."""
    for name in RULE_NAMES:
        nb = numba_module(name)
        if ALL_RULES[name].vector_values:  # tiles of the (batch, rows, cols) view, no chunks
            assert nb.COMPILED and not hasattr(nb, "EVEN_CHUNKS"), name
        elif nb.COMPILED:
            reduces = bool(nb.REDUCTIONS or nb.GROUP_REDUCTIONS)
            assert nb.EVEN_CHUNKS is not reduces, name


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_chunk_tables_cover_each_tensor_once_in_order(
    monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """Both chunk tables cover every element of every tensor once, each tensor's rows in order:
    the NumPy module's chunks of CHUNK elements, or even ones whose equal runs of consecutive
    rows (numba's static schedule: one run per thread) hold equal shares of the elements,
    whatever the tensors' sizes (GPT-2's list repeats a block of 12 tensors of very unequal
    sizes: dealing them out one by one gave one thread all the large ones)."""
    monkeypatch.setattr(numba_support, "MAX_THREADS", threads)
    gpt2 = [1024 * 128, 256 * 128] + [128, 128, 128 * 384, 384, 128 * 128, 128, 128, 128] * 12
    gpt2 += [128 * 512, 512, 512 * 128, 128] * 12
    lists = [[1_000_000], [0, 5, 65536, 65537, 1_000_000, 3, 300_001, 131072, 64], gpt2]
    for sizes in lists:
        for even in (False, True):
            table = numba_support.chunk_table(sizes, even=even)
            filled = table[table[:, 2] > table[:, 1]]
            assert even or len(filled) == len(table)  # padding: only even tables, empty rows
            for j, n in enumerate(sizes):
                rows = filled[filled[:, 0] == j]
                assert (len(rows) == 0) == (n == 0)
                if n:
                    assert rows[0, 1] == 0 and rows[-1, 2] == n
                    assert np.array_equal(rows[1:, 1], rows[:-1, 2])
                    assert (rows[:, 2] - rows[:, 1] <= numba_support.CHUNK).all()
                    starts = rows[:, 1]
                    assert (
                        starts % (numba_support.ALIGN if even else numba_support.CHUNK) == 0
                    ).all()
            if not even:
                assert np.array_equal(table[:, 0], np.sort(table[:, 0]))  # tensor by tensor
                continue
            shares = [int((r[:, 2] - r[:, 1]).sum()) for r in np.array_split(table, threads)]
            assert len(table) % threads == 0
            assert max(shares) - min(shares) <= 2 * numba_support.ALIGN, (sizes, shares)


def test_per_tensor_step_counts_and_mixed_dtypes() -> None:
    """step_multi with one step count per tensor and float32 next to float64 tensors (one
    compiled call per dtype) is each tensor's own NumPy step."""
    ref, nb = numpy_module("adam"), numba_module("adam")
    rng = np.random.default_rng(1)
    dtypes = [np.float32, np.float64, np.float32]
    ws = [rng.standard_normal(100_000).astype(d) for d in dtypes]
    gs = [rng.standard_normal(100_000).astype(d) for d in dtypes]
    a, b = [w.copy() for w in ws], [w.copy() for w in ws]
    sa, sb = [ref.init_state(w) for w in a], [nb.init_state(w) for w in b]
    for j, t in enumerate([1, 5, 9]):
        ref.step(a[j], gs[j], sa[j], t, lr=0.01)
    threads = numba.get_num_threads()
    nb.step_multi(b, gs, sb, [1, 5, 9], lr=0.01)  # 2 chunks per dtype: one thread each
    assert numba.get_num_threads() == threads  # restored
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)


BAD = {  # the NumPy module's errors, word for word
    "grad dtype": lambda w, g, s: (w, g.astype(np.float64), s),
    "aliasing": lambda w, g, s: (w, w, s),
    "non-contiguous": lambda w, g, s: (w, np.zeros(20, np.float32)[::2], s),
    "missing state": lambda w, g, s: (w, g, {}),
    "state shape": lambda w, g, s: (w, g, {k: v[:-1] for k, v in s.items()}),
}


@pytest.mark.parametrize("bad", sorted(BAD))
def test_bad_inputs_raise_the_numpy_modules_error(bad: str) -> None:
    ref, nb = numpy_module("adam"), numba_module("adam")
    errors = []
    for m in (ref, nb):
        w = np.arange(10, dtype=np.float32)
        g = np.ones(10, np.float32)
        w, g, state = BAD[bad](w, g, m.init_state(w))
        before = w.copy()
        with pytest.raises((TypeError, ValueError)) as info:
            m.step(w, g, state, 1)
        assert np.array_equal(w, before)
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1]


def test_step_multi_refusal_writes_nothing() -> None:
    """A bad scalar, a bad tensor or two tensors sharing memory: nothing written anywhere."""
    nb = numba_module("lamb")
    ws = [np.ones(100, np.float32), np.ones(50, np.float32)]
    gs = [np.ones(100, np.float32), np.ones(50, np.float32)]
    states = [nb.init_state(w) for w in ws]
    cases = [
        ((ws, gs, states, 1), {"lr": float("nan")}, ValueError),
        ((ws, [gs[0], gs[1][:-1]], states, 1), {}, ValueError),
        ((ws, [gs[0], ws[0]], states, 1), {}, ValueError),
        ((ws, gs, states, [1, 0]), {}, ValueError),
        ((ws, gs, states[:1], 1), {}, ValueError),
    ]
    for args, hp, error in cases:
        with pytest.raises(error):
            nb.step_multi(*args, **hp)
        assert all(np.all(w == 1.0) for w in ws)
        assert all(np.all(v == 0.0) for s in states for v in s.values())


# ---------------------------------------------------------------------------------- torch classes
def trajectory(name: str, backend: str, multi_precision: bool = False) -> list[torch.Tensor]:
    from generated.torch import RULES as CLASSES

    g = torch.Generator().manual_seed(0)
    shapes = [(40, 9), (70001,), (5,)]
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    params.append(torch.nn.Parameter(torch.randn(7, generator=g, dtype=torch.float64)))
    if multi_precision:
        params.append(torch.nn.Parameter(torch.randn(33, generator=g).to(torch.bfloat16)))
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.003}]
    opt = CLASSES[name](groups, backend=backend, multi_precision=multi_precision)
    for t in range(1, 4):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
        params[2].grad = None if t == 2 else params[2].grad  # a parameter skipped once
        opt.step()
    return [p.detach().clone() for p in params] + [
        v.clone() for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)
    ]


@pytest.mark.parametrize("name", ["adam", "lamb", "adam_clip", "sgld"])
def test_torch_class_on_numba_equals_numpy_backend(name: str) -> None:
    want = trajectory(name, "numpy", multi_precision=True)
    got = trajectory(name, "numba", multi_precision=True)
    for x, y in zip(want, got, strict=True):
        if exactness(name) == "bits":
            assert torch.equal(x, y)
        else:
            torch.testing.assert_close(y, x, **tolerance(np.float32, steps=3))


def test_auto_runs_numba_on_cpu_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    from generated.torch import Adafactor, Adam, Muon

    calls = []
    monkeypatch.setattr(Adam, "_numba_step", lambda self, *a: calls.append("numba"))
    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.ones(4)
    monkeypatch.delenv("OPTGEN_CPU_BACKEND", raising=False)
    Adam([p]).step()
    assert calls == ["numba"]
    monkeypatch.setenv("OPTGEN_CPU_BACKEND", "numpy")
    Adam([p]).step()
    Adam([p], backend="numpy").step()
    assert calls == ["numba"]
    monkeypatch.delenv("OPTGEN_CPU_BACKEND")
    assert Adafactor([p])._use_numba()  # row/column states compile (numba_tiles)
    m = torch.nn.Parameter(torch.ones(4, 3))
    assert Muon([m])._use_numba()  # matrix rules: their per-element stages compile
    # a module that is not compiled says so (every rule's is today): the NumPy reference runs
    monkeypatch.setattr(numba_module("muon"), "COMPILED", False)
    monkeypatch.setattr(numba_module("muon"), "FALLBACK", "not compiled here")
    assert not Muon([m])._use_numba()
    with pytest.raises(ValueError, match="Muon: backend='numba': not compiled here"):
        Muon([m], backend="numba")


def test_step_prechecked_equals_step_multi_and_still_refuses_what_it_cannot_update() -> None:
    """The torch classes' entry (arrays checked by the caller) computes what step_multi does;
    a buffer it could only update through a copy (not C-contiguous) gets every check."""
    nb = numba_module("adam")
    rng = np.random.default_rng(2)
    ws = [rng.standard_normal(1000).astype(np.float32) for _ in range(3)]
    gs = [rng.standard_normal(1000).astype(np.float32) for _ in range(3)]
    a, b = [w.copy() for w in ws], [w.copy() for w in ws]
    sa, sb = [nb.init_state(w) for w in a], [nb.init_state(w) for w in b]
    nb.step_multi(a, gs, sa, 3, lr=0.1)
    nb.step_prechecked(b, gs, sb, 3, lr=0.1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    strided = np.zeros(2000, np.float32)[::2]
    with pytest.raises(ValueError, match="weight must be C-contiguous"):
        nb.step_prechecked([strided], [gs[0]], [nb.init_state(gs[0])], 1)


REDUCING = [
    n
    for n in RULE_NAMES
    if numba_module(n).COMPILED and numba_module(n).REDUCTIONS and not ALL_RULES[n].vector_values
]


def _reduction_inputs(name: str, dtype: type, specials: bool = False) -> list:
    """A reduction pass's chunk arguments: every element buffer (3 blocks and a tail; with
    ``specials``, NaN, infinities and -0.0 in the gradient), then its scalars at step 3 in
    ``dtype``."""
    nb = numba_module(name)
    rng = np.random.default_rng(7)
    n = 3 * 1024 + 77
    hp = sample_hyperparams(ALL_RULES[name], rng)
    hp = resolve_hyperparams(name, nb.HYPERPARAMS, nb.LEGAL, nb.NONE_MEANS, hp)
    state = nb.init_state(rng.standard_normal(n).astype(dtype))
    for k in nb.STATES:
        state[k][...] = np.abs(rng.standard_normal(n)).astype(dtype)
    grad = (rng.standard_normal(n) * 3).astype(dtype)
    if specials:
        grad[:5] = [np.nan, np.inf, -np.inf, -0.0, 1e30]
    buffers = [rng.standard_normal(n).astype(dtype), grad, *(state[k] for k in nb.STATES)]
    inputs = [np.abs(rng.standard_normal(n)).astype(dtype) for _ in nb.INPUTS]
    host = {k: float(v) for k, v in state.items() if k in nb.HOST_STATES}
    return [*buffers, *inputs, *(dtype(x) for x in nb.reduction_scalars(3, **hp, **host))]


def _sums_bits(sums: tuple) -> bytes:
    return np.array(sums, dtype=np.float64).tobytes()


@pytest.mark.parametrize("specials", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", REDUCING)
def test_a_compiled_reduction_pass_is_its_python_code_to_the_bit(
    name: str, dtype: type, specials: bool
) -> None:
    """The reduction pass's chunk function, compiled (its values computed a block at a time,
    vectorised, then added in element order), against the same function run by Python on NumPy
    scalars: the same sums to the bit. (numba's and NumPy's sums are not compared bit for bit
    elsewhere: NumPy adds a chunk pairwise.)"""
    args = _reduction_inputs(name, dtype, specials)
    chunk = numba_module(name)._reduce_chunk
    with np.errstate(all="ignore"):  # the squares of 1e30 overflow in float32, as compiled
        python = chunk.py_func(*args)
    assert _sums_bits(chunk(*args)) == _sums_bits(python)


def test_the_reduction_bit_check_sees_a_reassociated_sum() -> None:
    """The check above tells a compiled pass that reorders the additions (fastmath) apart."""
    args = _reduction_inputs("lamb", np.float32)
    chunk = numba_module("lamb")._reduce_chunk
    loose = numba.njit(fastmath=True)(chunk.py_func)
    assert _sums_bits(chunk(*args)) == _sums_bits(chunk.py_func(*args))
    assert _sums_bits(loose(*args)) != _sums_bits(chunk.py_func(*args))


NOISY = [n for n in RULE_NAMES if ALL_RULES[n].draws]
KEYS = [0, 1, 2**63 - 1, stream_seed(5, 3), stream_seed(tensor_seed(7, 2), 40)]


@numba.njit
def _philox_table(key: int, counters: np.ndarray) -> np.ndarray:
    out = np.empty((4, counters.shape[0]), np.uint64)
    for i in range(counters.shape[0]):
        out[0, i], out[1, i], out[2, i], out[3, i] = numba_math.philox_words(key, counters[i])
    return out


@pytest.mark.parametrize("key", KEYS)
def test_compiled_philox_words_are_the_numpy_stream(key: int) -> None:
    """The compiled Philox-4x32-10 gives philox.randint4x's four words to the bit, for keys
    with either half zero or all ones and counters past 2**32 (the high counter word)."""
    rng = np.random.default_rng(key % 2**32)
    counters = np.concatenate([np.arange(1000), rng.integers(0, 2**62, 1000), [2**62]])
    got = _philox_table(key, counters.astype(np.int64))
    want = randint4x(key, counters)
    for k in range(4):
        assert np.all(got[k] < 2**32) and np.array_equal(got[k].astype(np.uint32), want[k]), k


@pytest.mark.parametrize(("count", "index"), [(1, 0), (3, 2)])
def test_compiled_normals_uniforms_exact_normals_within_4_ulp(count: int, index: int) -> None:
    """``normals``: the Box-Muller inputs (u1 clamped, theta) are the NumPy module's bits; the
    normals, through float32 log and cos rounded from float64 where NumPy runs its own SIMD
    routines, within 4 ulp of
    ``philox.randn`` over 2**20 draws, most of them equal (the bound is not vacuous: it is the
    largest difference seen, and a stream off by one counter fails it)."""
    n, first, key = 2**20, 12345, stream_seed(7, 1)
    counters = np.arange(first, first + n, dtype=np.int64) * count + index
    scratch = np.empty((2, n), np.float32)
    out = np.empty(n, np.float32)
    numba_math.normals(key, first, count, index, scratch, out)
    words = randint4x(key, counters)
    assert np.array_equal(scratch[0], np.maximum(np.float32(1e-7), uniform(words[0])))
    assert np.array_equal(scratch[1], np.float32(6.283185307179586) * uniform(words[1]))
    want = randn(key, counters)
    apart = np.abs(out.view(np.int32).astype(np.int64) - want.view(np.int32).astype(np.int64))
    assert apart.max() <= 4 and (apart == 0).mean() > 0.5
    numba_math.normals(key, first + 1, count, index, scratch, out)
    shifted = np.abs(out.astype(np.float64) - want)
    assert shifted.max() > 1.0  # another counter's normals: the comparison sees it


def _noise(key: int, offset: int, n: int, count: int, index: int) -> tuple[np.ndarray, ...]:
    """The NumPy module's normals of elements offset..offset+n and the compiled ones."""
    counters = (np.arange(n, dtype=np.int64) + offset) * count + index
    compiled_ = np.empty(n, np.float32)
    numba_math.normals(key, offset, count, index, np.empty((2, n), np.float32), compiled_)
    return randn(key, counters), compiled_


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", NOISY)
def test_noisy_step_is_numpys_wherever_the_noise_is(name: str, dtype: type) -> None:
    """One step of the compiled module from the NumPy module's weights (``step`` with a noise
    offset, ``step_multi`` with stream ids and offsets: tensor j on the stream
    ``tensor_seed(seed, k)``): to the bit wherever the compiled normal equals NumPy's (most
    elements: checked), within a float32 ulp of the noise's scale elsewhere. Tensors of several
    chunks and draw blocks with tails, tiny and empty; clipping on and off."""
    ref, nb = numpy_module(name), numba_module(name)
    [draw] = ALL_RULES[name].draws  # one draw per element (this test's noise model)
    rng = np.random.default_rng(1)
    shapes, offsets, streams = [(300, 7), (70001,), (3,), (0,)], [0, 17, 2**40, 5], [4, 0, 9, 1]
    for t, clip in [(1, None), (2, 0.5), (3, None)]:
        hp = {"seed": 11, "lr": 0.1, "wd": 0.01, "clip_gradient": clip}
        weights = [rng.standard_normal(s).astype(dtype) for s in shapes]
        grads = [(rng.standard_normal(s) * 3).astype(dtype) for s in shapes]
        want = [w.copy() for w in weights]
        single = [w.copy() for w in weights]
        multi = [w.copy() for w in weights]
        for j, (w, g) in enumerate(zip(want, grads, strict=True)):
            seed = tensor_seed(hp["seed"], streams[j])
            ref.step(w, g, {}, t, **{**hp, "seed": seed}, noise_offset=offsets[j])
            nb.step(single[j], g, {}, t, **{**hp, "seed": seed}, noise_offset=offsets[j])
        nb.step_multi(
            multi, grads, [{} for _ in shapes], t, stream_ids=streams, noise_offsets=offsets, **hp
        )
        for j, (x, s) in enumerate(zip(want, shapes, strict=True)):
            key = stream_seed(tensor_seed(hp["seed"], streams[j]), t)
            ours, theirs = _noise(key, offsets[j], x.size, 1, 0)
            same = (ours == theirs).reshape(s)
            assert same.size == 0 or same.mean() > 0.5, (name, j)
            for got in (single[j], multi[j]):
                assert np.array_equal(bits(got[same]), bits(x[same])), (name, dtype, j, draw)
                apart = np.abs(got[~same].astype(np.float64) - x[~same])
                assert np.all(apart <= 8 * np.finfo(np.float32).eps * (1 + np.abs(x[~same])))


@numba.njit
def _cube_roots(x: np.ndarray, out: np.ndarray) -> None:
    for i in range(x.shape[0]):
        out[i] = numba_math.cbrt(x[i])


def test_float32_cbrt_is_float64s_rounded_and_its_python_body_the_same() -> None:
    """``numba_math.cbrt`` of float32 (float64 Newton and Halley steps, vectorised) equals
    ``float32(cbrt(float64(x)))`` on 2**20 random positive float32 bit patterns (subnormals,
    huge values) and at zeros, inf, NaN and exact cubes (a one-off run found it equal on every
    positive finite float32); its Python body gives the same bits; NumPy's own float32 np.cbrt,
    which the NumPy module calls, is up to 2 ulp from it."""
    rng = np.random.default_rng(3)
    bits_ = rng.integers(1, 0x7F800000, 2**20, dtype=np.int64).astype(np.int32)
    special = [0.0, -0.0, np.inf, np.nan, 1.0, 8.0, 27.0, 1e-45, 3.4028235e38, 1.1754942e-38]
    x = np.concatenate([bits_.view(np.float32), np.array(special, np.float32)])
    got = np.empty_like(x)
    _cube_roots(x, got)
    want = np.cbrt(x.astype(np.float64)).astype(np.float32)
    assert np.array_equal(bits(got), bits(want))  # -0.0 -> -0.0, NaN's bits kept
    python = np.array([numba_math.cbrt(v) for v in x[::257]], dtype=np.float32)
    assert np.array_equal(bits(python), bits(got[::257]))
    apart = np.abs(
        np.cbrt(x).view(np.int32).astype(np.int64) - want.view(np.int32).astype(np.int64)
    )
    assert 0 < apart.max() <= 2  # NumPy's float32 root: why the module compares within ulps
    wide = rng.standard_normal(1000) ** 2 * 1e5
    out64 = np.empty_like(wide)
    _cube_roots(wide, out64)
    np.testing.assert_array_max_ulp(out64, np.cbrt(wide), maxulp=2)  # float64: libm's cbrt


@numba.njit
def _box_muller_parts(u: np.ndarray, theta: np.ndarray, logs: np.ndarray, cos: np.ndarray) -> None:
    for i in range(u.shape[0]):
        logs[i] = numba_math._log_of(u[i])
    for i in range(theta.shape[0]):
        cos[i] = numba_math._cos_of(theta[i])


def test_box_muller_log_and_cos_are_float64s_rounded() -> None:
    """The normals' float32 log (of u1 in [1e-7, 1)) and cosine (of theta in [0, 2 pi]) equal
    ``float32(np.log(float64))`` and ``float32(np.cos(float64))`` on 2**20 random float32s of
    those ranges and at their ends and quadrant edges (a one-off run found them equal on every
    float32 of both ranges); NumPy's float32 routines, which the NumPy module calls, are not."""
    rng = np.random.default_rng(4)
    lo, hi = np.float32(2.0**-24).view(np.int32), np.float32(1.0).view(np.int32)
    u = rng.integers(lo, hi, 2**20).astype(np.int32).view(np.float32)
    u = np.concatenate([u, np.float32([1e-7, 2.0**-24, 0.5, np.nextafter(1, 0), 1.0])])
    quarter = np.float32(np.pi / 2) * np.arange(5, dtype=np.float32)
    edges = np.concatenate([quarter, np.nextafter(quarter, 0), np.nextafter(quarter, 7)])
    theta = np.concatenate([rng.random(2**20, np.float32) * np.float32(6.2831855), edges])
    theta = np.clip(theta, 0, np.float32(6.2831855))
    logs, cos = np.empty_like(u), np.empty_like(theta)
    _box_muller_parts(u, theta, logs, cos)
    assert np.array_equal(logs, np.log(u.astype(np.float64)).astype(np.float32))
    assert np.array_equal(cos, np.cos(theta.astype(np.float64)).astype(np.float32))
    numpy_apart = (np.log(u) != logs).mean() + (np.cos(theta) != cos).mean()
    assert numpy_apart > 0  # NumPy's own float32 routines: the normals' last bits differ there


NOISE_REFUSALS = {
    "negative offset": ({"noise_offset": -1}, "noise offset -1"),
    "bool offset": ({"noise_offset": True}, "noise offset True"),
    "offset past 2**62": ({"noise_offset": 2**62 + 1}, "noise offset"),
    "offsets for two": ({"noise_offsets": [0, 1]}, "noise offsets must be a sequence of 1"),
    "streams for two": ({"stream_ids": [0, 1]}, "stream_ids must be a sequence of 1"),
    "negative stream": ({"stream_ids": [-1]}, "stream id -1"),
}


@pytest.mark.parametrize("case", list(NOISE_REFUSALS))
@pytest.mark.parametrize("name", NOISY)
def test_noise_arguments_refused_before_any_write(name: str, case: str) -> None:
    """A bad noise offset or stream id is refused, naming it, before the weight is touched
    (``step`` takes ``noise_offset``; ``step_multi`` and ``step_prechecked`` the lists)."""
    nb = numba_module(name)
    kwargs, message = NOISE_REFUSALS[case]
    w, g = np.ones(70001, np.float32), np.ones(70001, np.float32)
    multi = "noise_offset" not in kwargs
    calls = [nb.step_multi, nb.step_prechecked] if multi else [nb.step]
    for call in calls:
        with pytest.raises(ValueError, match=message):
            call([w], [g], [{}], 1, **kwargs) if multi else call(w, g, {}, 1, **kwargs)
        assert np.array_equal(w, np.ones_like(w)), (case, call.__name__)
