"""The NumPy target: a chunked, in-place reference module per rule (``generated/numpy``).

Each operation is one ufunc call writing into a preallocated chunk buffer (``out=``); the storage
of every value (input chunk views, reused scratch rows, masks) is decided here by
:func:`allocate`. Python float literals are weak under NumPy 2's promotion rules (NEP 50), so they
never promote a float32 array; host scalars are cast to the array dtype by the template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import sympy as sp

from codegen import names, ops
from codegen.lower import Lowered, Op, Operand
from codegen.spec import Rule, SpecError
from codegen.targets import Target
from codegen.targets.host import HostCode, literal
from codegen.targets.rules import exported


@dataclass(frozen=True)
class Allocation:
    """Where each per-element value lives while a chunk is computed.

    ``storage[v]`` is ``("array", x)`` (the chunk of input buffer x: outputs are written over
    their own buffer as soon as its old value is dead), ``("scratch", k)`` (a chunk-sized scratch
    buffer, reused once its value is dead) or ``("bool", v)`` (a mask, allocated per chunk).
    ``copies`` are (buffer, scratch) pairs copied back at the end of a chunk, for outputs computed
    while their old value was still needed.
    """

    storage: dict[sp.Symbol, tuple[str, object]]
    scratch: int
    copies: list[tuple[sp.Symbol, int]]


def _masks(operands: tuple, storage: dict) -> bool:
    """True when ``operands`` are masks (a select between comparisons is itself a mask)."""
    return all(
        isinstance(x, sp.logic.boolalg.BooleanAtom)
        or (isinstance(x, sp.Symbol) and storage.get(x, ("",))[0] == "bool")
        for x in operands
    )


def allocate(lowered: Lowered, reduce: bool = False) -> Allocation:
    """Storage for the update ops, or (``reduce``) for the reduction phase's ops."""
    ops_ = lowered.reduce_ops if reduce else lowered.ops
    last_read: dict[sp.Symbol, int] = {}
    for i, op in enumerate(ops_):
        for a in op.args:
            if isinstance(a, sp.Symbol):
                last_read[a] = i
    if reduce:  # each summand is summed after the last op: live to the end of the phase
        last_read.update(dict.fromkeys(lowered.summands, len(ops_)))
    current_of = {} if reduce else {new: cur for cur, new in lowered.outputs.items()}
    storage: dict[sp.Symbol, tuple[str, object]] = {
        s: ("array", s) for s in [*lowered.rule.element_inputs, *lowered.rule.draws]
    }
    free: list[int] = []
    pinned: set[int] = set()
    count = 0
    copies: list[tuple[sp.Symbol, int]] = []

    def take() -> int:
        nonlocal count
        if free:
            free.sort()
            return free.pop(0)
        count += 1
        return count - 1

    for i, op in enumerate(ops_):
        for a in set(op.args):
            where = storage.get(a) if isinstance(a, sp.Symbol) else None
            if where and where[0] == "scratch" and last_read[a] == i and where[1] not in pinned:
                free.append(where[1])  # type: ignore[arg-type]
        if op.dest in current_of:
            cur = current_of[op.dest]
            if last_read.get(cur, -1) <= i:
                storage[op.dest] = ("array", cur)
            else:
                k = take()
                pinned.add(k)
                storage[op.dest] = ("scratch", k)
                copies.append((cur, k))
        elif op.kind in ops.BOOLEAN or (op.kind == "where" and _masks(op.args[1:], storage)):
            storage[op.dest] = ("bool", op.dest)
        else:
            storage[op.dest] = ("scratch", take())
    return Allocation(storage, count, copies)


class NumpyOpPrinter:
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
            return f"{dest} = {fn}({args})"  # a select between masks: a mask of its own
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

    def lines(self, ops_: list[Op]) -> list[str]:
        """Each op, after a comment naming the spec line(s) of the equation it starts."""
        out = []
        for op in ops_:
            out += [f"# {o.comment()}" for o in op.origin]
            out.append(self.op(op))
        return out

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


def init_code(rule: Rule, expr: sp.Expr, code: HostCode) -> str:
    """The initial value of a state buffer, as NumPy code (hyperparameters are locals)."""
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


def context(lowered: Lowered) -> dict[str, object]:
    rule = lowered.rule
    host = set(lowered.host)
    allocation = allocate(lowered)
    reduce_allocation = allocate(lowered, reduce=True)
    reduce_printer = NumpyOpPrinter(reduce_allocation, host)
    rules_names = exported(lowered)
    code = HostCode()
    return {
        "rule": rule,
        "doc": rule.doc,
        "rules_names": rules_names,
        "exports": sorted([*rules_names, "init_state", "step"]),
        "flats": [flat(s.name) for s in rule.element_inputs],
        "reduce_flats": [(s.name, flat(s.name)) for s in lowered.reduce_reads],
        "buffer_flats": [(s.name, flat(s.name)) for s in rule.element_inputs],
        "states": list(rule.states.values()),
        "host_states": list(rule.host_states.values()),
        "reductions": [str(r) for r in lowered.summands],
        "draws": [(d.name, len(rule.draws), rule.draws.index(d)) for d in lowered.draws],
        "init": {s.name: init_code(rule, s.init, code) for s in rule.states.values()},
        "init_hypers": rule.init_hypers,
        "ops": NumpyOpPrinter(allocation, host).lines(lowered.ops),
        "scratch": max(allocation.scratch, reduce_allocation.scratch),
        "copies": [(cur.name, k) for cur, k in allocation.copies],
        "reduce_reads": [s.name for s in lowered.reduce_reads],
        "reduce_ops": reduce_printer.lines(lowered.reduce_ops),
        "reduce_values": [reduce_printer.name(r) for r in lowered.summands],
        "reduce_unpack": unpack(lowered.reduce_host, "pre"),
        "host_unpack": unpack(lowered.update_scalars, "scalars"),
    } | {"uses_math": code.uses_math}  # after everything is printed


TARGET = Target(
    "numpy", "numpy", "numpy_module.py.j2", context, "the NumPy reference (float32, float64)"
)
