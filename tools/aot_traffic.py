"""The spec's minimal traffic of a generated Triton kernel, for ``python -m tools.aot``: bytes per
element when each array the lowered rule reads is read once and each it writes written once
(``minimum_traffic``; a matrix rule's element loops likewise), the rule's spec and lowering found
once per process, and the rule (or variant) a kernel module is generated for (``module_rule``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# Weights of fp16/bf16 parameters with float32 master copies (``multi_precision``): the weight
# fp32, the gradient and inputs in the parameter's dtype, and the update kernel writes the
# parameter from the master (``COPY_OUT``: ChunkTable's copies). Compiled only for the kernels
# that take COPY_OUT (the multi-tensor updates): the others see an fp32 weight and fp16/bf16
# gradient as the "fp32" and "bf16" rows do, buffer by buffer.
MASTERS = {"bf16-master": "bf16", "fp16-master": "fp16"}


def minimum_traffic(module: Any, kernel: str, weight_type: str) -> int | None:
    """The spec's minimal bytes per element for ``kernel``: each array it reads read once, each
    it writes written once (weight, gradient and inputs in ``weight_type``, states fp32; a
    ``MASTERS`` type: the weight fp32, and the parameter written once more in its dtype), from
    the lowered spec; a matrix rule's element loops likewise (:func:`_matrix_minimum`); None
    for a kernel that is neither the update nor a reduction phase (the sweeps of a rule with
    row or column states), or a rule whose spec is not found."""
    narrow = {"fp32": 4, "bf16": 2, "fp16": 2}[MASTERS.get(weight_type, weight_type)]
    if getattr(module, "MATRIX_VALUES", None):
        return _matrix_minimum(module, kernel, narrow, weight_type in MASTERS)
    lowered = _lowered(module)
    if lowered is None or lowered.rule.vector_values:
        return None
    rule = lowered.rule
    master = weight_type in MASTERS

    def size(symbol: Any) -> int:
        wide = symbol.name in rule.states or (master and symbol == rule.weight)
        return 4 if wide else narrow

    name = rule.name
    if kernel in (f"{name}_kernel", f"{name}_multi_kernel"):
        copy = narrow if master else 0  # the parameter, from its master
        return sum(map(size, lowered.reads)) + sum(map(size, lowered.outputs)) + copy
    match = re.fullmatch(rf"{name}_(?:multi_)?reduce_kernel(\d*)", kernel)
    if match:
        return sum(map(size, lowered.phase_reads(int(match.group(1) or 1))))
    return None


def _matrix_minimum(module: Any, kernel: str, narrow: int, master: bool) -> int | None:
    """A matrix rule's element loop (codegen.matrix_plan.in_place: a segment's, or the
    writes' that makes the new weight and states in place): each array it reads read once,
    each it writes written once (weight and gradient ``narrow`` bytes, the states and the
    step's own arrays float32; ``master``: the weight float32, and the writes' kernel writes
    the parameter once more in its dtype); None for a kernel it does not generate."""
    from codegen.matrix_plan import in_place, plan
    from codegen.matrix_targets import kernel_name

    rule = _spec(module)
    if rule is None:
        return None
    loops = in_place(plan(rule))
    by_name = {kernel_name(rule, i): loop for i, loop in loops.segments.items() if loop}
    loop = {**by_name, kernel_name(rule, None): loops.commit}.get(kernel)
    if loop is None:
        return None

    def size(symbol: Any) -> int:
        wide = symbol not in (rule.weight, rule.grad) or (master and symbol == rule.weight)
        return 4 if wide else narrow

    copy = narrow if master and loop is loops.commit else 0  # the parameter, from its master
    return sum(map(size, loop.loads)) + sum(size(array) for _, array in loop.stores) + copy


_SPECS: dict[str, Any] = {}
_LOWERED: dict[str, Any] = {}


def _spec(module: Any) -> Any:
    """The rule's spec (a variant's, codegen/variants.py), once per process: specs/<rule>.py of
    the tree the module was generated in (``<tree>/generated/triton/<rule>.py``), else of the
    working directory, else this repository's; None when none has it."""
    from codegen.load import SPECS_DIR, load_rules
    from codegen.variants import variants as of_rule

    rule, name = module.RULE, module_rule(module)
    if name not in _SPECS:
        here = Path(getattr(module, "__file__", "") or ".").resolve()
        trees = [here.parents[2] / "specs"] if len(here.parents) > 2 else []
        found = [
            d for d in [*trees, Path.cwd() / "specs", SPECS_DIR] if (d / f"{rule}.py").exists()
        ]
        spec = load_rules(found[0], names=[rule])[0] if found else None
        if spec is not None and name != rule:  # a variant (codegen/variants.py)
            spec = next((v for v in of_rule(spec) if v.name == name), None)
        _SPECS[name] = spec
    return _SPECS[name]


def _lowered(module: Any) -> Any:
    """The rule's lowered spec (:func:`_spec`), once per process; None when no spec has it."""
    from codegen.lower import lower

    name = module_rule(module)
    if name not in _LOWERED:
        spec = _spec(module)
        _LOWERED[name] = lower(spec) if spec is not None else None
    return _LOWERED[name]


def module_rule(module: Any) -> str:
    """The rule a kernel module is generated for, or the variant (``<rule>_without_<state>``,
    ``<rule>_<special case>``): its module name (a variant's ``RULE`` is its rule's, for
    messages)."""
    # a variant's modules read its own rules module (generated.rules.<variant>); a copy of a
    # rule's module under another file name (tests/test_aot.py) still reads its rule's
    host = getattr(getattr(module, "host_scalars", None), "__module__", None) or ""
    name = host.rsplit(".", 1)[-1]
    return name if name.startswith(f"{module.RULE}_") else module.RULE
