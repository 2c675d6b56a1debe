"""The compiled modules (tests/test_numba.py) of the row and column rules (``vector_values``:
Adafactor, CAME, SM3) against the NumPy reference on every kind of tile
(``optgen_runtime.numba_tiles``); a many-tensor step against each tensor stepped alone, host
scalars shared by tensors of one shape, chained sweeps against one call per sweep; each compiled
sweep and lane fold against its own Python code to the bit.
"""

from __future__ import annotations

import inspect
import itertools

import numpy as np
import pytest
from conftest import ALL_RULES, RULE_NAMES, numba_module, numpy_module, tolerance

# ---------------------------------------------------------------------------- row/column rules
ROW_COLUMN = [n for n in RULE_NAMES if ALL_RULES[n].vector_values]
# every kind of tile (optgen_runtime.numba_tiles): runs of whole matrices (a batch of small
# ones), blocks of rows (tall), blocks of columns (wide, and a long 1-D weight), empty ones
TILED_SHAPES = [(300, 7), (70001,), (400, 300), (3, 70, 1000), (2, 40000), (5, 0), (0,), (1,)]
TILED_SHAPES += [(0, 3, 4)]


def _tile_kinds(shape: tuple[int, ...]) -> set[str]:
    from optgen_runtime.common import matrix_dims
    from optgen_runtime.numba_tiles import Tiling

    dims = matrix_dims(shape)
    kinds = set()
    for _b0, _b1, r0, r1, c0, c1 in Tiling(dims).table.tolist():
        if (r0, r1, c0, c1) == (0, dims[1], 0, dims[2]):
            kinds.add("matrices")
        elif (c0, c1) == (0, dims[2]):
            kinds.add("rows")
        else:
            kinds.add("columns")
    return kinds


def test_the_tiled_shapes_cover_every_kind_of_tile() -> None:
    from optgen_runtime.common import matrix_dims
    from optgen_runtime.numba_tiles import Tiling

    found = set().union(*map(_tile_kinds, TILED_SHAPES))
    assert found == {"matrices", "rows", "columns"}
    # both the parallel loops and their serial twins (one tile, short vectors) run below
    tilings = [Tiling.of(matrix_dims(s)) for s in TILED_SHAPES]
    assert {t.serial for t in tilings} == {True, False}
    assert {t.serial_along["bc"] for t in tilings} == {True, False}


@pytest.mark.parametrize("module", ["numpy", "numba"])
@pytest.mark.parametrize("name", ROW_COLUMN)
def test_a_many_tensor_step_equals_each_tensor_stepped_alone(name: str, module: str) -> None:
    """``step_multi`` computes each sweep's host scalars once per distinct value of what they
    read (the stepper's ``memo``: the step count, the tensor's sizes, earlier sums): tensors of
    other shapes and step counts in one call must each get their own, to the bit what
    ``step`` computes for the tensor alone; and tensors of one shape share them (computed
    once per sweep, not per tensor)."""
    mod = numpy_module(name) if module == "numpy" else numba_module(name)
    shapes = [(300, 7), (7, 300), (300, 7), (5,), (4, 6, 8), (300, 7), (70001,), (9, 2)]
    counts = [1, 3, 3, 2, 5, 3, 1, 4]
    rng = np.random.default_rng(8)
    alone = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    together = [w.copy() for w in alone]
    sa, sb = [mod.init_state(w) for w in alone], [mod.init_state(w) for w in together]
    for _ in range(2):
        grads = [(rng.standard_normal(s) * 3).astype(np.float32) for s in shapes]
        for w, g, s, t in zip(alone, grads, sa, counts, strict=True):
            mod.step(w, g, s, t)
        mod.step_multi(together, grads, sb, counts)
    for shape, wa, wb, xa, xb in zip(shapes, alone, together, sa, sb, strict=True):
        assert np.array_equal(wa, wb), (name, shape)
        for k in mod.STATES:
            assert np.array_equal(xa[k], xb[k]), (name, shape, k)


def test_tensors_of_one_shape_share_their_host_scalars(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adafactor's second sweep reads the step count and the column count: ten tensors of one
    shape at one step count compute its scalars once."""
    mod = numba_module("adafactor")
    calls: list[str] = []
    original = mod.computed
    monkeypatch.setattr(
        mod,
        "computed",
        lambda rule, f, *a, **k: (calls.append(f.__name__), original(rule, f, *a, **k))[1],
    )
    weights = [np.ones((30, 20), np.float32) for _ in range(10)]
    states = [mod.init_state(w) for w in weights]
    mod.step_multi(weights, [np.ones_like(w) for w in weights], states, 1)
    assert calls.count("reduction_scalars_2") == 1
    assert calls.count("host_scalars") == 10  # it reads each tensor's sums


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ROW_COLUMN)
def test_row_column_rules_equal_numpy_on_every_kind_of_tile(name: str, dtype: type) -> None:
    """The compiled tile loops (sums in float64 in lanes, tile after tile) against the NumPy
    module's (pairwise per tile) over three steps of ``step_multi``, within the sums' rounding."""
    ref, nb = numpy_module(name), numba_module(name)
    rng = np.random.default_rng(3)
    a = [rng.standard_normal(s).astype(dtype) for s in TILED_SHAPES]
    b = [w.copy() for w in a]
    sa, sb = [ref.init_state(w) for w in a], [nb.init_state(w) for w in b]
    for t in range(1, 4):
        grads = [(rng.standard_normal(s) * 3).astype(dtype) for s in TILED_SHAPES]
        with np.errstate(all="ignore"):  # CAME's 0/0 on an empty weight, in both modules
            ref.step_multi(a, grads, sa, t)
            nb.step_multi(b, grads, sb, t)
    for shape, wa, wb, xa, xb in zip(TILED_SHAPES, a, b, sa, sb, strict=True):
        for label, x, y in [("weight", wa, wb)] + [(k, xa[k], xb[k]) for k in nb.STATES]:
            np.testing.assert_allclose(
                y, x, **tolerance(dtype, steps=3), err_msg=f"{name} {shape} {label}"
            )


@pytest.mark.parametrize("name", ROW_COLUMN)
def test_a_whole_partial_handed_on_in_float64_gives_the_cast_copys_bits(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """A per-row or per-column reduction whose every tile spans the reduced axis (a long 1-D
    weight's columns, a tall matrix's rows) is its vector already: from a sweep's own buffer
    (over KEEP) it goes on to the next sweeps in float64, which load it cast to the weight's
    dtype; from the kept scratch, as a cast copy. Both to the bit, float32 weights (where a load
    left uncast would compute in float64)."""
    from optgen_runtime import numba_tiles

    nb = numba_module(name)
    shapes = [(70001,), (400, 300), (2, 40000), (300, 7)]
    handed: list[np.dtype] = []
    combine = numba_tiles.Tiling.combine

    def spy(self: object, kinds: dict, axes: dict, names: list, *args: object) -> None:
        combine(self, kinds, axes, names, *args)  # type: ignore[arg-type]
        vectors = args[3]
        handed.extend(vectors[n].dtype for n in names if n in vectors)  # type: ignore[index]

    monkeypatch.setattr(numba_tiles.Tiling, "combine", spy)
    runs = []
    for keep in (numba_tiles.KEEP, 0):
        monkeypatch.setattr(numba_tiles, "KEEP", keep)
        monkeypatch.setattr(numba_tiles._SCRATCH, "buffer", None, raising=False)
        handed.clear()
        rng = np.random.default_rng(4)
        weights = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        states = [nb.init_state(w) for w in weights]
        for t in range(1, 3):
            grads = [(rng.standard_normal(s) * 3).astype(np.float32) for s in shapes]
            nb.step_multi(weights, grads, states, t)
        runs.append((weights, states))
        assert (np.dtype(np.float64) in handed) == (keep == 0), (name, keep, handed)
    (wa, sa), (wb, sb) = runs
    for shape, x, y, xs, ys in zip(shapes, wa, wb, sa, sb, strict=True):
        assert np.array_equal(x, y), (name, shape)
        for k in nb.STATES:
            assert np.array_equal(xs[k], ys[k]), (name, shape, k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ROW_COLUMN)
def test_chained_sweeps_equal_the_sweeps_one_call_each(
    monkeypatch: pytest.MonkeyPatch, name: str, dtype: type
) -> None:
    """A weight of one tile with short vectors runs its sweeps in chains (one compiled call per
    run of sweeps, the partials combined in the call): the same bits as a call and a
    combination in Python per sweep (the path a sharded step, or a larger weight, takes), over
    three steps of small weights of every kind (runs of matrices, a row, a column, a zero
    gradient) beside one that is not chained."""
    nb = numba_module(name)
    shapes = [(300, 7), (7, 300), (5,), (4, 6, 8), (40, 5, 6), (1,), (400, 300)]
    chains = sorted(k for k in dir(nb) if k.startswith("_chain"))
    assert chains, name
    runs = []
    for chained in (True, False):
        calls: list[str] = []
        for k in chains:
            kernel = getattr(nb, k)
            monkeypatch.setattr(
                nb, k, lambda *a, _k=k, _f=kernel, _c=calls: (_c.append(_k), _f(*a))[1]
            )
        monkeypatch.setattr(nb, "shards_combined", lambda _c=chained: not _c)
        rng = np.random.default_rng(12)
        weights = [rng.standard_normal(s).astype(dtype) for s in shapes]
        states = [nb.init_state(w) for w in weights]
        for t in range(1, 4):
            grads = [(rng.standard_normal(s) * 3).astype(dtype) for s in shapes]
            grads[2][:] = 0.0
            nb.step_multi(weights, grads, states, t)
        runs.append((weights, states))
        # every chained weight (all but the last) runs every chain each step
        assert len(calls) == (3 * (len(shapes) - 1) * len(chains) if chained else 0), calls
        monkeypatch.undo()
    (wa, sa), (wb, sb) = runs
    for shape, x, y, xs, ys in zip(shapes, wa, wb, sa, sb, strict=True):
        assert np.array_equal(x, y), (name, shape)
        for k in nb.STATES:
            assert np.array_equal(xs[k], ys[k]), (name, shape, k)


def _sweep_arguments(
    name: str, kernel: object, dtype: type, rng: np.random.Generator, dims: tuple[int, int, int]
) -> list:
    """A compiled tile sweep's arguments on a weight of ``dims`` (batch, rows, cols), every
    buffer and vector random, NaN in each output slot (each tile writes its own)."""
    from optgen_runtime.numba_tiles import Tiling

    rule = ALL_RULES[name]
    tiling = Tiling(dims)
    args: list = []
    for param in inspect.signature(kernel.py_func).parameters:  # type: ignore[attr-defined]
        if param in ("_tiles", "_offsets"):
            args.append(tiling.table if param == "_tiles" else tiling.offsets)
        elif param == "_whole":
            args.append(np.full((len(tiling.table), 4), np.nan))
        elif param == "_parts":
            args.append(np.full((4, tiling.width), np.nan))
        elif param == "_sums":  # a vector sweep's: per matrix
            args.append(np.full((dims[0], 4), np.nan))
        elif param.endswith("_buf"):
            symbol = next(
                s for s in [*rule.element_inputs, *rule.vector_values] if s.name == param[:-4]
            )
            domain = "".join(a for a in "brc" if a in rule.domain(symbol)) or "brc"
            shape = tuple(n if a in domain else 1 for n, a in zip(dims, "brc", strict=True))
            args.append(np.abs(rng.standard_normal(shape)).astype(dtype) + dtype(0.1))
        else:  # a host scalar
            args.append(dtype(rng.uniform(0.5, 2.0)))
    return args


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ROW_COLUMN)
def test_a_compiled_tile_sweep_is_its_python_code_to_the_bit(
    monkeypatch: pytest.MonkeyPatch, name: str, dtype: type
) -> None:
    """Each sweep's kernel (over tiles of the elements, or over whole vectors), compiled (its
    blocks vectorised, folded into lanes), against the same function run by Python on NumPy
    scalars: the same partials and vectors to the bit, so the compiled loops keep the order the
    source states (no reassociation)."""
    from optgen_runtime import numba_tiles

    monkeypatch.setattr(numba_tiles, "TILE", 1000)
    numba_tiles._tiles.cache_clear()
    nb = numba_module(name)
    kernels = [getattr(nb, k) for k in dir(nb) if k.startswith("_sweep")]
    assert kernels, name
    # tiles of 1,000 elements at least: blocks of columns, of rows, runs of whole matrices
    try:
        for kernel, dims in itertools.product(kernels, [(2, 37, 300), (2, 300, 37), (40, 5, 6)]):
            rng = np.random.default_rng(11)
            args = _sweep_arguments(name, kernel, dtype, rng, dims)
            py_args = [x.copy() if isinstance(x, np.ndarray) else x for x in args]
            kernel(*args)
            with np.errstate(all="ignore"):
                kernel.py_func(*py_args)
            for got, want in zip(args, py_args, strict=True):  # every output, inputs unchanged
                if isinstance(got, np.ndarray):
                    assert np.array_equal(got, want, equal_nan=True), kernel.__name__
    finally:
        numba_tiles._tiles.cache_clear()


def test_lane_folds_and_totals_are_their_python_code_to_the_bit() -> None:
    """The lane folds and the lanes' totals, compiled, equal their Python code to the bit (NaN
    kept by max and min), whole blocks and tails alike."""
    from optgen_runtime import numba_tiles

    rng = np.random.default_rng(5)
    values = rng.standard_normal(1024) * 10.0 ** rng.integers(-8, 8, 1024)
    values[[3, 700]] = np.nan
    folds = {"sum": numba_tiles.fold_sum, "max": numba_tiles.fold_max, "min": numba_tiles.fold_min}
    totals = {
        "sum": numba_tiles.lanes_sum,
        "max": numba_tiles.lanes_max,
        "min": numba_tiles.lanes_min,
    }
    for kind, fold in folds.items():
        for n in (1024, 1019, 5, 0, 2):
            got, want = np.zeros(8), np.zeros(8)
            fold(got, values[2:] if n == 2 else values, n)
            fold.py_func(want, values[2:] if n == 2 else values, n)
            assert np.array_equal(got, want, equal_nan=True), (kind, n)
            total = totals[kind]
            assert np.array_equal(total(got), total.py_func(want), equal_nan=True), (kind, n)
    lanes = np.zeros(8)
    numba_tiles.fold_sum(lanes, np.nan_to_num(values), 1024)
    pairwise = float(np.sum(np.nan_to_num(values)))
    assert numba_tiles.lanes_sum(lanes) != pairwise  # an order of its own
