"""The Triton target: fused GPU kernels per rule (``generated/triton``), fp32 compute.

Division and square root are the IEEE round-to-nearest ``div_rn``/``sqrt_rn`` (``/`` and
``tl.sqrt`` are approximate on GPUs) so kernels agree with NumPy to the last bits; max/min
propagate NaN like NumPy; sign is built from comparisons with NaN and 0 passed through. A rule's
single- and multi-tensor kernels share one ``@triton.jit`` body (``<rule>_kernel_body``), as do
its reduction kernels (``<rule>_reduce_kernel_body``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import sympy as sp

from codegen import names, ops
from codegen.ir import Operand
from codegen.lowered import Lowered, Op
from codegen.spec import Rule, SpecError, State
from codegen.targets import Target
from codegen.targets.host import INFIX_COMPARISONS, CommentedLines, HostCode, literal
from codegen.targets.host_program import legend, reduce_scalars_name, reduction_scalars_name
from codegen.targets.rules import exported, natural, variant_context
from codegen.targets.triton_matrix import PARTIAL, matrix_context
from optgen_runtime.triton_chunks import ChunkTable


class TritonOpPrinter(CommentedLines):
    """Triton: each op is one fp32 expression on registers."""

    MAX_MIN = "propagate_nan=tl.PropagateNan.ALL"
    FORMS: ClassVar[dict[str, Callable[[list[str]], str]]] = {
        "add": lambda a: f"{a[0]} + {a[1]}",
        "sub": lambda a: f"{a[0]} - {a[1]}",
        "mul": lambda a: f"{a[0]} * {a[1]}",
        "div": lambda a: f"tl.div_rn({a[0]}, {a[1]})",
        "neg": lambda a: f"-{a[0]}",
        "copy": lambda a: a[0],
        "sqrt": lambda a: f"tl.sqrt_rn({a[0]})",
        "abs": lambda a: f"tl.abs({a[0]})",
        "sign": lambda a: f"tl.where({a[0]} > 0, 1.0, tl.where({a[0]} < 0, -1.0, {a[0]}))",
        "exp": lambda a: f"tl.exp({a[0]})",
        "log": lambda a: f"tl.log({a[0]})",
        "tanh": lambda a: f"libdevice.tanh({a[0]})",
        "softplus": lambda a: (
            f"tl.maximum({a[0]}, 0.0, {TritonOpPrinter.MAX_MIN})"
            f" + libdevice.log1p(tl.exp(-tl.abs({a[0]})))"
        ),
        # libdevice's cbrt is the odd real root; a fractional power of a negative base is NaN
        "cbrt": lambda a: f'tl.where({a[0]} < 0.0, float("nan"), libdevice.cbrt({a[0]}))',
        "pow": lambda a: f"libdevice.pow({a[0]}, {a[1]})",  # NaN guard in op() below
        "max": lambda a: f"tl.maximum({a[0]}, {a[1]}, {TritonOpPrinter.MAX_MIN})",
        "min": lambda a: f"tl.minimum({a[0]}, {a[1]}, {TritonOpPrinter.MAX_MIN})",
        **INFIX_COMPARISONS,
        "where": lambda a: f"tl.where({a[0]}, {a[1]}, {a[2]})",
    }
    # Operations that need a per-element operand (a comparison of two scalars is no mask).
    ELEMENTWISE = frozenset({"add", "sub", "mul", "ne", "gt", "ge", "lt", "le"})

    def __init__(self, host_scalars: set[sp.Symbol]) -> None:
        self.host_scalars = host_scalars

    def name(self, operand: Operand) -> str:
        """Registers and host scalars by name, constants as fp32-range literals."""
        return operand.name if isinstance(operand, sp.Symbol) else literal(operand)

    def op(self, op: Op) -> str:
        a = [self.name(x) for x in op.args]
        if op.kind in self.ELEMENTWISE and all(not isinstance(x, sp.Symbol) for x in op.args):
            raise SpecError(f"op {op} has no per-element operand")
        if op.kind in ("div", "pow"):  # tensors only: a literal operand becomes an fp32 scalar
            a = [self.tensor(x, text) for x, text in zip(op.args, a, strict=True)]
        if op.kind == "copy" and not isinstance(op.args[0], sp.Symbol):
            expr = f"tl.full((BLOCK_SIZE,), {a[0]}, tl.float32)"
        elif op.kind == "copy" and op.args[0] in self.host_scalars:
            expr = f"tl.broadcast_to({a[0]}, (BLOCK_SIZE,))"
        else:
            expr = self.FORMS[op.kind](a)
        if op.kind == "pow" and not op.args[1].is_integer:  # NaN for a < 0 (-inf included)
            expr = f'tl.where({a[0]} < 0.0, float("nan"), {expr})'
        return f"{self.name(op.dest)} = {expr}"

    @staticmethod
    def tensor(operand: Operand, text: str) -> str:
        if isinstance(operand, sp.Symbol):
            return text
        return f"tl.full((), {text}, tl.float32)"


ops.require("Triton", TritonOpPrinter.FORMS)
# Operations whose form calls libdevice (optgen_runtime.triton_compat.libdevice: CUDA's libdevice
# when compiled, NumPy's functions under the interpreter); the module imports it only then.
LIBDEVICE = frozenset(
    k for k, form in TritonOpPrinter.FORMS.items() if "libdevice." in form(["a"] * 3)
)


# The runtime module of each helper a generated Triton module imports.
SUPPORT_MODULES = {
    name: module
    for module, helpers in {
        "triton_checks": "check_across check_copies check_tensors check_tensors_each check_weight "
        "with_copies",
        "triton_reduce": "fixed_sum nan_max nan_min reduce_sums",
        "triton_launch": "LAUNCHES launch",
        "triton_rows": "ScalarRows host_columns host_rows phase_rows step_rows sum_rows",
        "triton_cache": "Vouched prepared_table",
        "triton_matrix": "domain_size group_totals matrix_sweep",
        "variants": "absent_states matches run_variant",
        "writes": "commit run_steps",
    }.items()
    for name in helpers.split()
}


def support_imports(support: list[str], libdevice: bool) -> list[tuple[str, str]]:
    """(runtime module, its helpers joined) for the imports of a generated Triton module, in
    the order ruff sorts them; ``libdevice``: the kernels call it (``triton_compat``)."""
    by_module: dict[str, list[str]] = {"triton_compat": ["libdevice"] if libdevice else []}
    by_module["triton_compat"] += ["tl", "triton"]
    for name in sorted(support):  # (ruff's order: constants, classes, then functions)
        by_module.setdefault(SUPPORT_MODULES[name], []).append(name)
    return [(module, ", ".join(helpers)) for module, helpers in sorted(by_module.items())]


def init_code(rule: Rule, state: State, code: HostCode) -> str:
    """The initial value of a state buffer, as torch code (float32 state; hyperparameters are
    locals)."""
    expr = state.init
    if state.axis is not None:
        value = literal(expr) if expr != 0 else "0.0"
        return (
            f"torch.full(vector_shape(weight.shape, {state.axis}), {value}, "
            "dtype=torch.float32, device=weight.device)"
        )
    if expr == rule.weight:
        return "weight.detach().to(torch.float32, copy=True)"
    if expr.is_Number:
        value = literal(expr) if expr != 0 else "0.0"
        return f"torch.full_like(weight, {value}, dtype=torch.float32)"
    if not expr.free_symbols & {rule.weight}:  # hyperparameters: a double, rounded once
        return f"torch.full_like(weight, {code(expr)}, dtype=torch.float32)"
    raise SpecError(f"{rule.source}: initial value {expr} must be a constant or the weight itself")


def _stores(lowered: Lowered) -> list[tuple[sp.Symbol, sp.Symbol]]:
    """The buffers written, in buffer order (weight first, then states)."""
    order = lowered.rule.element_inputs
    return sorted(lowered.outputs.items(), key=lambda pair: order.index(pair[0]))


def phase_context(
    lowered: Lowered, phase: int, printer: TritonOpPrinter, pointers: list
) -> dict[str, object]:
    """Reduction phase ``phase``'s kernels: body, single- and multi-tensor kernel."""
    reads = {s.name for s in lowered.phase_reads(phase)}
    reductions = lowered.phase_reductions(phase)
    host_names = [s.name for s in lowered.phase_host(phase)]
    name = lowered.rule.name
    return {
        "phase": phase,
        "body": names.phased(names.derived(name, "_reduce_kernel_body"), phase),
        "kernel": names.phased(names.derived(name, "_reduce_kernel"), phase),
        "multi": names.phased(names.derived(name, "_multi_reduce_kernel"), phase),
        "function": reduction_scalars_name(phase),
        "table": reduce_scalars_name(phase),
        "reductions": [str(r) for r in reductions],
        "pointers": [p for p in pointers if p[1] in reads],
        "ptrs": [p[2] for p in pointers if p[1] in reads],
        "host_names": host_names,
        "legend": [f"{n}: {what}" for n, what in legend(lowered, lowered.phase_host(phase))],
        "ops": printer.lines(lowered.reduce_phases[phase - 1]),
        "partials": [
            (r.name, PARTIAL[lowered.rule.reduction_kinds[r]].format(r.name)) for r in reductions
        ],
        "group": [r.name for r in reductions if r in lowered.rule.group_reductions],
    }


def context(lowered: Lowered) -> dict[str, object]:
    rule = lowered.rule
    printer = TritonOpPrinter(set(lowered.host))
    buffers = [s.name for s in rule.element_inputs]
    layout = ChunkTable.layout(len(buffers), 2 if lowered.draws else 0)
    pointers = [
        (row, b, names.derived(b, "_ptr"), names.derived(b, "_like"))
        for row, b in zip(layout.pointers, buffers, strict=True)
    ]
    matrix = bool(rule.vector_values)
    if (matrix or rule.group_reductions) and (rule.inputs or rule.scalars):
        extra = ", ".join([*rule.inputs, *rule.scalars])
        raise SpecError(
            f"{rule.source}: inputs ({extra}) are not supported yet in a rule with row or column "
            "states, axis reductions or group reductions"
        )
    count = len(lowered.reduce_phases) + 1
    phases = (
        [] if matrix else [phase_context(lowered, k, printer, pointers) for k in range(1, count)]
    )
    kinds = set(rule.reduction_kinds.values())
    # host scalars that vary by more than the step count: a row per tensor (computed_each)
    per_tensor_scalars = bool(rule.host_states or phases or rule.sizes)
    # ... but for the host states alone: a column per host state (host_columns, host_rows)
    host_only = bool(rule.host_states and not phases and not rule.sizes)
    # scalars of the step count and hyperparameters alone, nothing else per tensor: a caller that
    # computed and checked them (the torch classes' fast step) passes them (step_tables)
    tabled = not matrix and not per_tensor_scalars and not rule.inputs and not rule.scalars
    tabled = tabled and not lowered.draws
    rules_names = exported(lowered)
    # host scalars of every tensor at once (host_scalars_rows): see
    # codegen.targets.host_program.columnwise
    columnwise = "host_scalars_rows" in rules_names
    support = ["check_tensors", "check_weight"]
    support += [f"nan_{k}" for k in ("max", "min") if k in kinds]
    whole = {rule.reduction_kinds[r] for r in rule.scalar_reductions}
    support += ["fixed_sum"] if "sum" in whole else []
    if matrix:
        support += ["LAUNCHES", "check_across", "check_copies", "check_tensors_each"]
        support += ["domain_size", "with_copies"]
        support += ["matrix_sweep"]
    else:
        support += ["launch", "prepared_table"]
        support += [] if per_tensor_scalars else ["step_rows"]
        support += ["ScalarRows", "Vouched"] if tabled else []
        support += ["host_columns", "host_rows"] if host_only else []
        support += ["reduce_sums"] if phases else []
        support += ["phase_rows", "sum_rows"] if columnwise else []
        support += ["group_totals"] if rule.group_reductions else []
    support += ["run_steps"] if matrix else ["commit"]
    support += ["absent_states"] if rule.absent else []
    support += ["matches"] if rule.special else []
    support += ["run_variant"] if rule.absent or rule.special else []
    key = "stream_seed(tensor_seed(hp['seed'], _k), _tj)"
    doc = [
        "The reductions take one more launch per combination, over the same chunk table: one",
        "float32 partial per chunk, added per tensor in float64 as one pairwise tree (the sums",
        "``step`` gets): on CUDA by a small kernel, with only the sums copied to the host (its",
        "launches are counted in ``LAUNCHES['combine']``, not here).",
    ]
    doc = doc if lowered.summands else []
    if lowered.draws:
        doc += [
            "Tensor j draws the noise ``step`` draws with the seed ``tensor_seed(seed, k)``, k =",
            "``stream_ids[j]`` (by default j): one noise stream per tensor; its element i draws",
            "the noise of element ``noise_offsets[j] + i`` (by default i): a shard of a sharded",
            "tensor draws the full tensor's noise.",
        ]
    else:
        doc += ["``stream_ids`` is checked, but the rule draws no noise."]
    code = HostCode()
    return {
        **variant_context(rule),
        "rule": rule,
        "doc": rule.doc,
        # host states fed by the step's sums may turn NaN: checked before any write
        "host_fed": bool(rule.host_states and rule.scalar_reductions),
        "per_tensor_scalars": per_tensor_scalars,
        "columnwise": columnwise,
        "host_only": host_only,
        "tabled": tabled,
        "rules_names": rules_names,
        "exports": sorted(
            [*rules_names, "init_state", "step", "step_multi", *["step_tables"] * tabled],
            key=natural,
        ),
        "buffers": buffers,
        "ptrs": [names.derived(b, "_ptr") for b in buffers],
        "likes": [names.derived(b, "_like") for b in buffers],
        "reads": [(s.name, names.derived(s.name, "_ptr")) for s in lowered.reads],
        "grad_name": rule.grad.name,
        "states": list(rule.states.values()),
        "inputs": list(rule.inputs),
        "scalar_args": list(rule.scalars),
        "host_states": list(rule.host_states.values()),
        "init": {s.name: init_code(rule, s, code) for s in rule.states.values()},
        "init_hypers": rule.init_hypers,
        "libdevice": any(op.kind in LIBDEVICE for op in [*lowered.ops, *lowered.reduce_ops]),
        "reductions": [str(r) for r in lowered.summands],
        "draws": [(d.name, len(rule.draws), rule.draws.index(d)) for d in lowered.draws],
        "ops": printer.lines(lowered.ops),
        "phases": phases,
        "support_imports": support_imports(
            support, any(op.kind in LIBDEVICE for op in [*lowered.ops, *lowered.reduce_ops])
        ),
        "common_imports": sorted(
            ["check_lists", "check_step_count", "host_state_values", "step_counts"]
            + ["stream_indices"]
            + (["element_offsets"] if lowered.draws else [])
            + (["matrix_sizes"] if rule.sizes or matrix else [])
            + (["matrix_dims"] if matrix else [])
            + (["vector_shape"] if rule.vector_states else [])
        ),
        "hyperparam_imports": sorted(
            ["resolve_hyperparams"]
            + (["input_lists"] if rule.inputs else [])
            + (["scalar_inputs"] if rule.scalars else [])
        ),
        "sizes": ", **matrix_sizes(weight.shape, SIZES)" if rule.sizes else "",
        "multi_sizes": ", **matrix_sizes(_w.shape, SIZES)" if rule.sizes else "",
        "outputs": [(names.derived(cur.name, "_ptr"), new.name) for cur, new in _stores(lowered)],
        # the weight's buffer and its new value (a master's copy-out: COPY_OUT)
        "weight_ptr": names.derived(rule.weight.name, "_ptr"),
        "weight_out": lowered.outputs[rule.weight].name,
        "host_names": [s.name for s in lowered.update_scalars],
        "legend": [f"{name}: {what}" for name, what in legend(lowered, lowered.update_scalars)],
        "pointers": pointers,
        "sizes_row": layout.sizes,
        "vector": ChunkTable.VECTOR,
        "tensor_ints": (
            [("key", layout.ints[0]), ("noise_offset", layout.ints[1])] if lowered.draws else []
        ),
        "chunk_row": layout.chunks,
        "meta_ints_doc": ", the Philox keys and noise offsets" if lowered.draws else "",
        "tensor_ints_code": (
            f"[({key}, _o) for _k, _tj, _o in zip(streams, ts, offsets, strict=True)]"
            if lowered.draws
            else "None"
        ),
        "ints_comment": (
            "the Philox keys, as ``step`` makes them, and the noise offsets"
            if lowered.draws
            else "none"
        ),
        **(matrix_context(lowered, printer) if matrix else {"matrix": False}),
        "multi_doc": doc,
    } | {"uses_math": code.uses_math}  # after everything is printed


TARGET = Target(
    "triton",
    "triton",
    "triton_module.py.j2",
    context,
    "fused Triton kernels (fp32 compute; fp32/fp16/bf16 weights)",
)
