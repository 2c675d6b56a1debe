"""The NumPy target: a chunked, in-place reference module per rule (``generated/numpy``).

Each operation is one ufunc call writing into a preallocated chunk buffer (``out=``); the storage
of every value (input chunk views, reused scratch rows, masks) is decided by
:func:`codegen.targets.numpy_storage.allocate`. Python float literals are weak under NumPy 2's
promotion rules (NEP 50), so they never promote a float32 array; host scalars are cast to the
array dtype by the template.
"""

from __future__ import annotations

from typing import ClassVar

import sympy as sp

from codegen import names, ops
from codegen.ir import Operand
from codegen.lowered import Lowered, Op
from codegen.spec import Rule, SpecError, State
from codegen.targets import Target
from codegen.targets.host import CommentedLines, HostCode, literal
from codegen.targets.host_program import reduce_scalars_name, reduction_scalars_name
from codegen.targets.numpy_storage import Allocation, allocate
from codegen.targets.rules import exported, natural, variant_context


class NumpyOpPrinter(CommentedLines):
    """NumPy: each op is one ufunc call writing into a preallocated chunk buffer (``out=``)."""

    UFUNC: ClassVar[dict[str, str]] = {
        "add": "np.add",
        "sub": "np.subtract",
        "mul": "np.multiply",
        "div": "np.divide",
        "neg": "np.negative",
        "copy": "np.copyto",
        "sqrt": "np.sqrt",
        "abs": "np.absolute",
        "sign": "np.sign",  # sign(0) = 0, sign(NaN) = NaN
        "max": "np.maximum",  # NaN-propagating
        "min": "np.minimum",  # NaN-propagating
        "exp": "np.exp",
        "log": "np.log",
        "tanh": "np.tanh",
        "softplus": "np.logaddexp",  # logaddexp(0, a) = log(1 + exp(a)), computed stably
        "cbrt": "np.cbrt",  # then NaN where a < 0 (codegen/ops.py)
        "pow": "np.power",  # a float32 array ** a weak Python float: float32; NaN guard below
        "gt": "np.greater",
        "ge": "np.greater_equal",
        "lt": "np.less",
        "le": "np.less_equal",
        "ne": "np.not_equal",
        "where": "np.where",
    }

    def __init__(self, allocation: Allocation, host: set[sp.Symbol]) -> None:
        self.allocation = allocation
        self.host = host

    def name(self, operand: Operand) -> str:
        """Arrays by their chunk view, scratch by its buffer, host scalars by name."""
        if not isinstance(operand, sp.Symbol):
            return literal(operand)
        where = self.allocation.storage.get(operand)
        if where is None:
            return operand.name  # a host scalar
        kind, what = where
        if kind == "scratch":
            return f"{names.Temps.PREFIXES['scratch']}{what}"
        return f"{names.TEMP_PREFIX}{what}"  # chunk view of an input buffer, or a mask

    def op(self, op: Op) -> str:
        dest = self.name(op.dest)
        args = ", ".join(self.name(a) for a in op.args)
        fn = self.UFUNC[op.kind]
        if op.kind == "copy":
            return f"{fn}({dest}, {args})"
        if op.kind == "where" and self.allocation.storage[op.dest][0] == "bool":
            return self.select_mask(dest, *(self.name(a) for a in op.args))
        if op.kind == "where":
            return self.select(dest, *(self.name(a) for a in op.args))
        if op.kind in ops.BOOLEAN:
            return f"{dest} = {fn}({args})"
        if op.kind == "softplus":
            return f"{fn}(0.0, {args}, out={dest})"
        if op.kind == "cbrt":  # np.cbrt is the odd real root; cbrt(a) < 0 exactly where a < 0
            return f"{fn}({args}, out={dest})\nnp.copyto({dest}, np.nan, where={dest} < 0.0)"
        if op.kind == "pow" and not op.args[1].is_integer:  # NaN for a < 0 (-inf included)
            base = self.name(op.args[0])
            guard = f"np.copyto({dest}, np.nan, where={base} < 0.0)"
            if base == dest:  # the base is dead: guard it first (pow(NaN) is NaN)
                return f"{guard}\n{fn}({args}, out={dest})"
            return f"{fn}({args}, out={dest})\n{guard}"
        call = f"{fn}({args}, out={dest})"
        identity = self.identity_bound(op)
        if identity is not None:
            return f"if {identity}:\n    {call}"
        return call

    @staticmethod
    def select(dest: str, mask: str, a: str, b: str) -> str:
        """``dest = where(mask, a, b)`` in place, without ``np.where``'s chunk-sized result:
        ``b`` is copied in, then ``a`` where the mask holds (the order that leaves an operand
        living in ``dest`` itself intact until it is read)."""
        if dest == a == b:
            return "pass"
        if dest == b:
            return f"np.copyto({dest}, {a}, where={mask})"
        if dest == a:
            return f"np.copyto({dest}, {b}, where=np.logical_not({mask}))"
        return f"np.copyto({dest}, {b})\nnp.copyto({dest}, {a}, where={mask})"

    @staticmethod
    def select_mask(dest: str, mask: str, a: str, b: str) -> str:
        """A select between masks, a mask of its own (one bool array per chunk, as a comparison
        makes; ``np.where`` would be a second): ``m ? m : b`` (``|``) is ``logical_or``,
        ``m ? a : m`` (``&``) ``logical_and``, else ``b`` copied and ``a`` put where ``m`` holds."""
        if a == mask:
            return f"{dest} = np.logical_or({mask}, {b})"
        if b == mask:
            return f"{dest} = np.logical_and({mask}, {a})"
        return f"{dest} = np.copy({b})\nnp.copyto({dest}, {a}, where={mask})"

    def identity_bound(self, op: Op) -> str | None:
        """A clamp by a host scalar that is +-inf is the identity: skip the pass at run time.

        ``max(h, x)`` with h = -inf (and ``min`` with +inf) returns x, NaN included; when x already
        lives in the destination buffer there is nothing to do. This is how ``clip_gradient=None``
        (clip to infinity) costs no pass over the chunk.
        """
        if op.kind not in ("max", "min") or len(op.args) != 2:
            return None
        scalars = [a for a in op.args if a in self.host]
        others = [a for a in op.args if a not in scalars]
        if len(scalars) != 1 or len(others) != 1 or self.name(others[0]) != self.name(op.dest):
            return None
        infinity = "-np.inf" if op.kind == "max" else "np.inf"
        return f"{scalars[0].name} != {infinity}"


ops.require("NumPy", NumpyOpPrinter.UFUNC)


def init_code(rule: Rule, state: State, code: HostCode) -> str:
    """The initial value of a state buffer, as NumPy code (hyperparameters are locals)."""
    expr = state.init
    if state.axis is not None:
        value = literal(expr) if expr != 0 else "0.0"
        return f"np.full(vector_shape(weight.shape, {state.axis}), {value}, dtype=weight.dtype)"
    if expr == rule.weight:
        return "weight.copy()"
    if expr.is_Number:
        return f"np.full_like(weight, {literal(expr) if expr != 0 else '0.0'})"
    if not expr.free_symbols & {rule.weight}:  # hyperparameters: a double, cast by full_like
        return f"np.full_like(weight, {code(expr)})"
    raise SpecError(f"{rule.source}: initial value {expr} must be a constant or the weight itself")


def flat(buffer: str) -> str:
    """The flat view of a buffer in the NumPy module (``_mean_flat``)."""
    return names.TEMP_PREFIX + names.derived(buffer, "_flat")


def unpack(symbols: list[sp.Symbol], source: str) -> str:
    """``a, b = (dtype(_x) for _x in source)``: host scalars cast to the array dtype (NEP 50)."""
    if not symbols:
        return ""
    targets = ", ".join(s.name for s in symbols) + ("," if len(symbols) == 1 else "")
    return f"{targets} = (dtype(_x) for _x in {source})"


REDUCE: dict[str, str] = {  # a chunk's partial, as a Python float (np.max/np.min keep NaN)
    "sum": "float(np.sum({}, dtype=np.float64))",
    "max": "float(np.max({}))",
    "min": "float(np.min({}))",
}


def phase_context(lowered: Lowered, phase: int, host: set[sp.Symbol]) -> dict[str, object]:
    """Reduction phase ``phase``: its chunk function's reads, ops and partials."""
    allocation = allocate(lowered, phase)
    printer = NumpyOpPrinter(allocation, host)
    reductions = lowered.phase_reductions(phase)
    kinds = [lowered.rule.reduction_kinds[r] for r in reductions]
    return {
        "phase": phase,
        "reductions": [str(r) for r in reductions],
        "kinds": kinds,
        "table": reduce_scalars_name(phase),
        "function": reduction_scalars_name(phase),
        "reads": [(s.name, flat(s.name)) for s in lowered.phase_reads(phase)],
        "ops": printer.lines(lowered.reduce_phases[phase - 1]),
        "partials": [
            REDUCE[k].format(printer.name(r)) for r, k in zip(reductions, kinds, strict=True)
        ],
        "unpack": unpack(lowered.phase_host(phase), "pre"),
        "scratch": allocation.scratch,
        "group": [str(r) for r in reductions if r in lowered.rule.group_reductions],
    }


def _domain(domain: frozenset[str]) -> str:
    return "".join(a for a in "brc" if a in domain)


def matrix_sweep(lowered: Lowered, phase: int, host: set[sp.Symbol]) -> dict[str, object]:
    """A sweep of a rule with vectors: over tiles of the (batch, rows, cols) view (an element
    sweep), or over whole vectors at once (a row, column or matrix sweep: small arrays)."""
    rule = lowered.rule
    allocation = allocate(lowered, phase)
    printer = NumpyOpPrinter(allocation, host)
    domain = _domain(lowered.sweep_domain(phase))
    values = lowered.phase_reductions(phase)
    ops_ = lowered.reduce_phases[phase - 1]
    used = {a for op in ops_ for a in op.args if isinstance(a, sp.Symbol)}
    used -= {op.dest for op in ops_}
    vector_reads = [v for v in rule.vector_values if v in used]
    if domain == "brc":
        reads = [
            (s.name, f"_{s.name}_m[_m0:_m1, _r0:_r1, _c0:_c1]") for s in lowered.phase_reads(phase)
        ]
        where = {"br": "[_m0:_m1, _r0:_r1]", "bc": "[_m0:_m1, :, _c0:_c1]", "b": "[_m0:_m1]"}
        reads += [
            (v.name, f'_vectors["{v.name}"]{where[_domain(rule.domain(v))]}') for v in vector_reads
        ]
    else:
        reads = [(v.name, f'_vectors["{v.name}"]') for v in vector_reads]
    partials, maps = [], []
    for v in values:
        name = printer.name(v)
        if v not in rule.reductions:
            maps.append((v.name, name))
            continue
        axis = rule.reduction_axes[v]
        if axis is None:
            partials.append(REDUCE[rule.reduction_kinds[v]].format(name))
            continue
        present = [a for a in "brc" if a in domain]
        along = AXIS[present[axis]] if domain != "brc" else TILE_AXIS[present[axis]]
        fn = {"sum": "np.sum", "max": "np.max", "min": "np.min"}[rule.reduction_kinds[v]]
        dtype = ", dtype=np.float64" if fn == "np.sum" else ""
        partials.append(f"{fn}({name}, axis={along}, keepdims=True{dtype})")
    return {
        "phase": phase,
        "domain": domain,
        "kind": "tiles" if domain == "brc" else "vectors",
        "reductions": [str(v) for v in values if v in rule.reductions],
        "maps": maps,
        "table": reduce_scalars_name(phase),
        "function": reduction_scalars_name(phase),
        "reads": reads,
        "ops": printer.lines(ops_),
        "partials": partials,
        "names": [s.name for s in lowered.phase_host(phase)],
        "memo_key": memo_key(lowered, phase),
        "scratch": allocation.scratch,
    }


def memo_key(lowered: Lowered, phase: int) -> str:
    """The key of a reduction phase's host scalars in a many-tensor call's memo (the matrix
    stepper's ``memo``): the phase, the weight's dtype and every value they read besides the
    call's hyperparameters (the step count, the tensor's sizes, host states, step scalars and
    earlier sums), as Python expressions. Tensors with equal keys have equal scalars: computed
    and checked once."""
    rule = lowered.rule
    hypers = {h.symbol for h in rule.hypers.values()}
    where = {rule.t: "t"}
    where |= {s: f"_sizes[{s.name!r}]" for s in rule.sizes}
    where |= {h.symbol: f"host[{h.name!r}]" for h in rule.host_states.values()}
    where |= {x.symbol: f"given[{x.name!r}]" for x in rule.scalars.values()}
    where |= {r: f"sums[{r.name!r}]" for r in rule.scalar_reductions}
    read: set[sp.Symbol] = set()
    for s in lowered.phase_host(phase):
        read |= lowered.host_value(s).free_symbols
    unknown = read - hypers - set(where)
    if unknown:  # a codegen bug, not a spec's: every host input is one of the above
        raise AssertionError(f"{rule.name}: phase {phase} reads {sorted(map(str, unknown))}")
    parts = [str(phase), "dtype"] + sorted(where[s] for s in read if s in where)
    return "(" + ", ".join(parts) + ")"


# Axis of a tile and of a whole vector (both 3-D: batch, rows, cols) per name.
TILE_AXIS = {"r": 1, "c": 2}
AXIS = {"r": 1, "c": 2}


def context(lowered: Lowered) -> dict[str, object]:
    rule = lowered.rule
    host = set(lowered.host)
    allocation = allocate(lowered)
    matrix = bool(rule.vector_values)
    if (matrix or rule.group_reductions) and (rule.inputs or rule.scalars):
        extra = ", ".join([*rule.inputs, *rule.scalars])
        raise SpecError(
            f"{rule.source}: inputs ({extra}) are not supported yet in a rule with row or column "
            "states, axis reductions or group reductions"
        )
    count = len(lowered.reduce_phases) + 1
    if matrix:
        phases = [matrix_sweep(lowered, k, host) for k in range(1, count)]
    else:
        phases = [phase_context(lowered, k, host) for k in range(1, count)]
    rules_names = exported(lowered)
    code = HostCode()
    used = {a for op in lowered.ops for a in op.args if isinstance(a, sp.Symbol)}
    where = {"br": "[_m0:_m1, _r0:_r1]", "bc": "[_m0:_m1, :, _c0:_c1]", "b": "[_m0:_m1]"}
    # A rule with reductions steps as a generator (``_stepper``): its scalars depend on the data,
    # so a many-tensor call reduces and checks every tensor before any writes. ``step_multi``
    # for it too, except with variants or noise draws (the torch classes loop over tensors).
    variants = variant_context(rule)
    staged = bool(phases)
    multi = bool(rule.group_reductions) or (
        staged and not variants["variants"] and not lowered.draws
    )
    return {
        **variants,
        "rule": rule,
        "staged": staged,
        "multi": multi,
        "doc": rule.doc,
        # host states fed by the step's sums may turn NaN: checked before any write
        "host_fed": bool(rule.host_states and rule.scalar_reductions),
        "rules_names": rules_names,
        "exports": sorted(
            [*rules_names, "init_state", "step", *(["step_multi"] if multi else [])], key=natural
        ),
        "group": [str(r) for r in rule.group_reductions],
        "matrix": matrix,
        "compiled": False,  # the numba module's row/column rules: compiled tile loops
        "flats": [flat(s.name) for s in rule.element_inputs],
        "matrices": [f"_{s.name}_m" for s in rule.element_inputs],
        "buffer_flats": [(s.name, flat(s.name)) for s in rule.element_inputs],
        "tile_reads": [
            (s.name, f"_{s.name}_m[_m0:_m1, _r0:_r1, _c0:_c1]") for s in rule.element_inputs
        ]
        + [
            (v.name, f'_vectors["{v.name}"]{where[_domain(rule.domain(v))]}')
            for v in rule.vector_values
            if v in used
        ],
        "vector_states": [(s.name, s.new.name) for s in rule.vector_states],
        "states": list(rule.states.values()),
        "inputs": list(rule.inputs),
        "scalar_args": list(rule.scalars),
        "host_states": list(rule.host_states.values()),
        "reductions": [str(r) for r in lowered.summands],
        "phases": phases,
        "sizes": ", **_sizes" if rule.sizes else "",
        "draws": [(d.name, len(rule.draws), rule.draws.index(d)) for d in lowered.draws],
        "init": {s.name: init_code(rule, s, code) for s in rule.states.values()},
        "init_hypers": rule.init_hypers,
        "ops": NumpyOpPrinter(allocation, host).lines(lowered.ops),
        "scratch": max([allocation.scratch, *(p["scratch"] for p in phases)]),
        "copies": [(cur.name, k) for cur, k in allocation.copies],
        "host_unpack": unpack(lowered.update_scalars, "scalars"),
    } | {"uses_math": code.uses_math}  # after everything is printed


TARGET = Target(
    "numpy", "numpy", "numpy_module.py.j2", context, "the NumPy reference (float32, float64)"
)
