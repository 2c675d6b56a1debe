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
from codegen.lower import Lowered, Op, Operand
from codegen.spec import Rule, SpecError
from codegen.targets import Target
from codegen.targets.host import HostCode, literal
from codegen.targets.rules import exported, legend
from optgen_runtime.triton_support import ChunkTable


class TritonOpPrinter:
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
        "gt": lambda a: f"{a[0]} > {a[1]}",
        "ge": lambda a: f"{a[0]} >= {a[1]}",
        "lt": lambda a: f"{a[0]} < {a[1]}",
        "le": lambda a: f"{a[0]} <= {a[1]}",
        "ne": lambda a: f"{a[0]} != {a[1]}",
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

    def lines(self, ops_: list[Op]) -> list[str]:
        """Each op, after a comment naming the spec line(s) of the equation it starts."""
        out = []
        for op in ops_:
            out += [f"# {o.comment()}" for o in op.origin]
            out.append(self.op(op))
        return out

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


def init_code(rule: Rule, expr: sp.Expr, code: HostCode) -> str:
    """The initial value of a state buffer, as torch code (float32 state; hyperparameters are
    locals)."""
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


def context(lowered: Lowered) -> dict[str, object]:
    rule = lowered.rule
    printer = TritonOpPrinter(set(lowered.host))
    buffers = [s.name for s in rule.element_inputs]
    reduce_reads = {s.name for s in lowered.reduce_reads}
    layout = ChunkTable.layout(len(buffers), 1 if lowered.draws else 0)
    pointers = [
        (row, b, names.derived(b, "_ptr"), names.derived(b, "_like"))
        for row, b in zip(layout.pointers, buffers, strict=True)
    ]
    key = "stream_seed(tensor_seed(hp['seed'], _k), _tj)"
    doc = [
        "The reductions take one more launch per combination, over the same chunk table: one",
        "float32 partial per chunk, added per tensor on the host in float64 in chunk order (the",
        "sums ``step`` gets).",
    ]
    doc = doc if lowered.summands else []
    if lowered.draws:
        doc += [
            "Tensor j draws the noise ``step`` draws with the seed ``tensor_seed(seed, k)``, k =",
            "``stream_ids[j]`` (by default j): one noise stream per tensor.",
        ]
    else:
        doc += ["``stream_ids`` is checked, but the rule draws no noise."]
    rules_names = exported(lowered)
    code = HostCode()
    return {
        "rule": rule,
        "doc": rule.doc,
        "rules_names": rules_names,
        "exports": sorted([*rules_names, "init_state", "step", "step_multi"]),
        "buffers": buffers,
        "ptrs": [names.derived(b, "_ptr") for b in buffers],
        "likes": [names.derived(b, "_like") for b in buffers],
        "reads": [(s.name, names.derived(s.name, "_ptr")) for s in lowered.reads],
        "grad_name": rule.grad.name,
        "states": list(rule.states.values()),
        "host_states": list(rule.host_states.values()),
        "init": {s.name: init_code(rule, s.init, code) for s in rule.states.values()},
        "init_hypers": rule.init_hypers,
        "reductions": [str(r) for r in lowered.summands],
        "draws": [(d.name, len(rule.draws), rule.draws.index(d)) for d in lowered.draws],
        "ops": printer.lines(lowered.ops),
        "reduce_ops": printer.lines(lowered.reduce_ops),
        "libdevice": any(op.kind in LIBDEVICE for op in [*lowered.ops, *lowered.reduce_ops]),
        "outputs": [(names.derived(cur.name, "_ptr"), new.name) for cur, new in _stores(lowered)],
        "host_names": [s.name for s in lowered.update_scalars],
        "legend": [f"{name}: {what}" for name, what in legend(lowered, lowered.update_scalars)],
        "reduce_host_names": [s.name for s in lowered.reduce_host],
        "reduce_legend": [f"{name}: {what}" for name, what in legend(lowered, lowered.reduce_host)],
        "reduce_pointers": [p for p in pointers if p[1] in reduce_reads],
        "reduce_ptrs": [names.derived(b, "_ptr") for b in buffers if b in reduce_reads],
        "pointers": pointers,
        "sizes_row": layout.sizes,
        "tensor_ints": [("key", layout.ints[0])] if lowered.draws else [],
        "chunk_row": layout.chunks,
        "meta_ints_doc": ", the Philox keys" if lowered.draws else "",
        "tensor_ints_code": (
            f"[({key},) for _k, _tj in zip(streams, ts, strict=True)]"
            if lowered.draws
            else "[() for _ in streams]"
        ),
        "ints_comment": "the Philox keys, as ``step`` makes them" if lowered.draws else "none",
        "multi_doc": doc,
    } | {"uses_math": code.uses_math}  # after everything is printed


TARGET = Target(
    "triton",
    "triton",
    "triton_module.py.j2",
    context,
    "fused Triton kernels (fp32 compute; fp32/fp16/bf16 weights)",
)
