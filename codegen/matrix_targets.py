"""Targets of rules with matrix equations (:mod:`codegen.matrix`): metadata, NumPy, Triton.

Such a rule's step is a sequence of stages over the whole weight matrix, in dependency order:

- ``element`` segments: per-element equations (three-address ops from the one linearizer and op
  table, :mod:`codegen.lower`/:mod:`codegen.ops`), fused per segment: a segment is every
  equation at the same depth of reductions and matrix values (NumPy: whole-array ufuncs;
  Triton: one generated kernel per segment);
- ``reduce``: a per-tensor sum of a summand a segment wrote (float64 on the host);
- ``matrix``: an iteration of matrix ops (:class:`codegen.matrix.Iteration`); NumPy prints
  ``np.matmul``, the GPU path ``torch.matmul`` (cuBLAS), both in the weight's orientation or its
  transpose, whichever the ops' costs say is cheaper for the shape at run time (when the
  lowering proved the step transpose-equivariant). An iteration with a ``precision`` prints its
  held program instead (:func:`codegen.matrix.held_program`), the same lines for both targets,
  through the runtime's ops for the chosen format (``optgen_runtime/held.py``).

The stages and the in-place writes are planned in :mod:`codegen.matrix_plan`; this module
prints them. Host scalars (expressions of hyperparameters, t, sizes and finished reductions)
are computed in double precision on the host, right before the stage that needs them. New
states and the new weight are written only after every stage has run (and after every input was
checked): by the NumPy module from fresh arrays; by the compiled targets (numba loops, Triton
kernels) in place, by one more loop that computes again what no later stage reads
(:func:`codegen.matrix_plan.in_place`).
"""

from __future__ import annotations

import sympy as sp

from codegen import matrix, names, ops
from codegen.lowered import Op
from codegen.matrix_plan import Pass, Plan, Segment, in_place, plan, scalar_name
from codegen.spec import Rule, SpecError
from codegen.targets import ENV
from codegen.targets.host import HostCode, legal_code, literal
from codegen.targets.numpy import NumpyOpPrinter
from codegen.targets.rules import sparse_context, torch_equivalent_code
from codegen.targets.triton import TritonOpPrinter

# How each target prints a matrix op (every op of codegen/ops.py marked ``matrix``).
NUMPY_MATRIX = {
    "matmul": lambda a: f"np.matmul({a[0]}, {a[1]})",
    "transpose": lambda a: f"np.transpose({a[0]})",
    "madd": lambda a: f"np.add({a[0]}, {a[1]})",
    "mscale": lambda a: f"np.multiply({a[0]}, {a[1]})",
}
# An iteration with a precision, either target: the runtime's ops for its format
# (optgen_runtime.held), each told whether its result is held (codegen.matrix.held_program);
# ``addmm`` is that program's fused ``s C + t A B``.
HELD_MATRIX = {
    "matmul": lambda a, held: f"_ops.matmul({a[0]}, {a[1]}, {held})",
    "transpose": lambda a, held: f"_ops.transpose({a[0]})",
    "madd": lambda a, held: f"_ops.add({a[0]}, {a[1]}, {held})",
    "mscale": lambda a, held: f"_ops.multiply({a[0]}, {a[1]}, {held})",
    "addmm": lambda a, held: f"_ops.addmm({', '.join(a)})",
}
TORCH_MATRIX = {
    "matmul": lambda a: f"torch.matmul({a[0]}, {a[1]})",
    "transpose": lambda a: f"torch.t({a[0]})",
    "madd": lambda a: f"torch.add({a[0]}, {a[1]})",
    "mscale": lambda a: f"torch.mul({a[1]}, {a[0]})",
}
for _target, _entries in (
    ("NumPy matrix", NUMPY_MATRIX),
    ("held matrix", {k: v for k, v in HELD_MATRIX.items() if k != "addmm"}),
    ("torch matrix", TORCH_MATRIX),
):
    if set(_entries) != set(ops.MATRIX_OPS):
        raise ImportError(
            f"the {_target} printer prints {sorted(_entries)}, not the matrix operations "
            f"{sorted(ops.MATRIX_OPS)} of codegen/ops.py"
        )


# ------------------------------------------------------------------------------------ printers
class WholeArrayPrinter(NumpyOpPrinter):
    """NumPy ops on whole arrays, each result a fresh array (the ufuncs of NumpyOpPrinter)."""

    def __init__(self, host: set[sp.Symbol]) -> None:
        self.host = host

    def name(self, operand: object) -> str:  # type: ignore[override]
        return operand.name if isinstance(operand, sp.Symbol) else literal(operand)  # type: ignore[arg-type]

    def op(self, op: Op) -> str:
        dest = self.name(op.dest)
        args = [self.name(a) for a in op.args]
        if op.kind == "copy":
            if isinstance(op.args[0], sp.Symbol) and op.args[0] not in self.host:
                return f"{dest} = {args[0]}"
            return f"{dest} = np.full_like(weight, {args[0]})"
        return f"{dest} = {self.UFUNC[op.kind]}({', '.join(args)})"


def _host_lines(plan_: Plan, code: HostCode) -> list[str]:
    return [f"{s.name} = {code(e)}" for s, e in plan_.host_lets]


def _matrix_lines(it: matrix.Iteration, plan_: Plan, printer: dict) -> list[str]:
    """One step of the iteration, the iterate named after the matrix value (an iteration with a
    precision: its held program through the runtime's ops, whichever the target)."""
    rename = {"X": it.name}
    lines = []
    if it.precision is not None:
        for hop in matrix.held_program(it):
            args = [rename.get(a, a) for a in hop.args]
            factors = [
                "None" if e is None else scalar_name(plan_, e)
                for e in hop.scalars
                if hop.kind in ("mscale", "addmm")
            ]
            if hop.kind == "mscale":
                args = [*factors, *args]
            elif hop.kind == "addmm":
                args = [*args, *factors]
            lines.append(f"{hop.dest} = {HELD_MATRIX[hop.kind](args, hop.held)}")
        lines.append(f"{it.name} = {it.program[-1].dest}")
        return lines
    for op in it.program:
        args = [rename.get(a, a) for a in op.args]
        if op.kind == "mscale":
            args = [scalar_name(plan_, op.scalar), *args]
        lines.append(f"{op.dest} = {printer[op.kind](args)}")
    lines.append(f"{it.name} = {it.program[-1].dest}")
    return lines


def _held(it: matrix.Iteration) -> dict[str, object]:
    """The template's view of an iteration's format: the choice hyperparameter naming it (None:
    the weight's dtype) and its choices, in order."""
    return {
        "precision": None if it.precision is None else it.precision.name,
        "formats": repr(it.precisions),
    }


def _costs(it: matrix.Iteration, code: HostCode) -> tuple[str, str]:
    rows, cols = sp.Symbol("rows", positive=True), sp.Symbol("cols", positive=True)
    return code(it.cost(rows, cols)), code(it.cost(cols, rows))


def numpy_context(plan_: Plan, code: HostCode) -> dict[str, object]:
    printer = WholeArrayPrinter(set(plan_.host))
    stages = []
    for i, (kind, what) in enumerate(plan_.stages):
        host = [(s.name, code(plan_.host[s])) for s in plan_.host_before(i)]
        if kind == "element":
            stages.append({"kind": kind, "host": host, "lines": printer.lines(what.ops)})  # type: ignore[attr-defined]
        elif kind == "reduce":
            red, summand = what  # type: ignore[misc]
            stages.append({"kind": kind, "host": host, "name": red.name, "summand": summand.name})
        else:
            it: matrix.Iteration = what  # type: ignore[assignment]
            direct, swapped = _costs(it, code)
            stages.append(
                {
                    "kind": kind,
                    "host": host,
                    "name": it.name,
                    "start": it.start.name,
                    "steps": it.steps.name,
                    "equivariant": it.equivariant,
                    "cost": direct,
                    "cost_t": swapped,
                    "lines": _matrix_lines(it, plan_, NUMPY_MATRIX),
                    **_held(it),
                }
            )
    return {"stages": stages}


def _numba_kernel(name: str, loop: Pass) -> dict[str, object]:
    """A compiled loop's template view (``_a<k>``: its arrays, host scalars last)."""
    from codegen.targets.numba import DTYPE, NumbaOpPrinter

    param = {a: f"_a{k}" for k, a in enumerate(loop.arrays)}
    lines = NumbaOpPrinter().lines(loop.ops)
    return {
        "name": name,
        "arrays": [a.name for a in loop.arrays],
        "params": list(param.values()) + [s.name for s in loop.host],
        "loads": [(a.name, param[a]) for a in loop.loads],
        "stores": [(value.name, param[array]) for value, array in loop.stores],
        "lines": lines,
        "dtype": any(f"{DTYPE}(" in line for line in lines),  # a constant cast to it
    }


def numba_kernels(plan_: Plan, stages: list[dict[str, object]]) -> list[dict[str, object]]:
    """The compiled module's kernels (:func:`in_place`): each element segment as one serial
    loop over the flat elements, its ops printed by the numba target's op printer (the same
    IEEE operations as NumPy's ufuncs: the same bits), then the writes' ``_commit``. Each
    element stage of ``stages`` (the NumPy module's) gets the call that replaces its lines."""
    loops = in_place(plan_)
    segments = [w for k, w in plan_.stages if k == "element"]
    kernels = []
    element = [st for (k, _), st in zip(plan_.stages, stages, strict=True) if k == "element"]
    for seg, stage in zip(segments, element, strict=True):
        loop = loops.segments[seg.index]
        stage["kernel"] = None
        if loop is None:
            continue
        name = f"_segment{seg.index}"
        kernel = _numba_kernel(name, loop)
        kernels.append(kernel)
        stage["kernel"] = name
        stage["fresh"] = [(t.name, r.name if r else None) for t, r in loop.fresh]
        stage["args"] = [f"np.ravel({a})" for a in kernel["arrays"]] + [s.name for s in loop.host]  # type: ignore[attr-defined]
    kernels.append(_numba_kernel("_commit", loops.commit))
    return kernels


def _common(rule: Rule, code: HostCode) -> dict[str, object]:
    none_means = [
        (h.name, code(sp.sympify(h.none_value)))
        for h in rule.hypers.values()
        if h.none_value is not None
    ]
    return {
        "rule": rule,
        "source": rule.source,
        "doc": rule.doc,
        "hypers": [
            (h.name, repr(h.default), legal_code(h.legal, code), h.doc)
            for h in rule.hypers.values()
        ],
        "none_means": none_means,
        "none_means_math": any("math." in value for _, value in none_means),  # math.inf
        "states": [(s.name, s.doc, literal(s.init)) for s in rule.states.values()],
        "outputs": [(cur.name, new.name) for cur, new in rule.outputs.items()],
        "sizes": [s.name for s in rule.sizes],
        "matrix_values": [it.name for it in matrix.iterations(rule)],
        "op_counts": {it.name: matrix.op_counts(it) for it in matrix.iterations(rule)},
        "triton_kernels": [],
        "reductions": [r.name for r in rule.reductions],
        "torch": torch_equivalent_code(rule, code),
        "sparse": sparse_context(rule),
    }


def render(rule: Rule) -> dict[str, str]:
    """directory -> module text (unformatted) for each target of a matrix rule."""
    for s in rule.states.values():
        if s.axis is not None or not sp.sympify(s.init).is_Number:
            raise SpecError(
                f"{rule.source}: a matrix rule's states start at a constant (first slice)"
            )
    if rule.host_states or rule.draws or rule.group_reductions:
        raise SpecError(
            f"{rule.source}: host states, random draws and group reductions are not supported in "
            "a rule with matrix equations yet"
        )
    plan_ = plan(rule)
    out = {}
    code = HostCode()
    ctx = _common(rule, code)
    ctx.update(numpy_context(plan_, code))
    ctx["host_lets"] = _host_lines(plan_, code)
    ctx["runtime"] = sorted(
        {"check_step_count", "step_counts", "check_lists", "each_tensor", *code.runtime}
    )
    ctx["target"] = "numpy"
    ctx["held"] = any(it.precision is not None for it in matrix.iterations(rule))
    ctx["compiled"] = False
    ctx["uses_math"] = code.uses_math
    out["rules"] = ENV.get_template("matrix_rules_module.py.j2").render(ctx)
    out["numpy"] = ENV.get_template("matrix_numpy_module.py.j2").render(ctx)
    # the compiled module: the NumPy module's text with its element stages as compiled loops
    nctx = {**ctx, **numpy_context(plan_, code), "target": "numba", "compiled": True}
    nctx["kernels"] = numba_kernels(plan_, nctx["stages"])  # type: ignore[arg-type]
    nctx["commit"] = nctx["kernels"][-1]  # type: ignore[index]  # the writes' loop
    out["numba"] = ENV.get_template("matrix_numpy_module.py.j2").render(nctx)
    tcode = HostCode()
    tctx = _common(rule, tcode)
    tctx.update(triton_context(plan_, tcode))
    tctx["host_lets"] = _host_lines(plan_, tcode)
    tctx["runtime"] = sorted(
        {
            "check_distinct_states",
            "check_step_count",
            "step_counts",
            "check_lists",
            "each_tensor",
            "stream_indices",
            *tcode.runtime,
        }
    )
    tctx["target"] = "triton"
    tctx["held"] = ctx["held"]
    tctx["uses_math"] = tcode.uses_math
    out["triton"] = ENV.get_template("matrix_triton_module.py.j2").render(tctx)
    return out


def kernel_name(rule: Rule, segment: int | None) -> str:
    """A segment's kernel, or (None) the writes' kernel."""
    if segment is None:
        return names.derived(rule.name, "_commit_kernel")
    return f"{rule.name}_segment{segment}_kernel"


def _triton_kernel(name: str, loop: Pass) -> dict[str, object]:
    """A Triton kernel's template view of a loop of :func:`in_place` (fp32 compute: each load
    converted to float32, each store to its array's dtype)."""
    ptr = {a: names.derived(a.name, "_ptr") for a in loop.arrays}
    return {
        "name": name,
        "params": list(ptr.values()),
        "scalars": [s.name for s in loop.host],
        "loads": [(a.name, ptr[a]) for a in loop.loads],
        "lines": TritonOpPrinter(set(loop.host)).lines(loop.ops),
        "stores": [(value.name, ptr[array]) for value, array in loop.stores],
        "copy_out": None,  # the writes' kernel: the new weight's value (``copies``)
    }


def triton_context(plan_: Plan, code: HostCode) -> dict[str, object]:
    """The GPU module: each element segment a Triton kernel, the new weight and states made in
    place by the writes' kernel (:func:`in_place`, as the compiled CPU module's loops)."""
    rule = plan_.rule
    loops = in_place(plan_)
    kernels = []
    stages = []
    for i, (kind, what) in enumerate(plan_.stages):
        host = [(s.name, code(plan_.host[s])) for s in plan_.host_before(i)]
        if kind == "element":
            seg: Segment = what  # type: ignore[assignment]
            loop = loops.segments[seg.index]
            if loop is None:  # its every value is a new one, made at commit
                stages.append({"kind": kind, "host": host, "kernel": None})
                continue
            kernel = _triton_kernel(kernel_name(rule, seg.index), loop)
            kernels.append(kernel)
            stages.append(
                {
                    "kind": kind,
                    "host": host,
                    "kernel": kernel["name"],
                    "buffers": [a.name for a in loop.arrays],
                    "fresh": [(t.name, r.name if r else None) for t, r in loop.fresh],
                    "scalars": kernel["scalars"],
                }
            )
        elif kind == "reduce":
            red, summand = what  # type: ignore[misc]
            stages.append({"kind": kind, "host": host, "name": red.name, "summand": summand.name})
        else:
            it: matrix.Iteration = what  # type: ignore[assignment]
            direct, swapped = _costs(it, code)
            stages.append(
                {
                    "kind": kind,
                    "host": host,
                    "name": it.name,
                    "start": it.start.name,
                    "steps": it.steps.name,
                    "equivariant": it.equivariant,
                    "cost": direct,
                    "cost_t": swapped,
                    "lines": _matrix_lines(it, plan_, TORCH_MATRIX),
                    **_held(it),
                }
            )
    commit = _triton_kernel(kernel_name(rule, None), loops.commit)
    # a fp16/bf16 parameter of a float32 master (``copies``): the new weight rounded into it
    commit["copy_out"] = next(v.name for v, a in loops.commit.stores if a == rule.weight)
    kernels.append(commit)
    commit["buffers"] = [a.name for a in loops.commit.arrays]
    return {
        "stages": stages,
        "kernels": kernels,
        "commit": commit,
        "triton_kernels": [k["name"] for k in kernels],
    }


def op_counts(rule: Rule) -> dict[str, dict[str, dict[str, int]]]:
    """The generated step's operations, as ``tools.op_counts`` reports them: per-element ops per
    segment, and the matrix ops of one iteration step of each matrix value."""
    plan_ = plan(rule)
    report: dict[str, dict[str, int]] = {}
    for kind, what in plan_.stages:
        if kind == "element":
            seg: Segment = what  # type: ignore[assignment]
            counts: dict[str, int] = {}
            for op in seg.ops:
                counts[op.kind] = counts.get(op.kind, 0) + 1
            report[f"segment{seg.index}"] = dict(sorted(counts.items()))
        elif kind == "matrix":
            it: matrix.Iteration = what  # type: ignore[assignment]
            report[f"{it.name} (per step)"] = dict(sorted(matrix.op_counts(it).items()))
    return {"matrix_plan": report}
