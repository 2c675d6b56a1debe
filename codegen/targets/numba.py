"""The numba target: a compiled, multi-threaded CPU module per rule (``generated/numba``).

Each three-address op is one scalar statement in a serial loop over a chunk's elements (LLVM
vectorises it), in the weight's dtype: values load as float32 or float64, host scalars arrive in a
table of that dtype (rounded as the NumPy module rounds them) and every literal is cast to it
(``_T(0.5)``: a bare Python float would promote a float32 expression to float64 in numba). So each
op computes what the NumPy module's ufunc computes on the same operands: +, -, *, /, sqrt,
comparisons, selects, max/min (NumPy's: ``a > b ? a : b`` with a NaN in ``a`` kept) and sign
(NumPy's: sign(-0.0) = 0.0) to the last bit; exp, log, tanh, softplus and pow call the
platform's libm, which may differ from NumPy's own SIMD routines in the last bit, and cbrt is
``numba_math.cbrt`` (float32: float64 Newton and Halley steps that vectorise, rounded once;
NumPy's float32 ``np.cbrt`` is up to 2 ulp off float64's rounded root). Reductions
accumulate each chunk serially (sums in float64) where NumPy sums a chunk pairwise: equal up to
float64 rounding. The update loop reads and writes its buffers through ``load`` and ``store``
(``optgen_runtime.numba_bits``): plain indexing on float32 and float64 arrays; on the uint16 bits
of a bfloat16 weight and gradient (the ``_update_bits`` loops of a module with ``step_tables``, for
the torch classes' fast step; ``_update_master``: a bfloat16 gradient of a float32 master copy, the
bfloat16 parameter rounded from the master chunk by chunk) a widening to float32 and a rounding back
to nearest even, the chunk's dtype ``_T`` float32. Noise draws (``RULE.normal``) are the
NumPy module's Philox stream (``numba_math.normals``: its integers and uniforms to the bit,
its normals, through its own float32 log and cos, within 4 ulp), drawn a block at a time before the
block's update loop. A rule with row/column states and axis reductions (Adafactor, CAME, SM3)
gets the NumPy module's stepper with every sweep compiled: its element sweeps and update as
parallel loops over tiles of the (batch, rows, cols) view (``optgen_runtime.numba_tiles``; a
sweep's sums in float64 in lanes of 8, tile after tile, against NumPy's pairwise sums: equal to
float64 rounding), its sweeps over the row and column vectors as loops over each matrix's
vector (``codegen.targets.numba_rows``). Matrix rules (Muon, AdaMuon) get the NumPy
module's step with each per-element stage one compiled loop (``codegen/matrix_targets.py``).
Rules the target cannot express yet would get a module that runs the NumPy reference and says
so (``COMPILED = False``, ``FALLBACK``); none does today.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import sympy as sp

from codegen import names, ops
from codegen.ir import Operand
from codegen.lowered import Lowered, Op
from codegen.spec import Rule
from codegen.targets import Target
from codegen.targets.host import INFIX_COMPARISONS, CommentedLines, HostCode, literal
from codegen.targets.host_program import legend, reduce_scalars_name, reduction_scalars_name
from codegen.targets.rules import exported, natural, variant_context

DTYPE = "_T"  # the chunk's dtype (float32 or float64), as a callable: literals are cast to it


def _max(a: list[str]) -> str:  # NumPy's maximum: b when equal or b is NaN; a NaN in a kept
    return f"({a[0]} if ({a[0]} > {a[1]} or {a[0]} != {a[0]}) else {a[1]})"


def _min(a: list[str]) -> str:
    return f"({a[0]} if ({a[0]} < {a[1]} or {a[0]} != {a[0]}) else {a[1]})"


class NumbaOpPrinter(CommentedLines):
    """numba: each op is one scalar statement on the chunk's element ``_i``."""

    FORMS: ClassVar[dict[str, Callable[[list[str]], str]]] = {
        "add": lambda a: f"{a[0]} + {a[1]}",
        "sub": lambda a: f"{a[0]} - {a[1]}",
        "mul": lambda a: f"{a[0]} * {a[1]}",
        "div": lambda a: f"{a[0]} / {a[1]}",  # IEEE; x / 0 is inf (error_model="numpy")
        "neg": lambda a: f"-{a[0]}",
        "copy": lambda a: a[0],
        "sqrt": lambda a: f"np.sqrt({a[0]})",
        "abs": lambda a: f"np.abs({a[0]})",
        "sign": lambda a: (
            f"({DTYPE}(1.0) if {a[0]} > 0 else ({DTYPE}(-1.0) if {a[0]} < 0 else "
            f"({a[0]} if {a[0]} != {a[0]} else {DTYPE}(0.0))))"
        ),
        "max": _max,
        "min": _min,
        "exp": lambda a: f"np.exp({a[0]})",
        "log": lambda a: f"np.log({a[0]})",
        "tanh": lambda a: f"np.tanh({a[0]})",
        # NumPy's logaddexp(0, a): a > 0: a + log1p(exp(-a)); else log1p(exp(a)); NaN stays
        "softplus": lambda a: (
            f"({a[0]} + np.log1p(np.exp(-{a[0]})) if {a[0]} > 0 else "
            f"(np.log1p(np.exp({a[0]})) if {a[0]} <= 0 else {a[0]}))"
        ),
        # numba_math.cbrt: float32's vectorises (libm's cbrtf would be a call per element)
        "cbrt": lambda a: f"({DTYPE}(np.nan) if {a[0]} < 0.0 else cbrt({a[0]}))",
        "pow": lambda a: f"{a[0]} ** {a[1]}",  # NaN guard in op() below
        **INFIX_COMPARISONS,
        "where": lambda a: f"({a[1]} if {a[0]} else {a[2]})",
    }

    def name(self, operand: Operand) -> str:
        """Values and host scalars by name; constants cast to the chunk's dtype."""
        if isinstance(operand, sp.Symbol):
            return operand.name
        if isinstance(operand, sp.logic.boolalg.BooleanAtom):
            return "True" if operand is sp.true else "False"
        return f"{DTYPE}({literal(operand)})"

    def __init__(self, identities: dict[sp.Symbol, Operand] | None = None) -> None:
        self.identities = identities or {}  # clamps printed as a copy of their operand

    def op(self, op: Op) -> str:
        if op.dest in self.identities:  # a clamp by an infinite bound: its operand, unchanged
            return f"{self.name(op.dest)} = {self.name(self.identities[op.dest])}"
        a = [self.name(x) for x in op.args]
        expr = self.FORMS[op.kind](a)
        if op.kind == "pow" and not op.args[1].is_integer:  # NaN for a < 0 (-inf included)
            expr = f"({DTYPE}(np.nan) if {a[0]} < 0.0 else {expr})"
        return f"{self.name(op.dest)} = {expr}"


ops.require("numba", NumbaOpPrinter.FORMS)


def identity_clamps(ops_: list[Op], host: list[sp.Symbol]) -> tuple[dict[sp.Symbol, Operand], str]:
    """The clamps of ``ops_`` by one host scalar (``max(h, x)``, ``min(h, x)``), which are the
    identity, NaN included, when h is -inf (max) or +inf (min): (their destinations, the
    condition under which all of them are), as the NumPy printer's ``identity_bound`` skips
    each such pass. ``clip_gradient=None`` (clip to infinity) then costs nothing per element."""
    copies, conditions = {}, set()
    for op in ops_:
        if op.kind not in ("max", "min") or len(op.args) != 2:
            continue
        bounds = [a for a in op.args if a in host]
        if len(bounds) != 1:
            continue
        copies[op.dest] = next(a for a in op.args if a not in host)
        infinity = "-np.inf" if op.kind == "max" else "np.inf"
        conditions.add(f"{bounds[0].name} == {infinity}")
    return copies, " and ".join(sorted(conditions))


# A chunk's partial of each reduction kind: its identity, and how an element joins it (sums in
# float64, max and min NaN-propagating as NumPy's np.max/np.min).
IDENTITY = {"sum": "0.0", "max": "-np.inf", "min": "np.inf"}
ACCUMULATE = {
    "sum": "{acc} += np.float64({x})",
    "max": "{acc} = {acc} if ({acc} != {acc} or {acc} >= {x}) else np.float64({x})",
    "min": "{acc} = {acc} if ({acc} != {acc} or {acc} <= {x}) else np.float64({x})",
}


def _buf(name: str) -> str:
    """A buffer's chunk in a kernel (``mean_buf``); the element it holds is ``mean``."""
    return names.derived(name, "_buf")


def fallback_reason(rule: Rule) -> str | None:
    """Why the rule runs the NumPy reference in its numba module (None: it is compiled)."""
    if rule.vector_values and variant_context(rule)["variants"]:
        return "variants of a rule with row/column states are not compiled yet"
    if rule.vector_values and rule.draws:
        return "noise draws in a rule with row/column states are not compiled yet"
    return None


# A reduction pass whose values take a division or a square root computes REDUCE_BLOCK elements'
# values in a loop with no carried dependency (vectorised), then adds them to the sums in element
# order: the bits of one loop doing both, which runs scalar and is bound by those operations
# (LAMB at 10 M float32 elements, `python -m tools.bench --cpu --rule lamb`: 22.6 -> 14.1-14.7
# ms per step). A pass of products and sums alone stays one loop: bound by memory there, the
# block's scratch made it slower (LARS at 10 M: 8.0-8.4 -> 9.2-10.4 ms).
REDUCE_BLOCK = 1024
BLOCKED_WHEN = {"div", "sqrt"}


def phase_context(lowered: Lowered, phase: int, printer: NumbaOpPrinter) -> dict[str, object]:
    """Reduction phase ``phase``: its chunk function's loads, ops and accumulators."""
    rule = lowered.rule
    reductions = lowered.phase_reductions(phase)
    accs = []
    for k, r in enumerate(reductions):
        kind = rule.reduction_kinds[r]
        acc = f"_p{k}"
        accs.append(
            {
                "acc": acc,
                "init": f"{acc} = {IDENTITY[kind]}",
                # (not _s<k>: the reduction phases' CSE temporaries, codegen/names.py)
                "scratch": f"_block{k} = np.empty({REDUCE_BLOCK}, dtype=np.float64)",
                "store": f"_block{k}[_i] = np.float64({r.name})",
                "accumulate": ACCUMULATE[kind].format(acc=acc, x=r.name),
                "accumulate_block": ACCUMULATE[kind].format(acc=acc, x=f"_block{k}[_i]"),
            }
        )
    reads = lowered.phase_reads(phase)
    return {
        "phase": phase,
        "chunk": names.phased("_reduce_chunk", phase),
        "kernel": names.phased("_reduce", phase),
        "reductions": [str(r) for r in reductions],
        "group": [str(r) for r in reductions if r in rule.group_reductions],
        "table": reduce_scalars_name(phase),
        "function": reduction_scalars_name(phase),
        "reads": [(s.name, _buf(s.name), f"_r{k}") for k, s in enumerate(reads)],
        "block": REDUCE_BLOCK,
        "blocked": bool({op.kind for op in lowered.reduce_phases[phase - 1]} & BLOCKED_WHEN),
        "host_names": [s.name for s in lowered.phase_host(phase)],
        "legend": [f"{n}: {what}" for n, what in legend(lowered, lowered.phase_host(phase))],
        "ops": printer.lines(lowered.reduce_phases[phase - 1]),
        "accs": accs,
    }


def context(lowered: Lowered) -> dict[str, object]:
    rule = lowered.rule
    reason = fallback_reason(rule)
    rules_names = exported(lowered)
    common = {
        "matrix": bool(rule.vector_values),
        "rule": rule,
        "doc": rule.doc,
        "fallback": reason,
        "rules_names": rules_names,
    } | variant_context(rule)
    if reason is not None:
        return common | {"exports": sorted(rules_names, key=natural)}
    if rule.vector_values:
        from codegen.targets.numba_rows import matrix_context

        return matrix_context(lowered, common)
    printer = NumbaOpPrinter()
    phases = [phase_context(lowered, k, printer) for k in range(1, len(lowered.reduce_phases) + 1)]
    code = HostCode()
    copies, unclamped_if = identity_clamps(lowered.ops, lowered.update_scalars)
    # a table of host scalars that depends on the hyperparameters and t alone: step_tables
    # (not with noise: its keys depend on the seed, the step and the tensor's stream)
    tables = not (rule.host_states or lowered.summands or rule.sizes or rule.scalars)
    tables = tables and not lowered.draws
    return (
        common
        | {
            "exports": sorted(
                [*rules_names, "COMPILED", "EVEN_CHUNKS", "FALLBACK", "init_state", "step"]
                + ["step_multi"]
                + ["step_buffers"]
                + ["step_tables"] * tables,
                key=natural,
            ),
            "host_fed": bool(rule.host_states and rule.scalar_reductions),
            # host scalars of every tensor at once (codegen.targets.host_program.columnwise)
            "columnwise": "host_scalars_rows" in rules_names,
            "buffers": [_buf(s.name) for s in rule.element_inputs],
            "reads": [(s.name, _buf(s.name)) for s in lowered.reads],
            "stores": [
                (_buf(cur.name), new.name)
                for cur, new in sorted(
                    lowered.outputs.items(), key=lambda p: rule.element_inputs.index(p[0])
                )
            ],
            "inputs": list(rule.inputs),
            # (name, draws per element, this one's index): its counter is element * count + index
            "draws": [(d.name, len(rule.draws), rule.draws.index(d)) for d in lowered.draws],
            "scalar_args": list(rule.scalars),
            "host_states": bool(rule.host_states),
            "sizes": bool(rule.sizes),
            "group": [str(r) for r in rule.group_reductions],
            "memo": not (rule.host_states or lowered.summands),
            "tables": tables,
            "host_names": [s.name for s in lowered.update_scalars],
            "legend": [f"{n}: {what}" for n, what in legend(lowered, lowered.update_scalars)],
            # the update loops: without the clamps when every bound is infinite, then in full
            "loops": [(unclamped_if, NumbaOpPrinter(copies).lines(lowered.ops))] * bool(copies)
            + [("", printer.lines(lowered.ops))],
            "phases": phases,
        }
        | {"uses_math": code.uses_math}
        | {"uses_cbrt": any(op.kind == "cbrt" for op in [*lowered.ops, *lowered.reduce_ops])}
    )


TARGET = Target(
    "numba",
    "numba",
    "numba_module.py.j2",
    context,
    "compiled, multi-threaded CPU loops (numba; float32, float64)",
)


def fallback_text(rule: Rule, reason: str) -> str:
    """The numba module of a rule whose other modules come from elsewhere (a matrix rule,
    ``codegen/matrix_targets.py``): the NumPy reference, said so."""
    from codegen.targets import ENV

    return ENV.get_template("numba_module.py.j2").render(
        rule=rule, doc=rule.doc, fallback=reason, rules_names=[], exports=[]
    )
