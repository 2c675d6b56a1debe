"""Every generated kernel compiles ahead of time for sm_80 and sm_90 (no GPU needed), with fp32,
bf16 and fp16 weights, and its PTX divides and takes square roots with IEEE rounding.

Compilation runs in a subprocess without TRITON_INTERPRET (``tools/aot.py`` says why).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MATRIX_RULE_NAMES, MATRIX_RULES, RULE_NAMES, RULES, triton_module

from codegen.matrix_plan import in_place, plan
from codegen.variants import variants as all_variants
from tools.aot import MASTERS

ROOT = Path(__file__).resolve().parent.parent
# The tree whose generated/ is compiled: OPTGEN_ROOT's, when the suite runs on another tree
# (tests/conftest.py); tools and the runtime still come from this repository.
TREE = Path(os.environ.get("OPTGEN_ROOT") or ROOT)


def aot(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run(
        [sys.executable, "-m", "tools.aot", "--json", *args],
        cwd=TREE,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="module")
def compiled() -> list[dict]:
    done = aot()
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


def test_every_kernel_compiles_for_sm80_and_sm90(compiled: list[dict], rule_name: str) -> None:
    module = triton_module(rule_name)
    kernels = {n for n in vars(module) if n.endswith("_kernel")}
    assert f"{rule_name}_kernel" in kernels
    if RULES[rule_name].vector_values:  # one kernel per sweep; step_multi loops over step
        assert f"{rule_name}_multi_kernel" not in kernels
    else:
        assert f"{rule_name}_multi_kernel" in kernels  # one launch for many tensors
        reductions = {f"{rule_name}_reduce_kernel", f"{rule_name}_multi_reduce_kernel"}
        assert bool(module.REDUCTIONS) == (reductions <= kernels) == bool(reductions & kernels)
    rows = [r for r in compiled if r["rule"] == rule_name]
    # the update also as launched for fp16/bf16 parameters with a float32 master (COPY_OUT: the
    # kernel writes the parameter): the multi-tensor one, or a row-or-column rule's update sweep
    copying = {k for k in kernels if "COPY_OUT" in getattr(module, k).arg_names}
    assert copying == {
        f"{rule_name}_kernel" if RULES[rule_name].vector_values else f"{rule_name}_multi_kernel"
    }
    masters = {(k, a) for k in copying for a in (80, 90)}
    assert {(r["kernel"], r["arch"], r["weight"]) for r in rows} == {
        (k, a, w) for k in kernels for a in (80, 90) for w in ("fp32", "bf16", "fp16")
    } | {(k, a, w) for k, a in masters for w in ("bf16-master", "fp16-master")}
    for r in rows:
        assert r["target_ok"] and r["cubin_bytes"] > 0, r
        assert_ieee_division_and_sqrt(r)


def assert_ieee_division_and_sqrt(r: dict) -> None:
    """A kernel whose source divides has div.rn.f32 in its PTX, one that takes a square root
    sqrt.rn.f32, and none has an approximate division; sqrt.approx only in a tl.randn kernel
    (Triton's Box-Muller: the Philox noise is not bit-identical to NumPy's on a GPU), and
    rcp.approx.ftz only in a kernel calling libdevice (its cbrt, tanh, pow: tools/aot.py)."""
    if r["div_ops"]:
        assert r["ptx_div_rn"] > 0, f"division without div.rn.f32: {r}"
    if r["sqrt_ops"]:
        assert r["ptx_sqrt_rn"] > 0, f"square root without sqrt.rn.f32: {r}"
    libdevice = {"rcp.approx.ftz.f32"} if r["libdevice_ops"] else set()
    assert not [a for a in r["approx"] if not a.startswith("sqrt.approx") and a not in libdevice]
    assert r["div_rn_ok"] and r["sqrt_rn_ok"], f"approximate division or sqrt in {r}"


def test_the_ptx_check_catches_approximate_division_and_sqrt(tmp_path: Path) -> None:
    """Test the tester: Adam with a plain ``/`` and ``tl.sqrt`` in its shared kernel body is
    flagged in both kernels that compile it."""
    source = (ROOT / "generated" / "triton" / "adam.py").read_text()
    assert source.count("tl.div_rn(_v11, _v10)") == source.count("tl.sqrt_rn(var_new)") == 1
    source = source.replace("tl.div_rn(_v11, _v10)", "_v11 / _v10")
    source = source.replace("tl.sqrt_rn(var_new)", "tl.sqrt(var_new)")
    (tmp_path / "adam_approx.py").write_text(source)
    done = aot(str(tmp_path / "adam_approx.py"), "--arch", "90", "--weight", "fp32")
    assert done.returncode == 1, done.stderr
    rows = {r["kernel"]: r for r in json.loads(done.stdout)}
    for kernel in ("adam_kernel", "adam_multi_kernel"):
        assert sorted(rows[kernel]["approx"]) == ["div.full.f32", "sqrt.approx.ftz.f32"]
        with pytest.raises(AssertionError, match="without"):
            assert_ieee_division_and_sqrt(rows[kernel])


@pytest.mark.parametrize("rule", MATRIX_RULE_NAMES)
def test_no_arguments_compiles_the_matrix_rules_segment_kernels(
    compiled: list[dict], rule: str
) -> None:
    """``python -m tools.aot`` with no arguments compiles the matrix rules' Triton too: one
    kernel per per-element segment that stores a value a later stage reads, and the writes'
    kernel (codegen/matrix_plan.py ``in_place``), every arch and weight dtype."""
    kernels = {n for n in vars(triton_module(rule)) if n.endswith("_kernel")}
    loops = in_place(plan(MATRIX_RULES[rule])).segments
    segments = {f"{rule}_segment{i}_kernel" for i, loop in loops.items() if loop is not None}
    assert segments and kernels == {*segments, f"{rule}_commit_kernel"}
    rows = [r for r in compiled if r["rule"] == rule]
    masters = {(f"{rule}_commit_kernel", a, w) for a in (80, 90) for w in MASTERS}
    assert {(r["kernel"], r["arch"], r["weight"]) for r in rows} == masters | {
        (k, a, w) for k in kernels for a in (80, 90) for w in ("fp32", "bf16", "fp16")
    }
    for r in rows:
        assert r["target_ok"] and r["cubin_bytes"] > 0, r
        assert_ieee_division_and_sqrt(r)
        # each array once, 128-bit when aligned (the segments' fresh arrays and the states are
        # float32; the writes' kernel reads and writes the weight and states in place, and a
        # master's parameter, bf16-master/fp16-master, in the same pass)
        assert r["bytes_per_element"] == r["min_bytes_per_element"], r
        assert r["variant"] == "unaligned" or r["vectorised"], r


def test_all_rules_were_compiled(compiled: list[dict]) -> None:
    variants = {v.name for rule in RULES.values() for v in all_variants(rule)}
    no_decay = {f"{r}_no_decay" for r in RULES if "no_decay" in RULES[r].special}
    assert len(no_decay) == 9
    others = {"torch_sgd_without_momentum_buffer", "torch_sgd_plain", "sgd_plain"}
    others |= {"torch_adam_without_max_exp_avg_sq", "torch_adam_plain"}
    others |= {"torch_rmsprop_plain", "torch_rmsprop_centered_only"}
    others |= {"torch_rmsprop_momentum_only", "torch_rmsprop_without_momentum_buffer_grad_avg"}
    others |= {"torch_rmsprop_without_momentum_buffer", "torch_rmsprop_without_grad_avg"}
    others |= {"adahessian_sqrt"}
    assert variants == others | no_decay
    assert {r["rule"] for r in compiled} == set(RULE_NAMES) | set(MATRIX_RULE_NAMES) | variants


def test_refuses_to_compile_under_the_interpreter() -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run(
        [sys.executable, "-m", "tools.aot", "sgd"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "unset TRITON_INTERPRET" in done.stderr


def test_no_fused_multiply_add(compiled: list[dict]) -> None:
    """Kernels build with enable_fp_fusion=False: no fma in any form from the spec's arithmetic,
    so GPU float32 results match NumPy's separate roundings (test_float32_is_bit_identical_for_adam
    on CUDA). Only Triton's tl.randn (SGLD's Box-Muller), libdevice's own functions (MADGRAD's
    cube root) and Triton's tl.exp/tl.log bring fma.rn.ftz.f32, and are named as its source."""
    assert [r["kernel"] for r in compiled if r["fma"] and not r["fma_source"]] == []
    fused = {r["fma_source"] for r in compiled if r["fma"]}
    assert fused <= {"tl.randn", "libdevice", "tl.exp/tl.log"}, fused
    sgld = [r for r in compiled if r["rule"] == "sgld" and r["kernel"].startswith("sgld_")]
    assert sgld and all(r["fma"].get("fma.rn.ftz.f32") for r in sgld)
    assert {r["fma_source"] for r in sgld} == {"tl.randn"}
    adam = [r for r in compiled if r["rule"] == "adam"]
    assert adam and not any(r["fma"] for r in adam)


def test_every_variant_moves_the_minimum_128_bit_when_aligned(compiled: list[dict]) -> None:
    """Every variant the runtime launches, as launched (the JIT's specialisation: aligned and
    unaligned), for fp32, bf16 and fp16 weights: exactly the spec's minimal bytes per element
    (each array read once, written once), and only 128-bit per-element accesses in the aligned
    variant (ChunkTable.vectorisable tensors in the multi-tensor kernels). The sweeps of rules
    with row or column states have no flat minimum and are only reported."""
    measured = [r for r in compiled if r["min_bytes_per_element"] is not None]
    kernels = {r["kernel"] for r in measured}
    assert {"adam_kernel", "adam_multi_kernel", "lamb_multi_reduce_kernel"} <= kernels
    weights = {"fp32", "bf16", "fp16", "bf16-master", "fp16-master"}
    assert {r["weight"] for r in measured} == weights
    assert {r["variant"] for r in measured} == {"aligned", "unaligned"}
    bad = [
        (r["kernel"], r["arch"], r["weight"], r["variant"], r["accesses"])
        for r in measured
        if r["bytes_per_element"] != r["min_bytes_per_element"]
        or (r["variant"] == "aligned" and not r["vectorised"])
    ]
    assert bad == []
    adam = {(r["kernel"], r["weight"], r["variant"]): r for r in compiled if r["arch"] == 90}
    # Adam fp32: 4 arrays read, 3 written, 1024 elements over 128 threads: 2 x 16 bytes each
    assert adam["adam_multi_kernel", "fp32", "aligned"]["accesses"]["ld.v4.b32"] == 8
    assert adam["adam_multi_kernel", "fp32", "aligned"]["accesses"]["st.v4.b32"] == 6
    assert adam["adam_multi_kernel", "fp32", "aligned"]["min_bytes_per_element"] == 28
    assert adam["adam_multi_kernel", "bf16", "aligned"]["min_bytes_per_element"] == 22
    # bf16 parameters with float32 masters: the master (4 bytes) read and written, the bf16
    # gradient read, the moments read and written, and the bf16 parameter written from the
    # master in the same pass (COPY_OUT): 4 + 2 + 8 + 4 + 8 + 2, one more 128-bit store per
    # thread than without the copy, and no pass after it (which would read the master again)
    master = adam["adam_multi_kernel", "bf16-master", "aligned"]
    assert master["min_bytes_per_element"] == master["bytes_per_element"] == 28
    assert master["accesses"]["st.v4.b32"] == 7 and master["accesses"]["ld.v4.b32"] == 7


def test_an_absent_state_moves_no_bytes(compiled: list[dict]) -> None:
    """torch_sgd at momentum=0 runs its variant without the momentum buffer (``absent_when``):
    its kernels take no buffer pointer for it and move 12 bytes per fp32 element (weight read
    and written, gradient read) where the rule's own move 20; both at their spec's minimum."""
    rows = {
        (r["kernel"], r["weight"], r["variant"]): r
        for r in compiled
        if r["arch"] == 90 and r["rule"] in ("torch_sgd", "torch_sgd_without_momentum_buffer")
    }
    for kernel in ("kernel", "multi_kernel"):
        full = rows[f"torch_sgd_{kernel}", "fp32", "aligned"]
        absent = rows[f"torch_sgd_without_momentum_buffer_{kernel}", "fp32", "aligned"]
        assert full["bytes_per_element"] == full["min_bytes_per_element"] == 20
        assert absent["bytes_per_element"] == absent["min_bytes_per_element"] == 12
        assert absent["vectorised"]
        bf16 = rows[f"torch_sgd_without_momentum_buffer_{kernel}", "bf16", "unaligned"]
        assert bf16["bytes_per_element"] == bf16["min_bytes_per_element"] == 6
    variant = triton_module("torch_sgd_without_momentum_buffer")
    for kernel in ("kernel", "multi_kernel"):
        args = getattr(variant, f"torch_sgd_without_momentum_buffer_{kernel}").arg_names
        assert {"weight_ptr", "weight_like"} & set(args)
        assert not [a for a in args if "momentum" in a]


@pytest.mark.parametrize("rule", ["sgd", "torch_sgd"])
def test_a_special_case_moves_the_same_bytes_with_less_arithmetic(
    compiled: list[dict], rule: str
) -> None:
    """A special case (``special_case``: SGD at its defaults) moves the spec's minimum, 128-bit
    when aligned, and takes none of the hyperparameters it fixes."""
    rows = {
        (r["kernel"], r["weight"], r["variant"]): r
        for r in compiled
        if r["arch"] == 90 and r["rule"] == f"{rule}_plain"
    }
    for kernel in ("kernel", "multi_kernel"):
        for weight, size in (("fp32", 12), ("bf16", 6)):
            row = rows[f"{rule}_plain_{kernel}", weight, "aligned"]
            assert row["bytes_per_element"] == row["min_bytes_per_element"] == size
            assert row["vectorised"]
    fixed = {"sgd": ("wd", "rescale_grad"), "torch_sgd": ("weight_decay", "maximize", "momentum")}
    module = triton_module(f"{rule}_plain")
    for kernel in ("kernel", "multi_kernel"):
        args = getattr(module, f"{rule}_plain_{kernel}").arg_names
        assert not [a for a in args if a in fixed[rule]], args


def test_the_traffic_check_catches_lost_vectorisation_and_extra_traffic(tmp_path: Path) -> None:
    """Test the tester: Adam without the multi-tensor kernel's alignment hints loses 128-bit
    access in its aligned variant; Adam reading its gradient twice (once one element off) moves
    more than the minimum. Both fail the run."""
    source = (ROOT / "generated" / "triton" / "adam.py").read_text()
    hints = "        grad_ptr = tl.multiple_of(grad_ptr, 16)\n"
    assert source.count(hints) == 1
    (tmp_path / "adam_nohint.py").write_text(source.replace(hints, ""))
    load = "grad = tl.load(grad_ptr + offs, mask=mask).to(tl.float32)"
    assert source.count(load) == 1
    twice = f"{load} + tl.load(grad_ptr + offs + 1, mask=mask).to(tl.float32)"
    (tmp_path / "adam_twice.py").write_text(source.replace(load, twice))
    for name, kernel in (("adam_nohint", "adam_multi_kernel"), ("adam_twice", "adam_kernel")):
        done = aot(str(tmp_path / f"{name}.py"), "--arch", "90", "--weight", "fp32")
        assert done.returncode == 1, done.stderr
        rows = {(r["kernel"], r["variant"]): r for r in json.loads(done.stdout)}
        r = rows[kernel, "aligned"]
        if name == "adam_nohint":
            assert not r["vectorised"] and r["bytes_per_element"] == 28
        else:
            assert r["bytes_per_element"] > r["min_bytes_per_element"] == 28


COMBINE_PROBE = """
import json, torch
from optgen_runtime import triton_reduce
from optgen_runtime.triton_compat import aot_compile_as_launched
rows = []
for src in (torch.float32, torch.float64):
    for kind in (0, 1, 2):
        for arch in (80, 90):
            args = [torch.empty(16, dtype=src), torch.empty(16, dtype=torch.float64),
                    torch.empty(4, dtype=torch.int64), torch.empty(4, dtype=torch.int64), 0, 2]
            ptx = aot_compile_as_launched(
                triton_reduce.combine_kernel,
                args,
                {"KIND": kind, "GROUP": triton_reduce.COMBINE_GROUP},
                arch,
            ).asm["ptx"]
            rows.append({"src": str(src), "kind": kind, "arch": arch, "fma": "fma." in ptx,
                         "local": ".local" in ptx, "adds": ptx.count("add.rn.f64"),
                         "f32_adds": ptx.count("add.f32") + ptx.count("add.rn.f32")})
print(json.dumps(rows))
"""


def test_the_combine_kernel_compiles_for_sm80_and_sm90_in_ieee_float64() -> None:
    """The runtime's combine kernel (a reduction's partials added on the device as one float64
    pairwise tree, optgen_runtime/triton_reduce.py) compiles for sm_80 and sm_90 from float32
    partials and from float64 sums, for sums, maxima and minima: its sums in IEEE float64
    additions (``add.rn.f64``; no fma, no float32 addition), no local memory."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run(
        [sys.executable, "-c", COMBINE_PROBE], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout)
    assert len(rows) == 12
    assert not any(r["fma"] or r["local"] or r["f32_adds"] for r in rows), rows
    assert all(r["adds"] > 0 for r in rows if r["kind"] == 0), rows
    assert all(r["adds"] == 0 for r in rows if r["kind"] != 0), rows
