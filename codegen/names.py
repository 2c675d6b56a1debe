"""The one registry of names generated code uses for itself.

Every identifier in a generated module is either a name the spec declared (its hyperparameters,
states, host states, reductions, draws, ``let`` intermediates, its rule and class names) or one
registered here: a fixed name (:data:`RESERVED`, with why it is taken), a spec name with a
registered suffix (:data:`SUFFIXES`: ``mean_new``, ``mean_ptr``, ...), the rule's name with a
registered suffix (:data:`RULE_SUFFIXES`: ``adam_kernel``), or a generated temporary (a leading
underscore: :class:`Temps` hands them out). The spec check asks :func:`refusal` before it accepts
a name, the printers ask :class:`Temps` and :func:`derived` for theirs, and a test parses every
generated module and asks :func:`registered` about each identifier it finds.
"""

from __future__ import annotations

import builtins
import keyword
import re
import unicodedata
from typing import ClassVar

import sympy as sp

RESERVED: dict[str, str] = {}


def _reserve(why: str, names: str) -> None:
    for name in names.split():
        RESERVED.setdefault(name, why)


_reserve(
    "a module the generated code imports", "np tl triton torch math annotations libdevice numba"
)
_reserve("a typing name the generated code imports", "Any Sequence")
_reserve(
    "a runtime helper the generated code imports",
    "Legal TorchEquivalent GeneratedOptimizer ChunkTable check_step_count check_tensors "
    "check_weight flat_views for_chunks normal_chunk host_state_values launch reduce_sums "
    "resolve_hyperparams step_counts check_lists each_tensor stream_indices stream_seed "
    "tensor_seed check_scalars computed "
    "combine fixed_sum nan_max nan_min combine_tiles domain_shape for_tiles matrix_dims "
    "matrix_sizes matrix_tiles matrix_views tile_scratch vector_shape LAUNCHES check_across "
    "domain_size "
    "matrix_sweep run_steps unavailable "
    "check_distinct_states run_group check_arrays_across group_totals Iterator host_max host_min "
    "scalar_inputs "
    "check_host_states check_scalars_each checked_scalar computed_each checked_each distinct "
    "check_tensors_each step_rows host_states commit _writes all_or_nothing "
    "element_offsets host_columns host_rows "
    "input_lists combine_group DropIn compiled Buffers partials_of prepare view absent_states "
    "view_bits load store compute_type round_into PLAIN BITS MASTER launch_layout check_copies "
    "with_copies prepared_table "
    "run_variant matches ScalarRows Vouched phase_rows sum_rows rows_max rows_min scalar_columns "
    "rows_f32 combine_rows step_scalar_rows sum_scalar_rows rows_where normals DRAW_BLOCK cbrt "
    "Tiling "
    "LANES fold_sum fold_max fold_min lanes_sum lanes_max lanes_min shards_combined cast_into "
    "first_sum first_max first_min matrices_sum matrices_max matrices_min held_ops held_torch_ops "
    "host_f32",
)
_reserve(
    "a module global of every generated module",
    "RULE SPEC CLASS_NAME HYPERPARAMS LEGAL NONE_MEANS STATES REDUCTIONS DRAWS HOST_STATES "
    "FOLDS_GRAD_SCALE INPUTS STEP_SCALARS INIT_HYPERPARAMS TORCH OP_COUNTS REDUCE_OP_COUNTS "
    "SCALARS REDUCE_SCALARS BLOCK_SIZE REDUCE_KINDS REDUCE_AXES STATE_AXES SIZES GROUP_REDUCTIONS "
    "CHUNK RULES MATRIX_RULES META NUMPY TRITON MATRIX_VALUES MATRIX_OP_COUNTS check_matrix "
    "init_state step step_multi host_scalars host_scalars_rows reduction_scalars COMPILED FALLBACK "
    "NUMBA EVEN_CHUNKS initial_values "
    "step_prechecked step_buffers step_tables ABSENT WITHOUT SPECIAL "
    "SPARSE LAZY_UPDATE SPARSE_REFUSED SPARSE_WHY COPIES",
)
_reserve("a class attribute of the drop-in classes", "DROP_IN FIXED BELOW_2D STATE_FROM_DEFAULTS")
_reserve(
    "an argument of the step API (module step/step_multi, torch classes)",
    "weight grad state t hyperparams weights grads states stream_ids amp noise_offset "
    "noise_offsets prechecked even copies checked memo "
    "self params multi_precision backend lazy_update own",
)
_reserve(
    "a local of the generated kernels",
    "pid offs mask tensor start n_elements n_tensors n_chunks found_inf inv_scale key AMP slot "
    "meta meta_ptr scalars_ptr found_inf_ptr grad_scale_ptr partial_ptr n_batch n_rows n_cols "
    "outer lane n_blocks ALIGNED COPY_OUT copy_ptr copy_like",
)
_reserve(
    "a local of the generated step functions",
    "hp host buffers sums pre scalars host_new ts streams offsets hosts tables ints chunks new "
    "dtype update reduce scratch stop name value partial given per_tensor rows key at",
)
_reserve(
    "a keyword argument the generated code passes",
    "out where other axis bitcast strict propagate_nan do_not_specialize copy choices flag "
    "keepdims device inputs "
    "integer lo hi lo_open hi_open allow_none parallel serial",
)
# Python's builtins a spec may still name a value: no generated module calls them (tests scan
# every one), so a local of that name shadows nothing it uses. ``sum``: torch's Adagrad's state,
# named as torch names it so that the drop-in's live state has torch's keys (what
# torch.distributed.checkpoint's flattened load rebuilds the state by).
UNCALLED_BUILTINS = frozenset({"sum"})
_reserve(
    "a Python builtin the generated code calls",
    " ".join(n for n in dir(builtins) if not n.startswith("_") and n not in UNCALLED_BUILTINS),
)

# Names a spec symbol gets with one of these suffixes in generated code.
SUFFIXES: dict[str, str] = {
    "_new": "the value at step i+1 (states and the weight)",
    "_ptr": "a buffer's pointer in a kernel",
    "_like": "a buffer's pointer-type witness in a multi-tensor kernel",
    "_flat": "a buffer's flat view in the NumPy module",
    "_buf": "a buffer's chunk in a numba kernel",
}
# Names the rule's name gets with one of these suffixes (kernels).
RULE_SUFFIXES: tuple[str, ...] = (
    "_kernel",
    "_multi_kernel",
    "_reduce_kernel",
    "_multi_reduce_kernel",
    "_kernel_body",
    "_reduce_kernel_body",
    "_row_reduce_kernel",
    "_col_reduce_kernel",
    "_segment_kernel",  # a matrix rule's per-element stages: <rule>_segment<k>_kernel
    "_commit_kernel",  # a matrix rule's writes: the new weight and states, in place
)
TEMP_PREFIX = "_"


def refusal(name: str) -> str | None:
    """Why a spec may not declare ``name`` (None: it may)."""
    if not name.isidentifier() or keyword.iskeyword(name):
        return "is not a Python identifier"
    if unicodedata.normalize("NFKC", name) != name:
        return (
            f"changes under Unicode normalisation (Python reads it as "
            f"{unicodedata.normalize('NFKC', name)!r}); spell it in its normal form"
        )
    if name.startswith(TEMP_PREFIX):
        return "clashes with generated temporaries (names starting with '_' are reserved)"
    if name in RESERVED:
        return f"clashes with a name the generated code uses ({RESERVED[name]})"
    for suffix, why in SUFFIXES.items():
        if name.endswith(suffix):
            return f"ends with {suffix!r}, reserved for {why}"
    for suffix in RULE_SUFFIXES:
        if name.endswith(suffix):
            return f"ends with {suffix!r}, reserved for the generated kernels"
    return None


def derived(name: str, suffix: str) -> str:
    """A spec name with a registered suffix (``derived("mean", "_ptr") == "mean_ptr"``)."""
    if suffix not in SUFFIXES and suffix not in RULE_SUFFIXES:
        raise KeyError(f"suffix {suffix!r} is not registered in codegen/names.py")
    return f"{name}{suffix}"


def phased(name: str, phase: int) -> str:
    """A reduction phase's name: ``name`` for phase 1; later phases get ``_2``, ... (host code:
    ``reduction_scalars_2``) or a number after ``_reduce`` (kernels: ``lamb_reduce2_kernel``)."""
    if phase == 1:
        return name
    if "_reduce_" in name:
        return name.replace("_reduce_", f"_reduce{phase}_", 1)
    return f"{name}_{phase}"


def _unphased(identifier: str) -> str:
    """The phase-1 name of a phased name (:func:`phased`)."""
    head, _, tail = identifier.rpartition("_")
    if tail.isdigit() and head in ("reduction_scalars", "REDUCE_SCALARS"):
        return head
    match = re.search(r"_reduce(\d+)_", identifier)
    if match is None and (match := re.search(r"_segment(\d+)_", identifier)):
        return identifier.replace(match.group(0), "_segment_", 1)
    return identifier.replace(match.group(0), "_reduce_", 1) if match else identifier


def registered(identifier: str, spec_names: set[str]) -> bool:
    """True when generated code may contain ``identifier`` next to these spec names."""
    identifier = _unphased(identifier)
    if identifier in spec_names or identifier in RESERVED:
        return True
    if identifier.startswith(TEMP_PREFIX):
        return True
    for suffix in [*SUFFIXES, *RULE_SUFFIXES]:
        base = identifier[: -len(suffix)]
        if identifier.endswith(suffix) and (base in spec_names or base in ("weight", "grad")):
            return True
        if identifier.endswith(suffix) and suffix in SUFFIXES and base.endswith("_new"):
            return registered(base, spec_names)  # a new value's pointer: ``row_new_ptr``
    return False


class Temps:
    """Hands out a rule's generated temporaries, unique across all of its kernels.

    Kinds (prefix): host scalar ``_h``, CSE temporary ``_t`` (``_s`` in the reduction phase),
    three-address value ``_v``, NumPy scratch buffer ``_b``.
    """

    PREFIXES: ClassVar[dict[str, str]] = {
        "host": "_h",
        "cse": "_t",
        "reduce_cse": "_s",
        "value": "_v",
        "scratch": "_b",
    }

    def __init__(self) -> None:
        self.counts = dict.fromkeys(self.PREFIXES, 0)

    def new(self, kind: str) -> sp.Symbol:
        symbol = sp.Symbol(f"{self.PREFIXES[kind]}{self.counts[kind]}", real=True)
        self.counts[kind] += 1
        return symbol
