"""The one module that knows about Triton version differences (import paths, API moves).

Everything else imports ``triton``, ``tl`` and the AOT helpers from here.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import numpy as np
import triton
import triton.language as tl

try:  # Triton >= 3.0
    from triton.backends.compiler import GPUTarget
except ImportError:  # pragma: no cover - older layouts
    from triton.compiler.compiler import GPUTarget  # type: ignore[no-redef]

try:
    from triton.compiler import ASTSource
except ImportError:  # pragma: no cover
    from triton.compiler.compiler import ASTSource  # type: ignore[no-redef,attr-defined]

__all__ = [
    "LAUNCH_OPTIONS",
    "LIBDEVICE_FUNCTIONS",
    "ASTSource",
    "GPUTarget",
    "aot_compile",
    "aot_compile_as_launched",
    "interpreting",
    "libdevice",
    "resource_usage",
    "tl",
    "triton",
]

# Compile options for every launch and AOT build. No fused multiply-add: the GPU would contract
# mul + add into fma.rn.f32 (one rounding instead of two), so float32 kernels would no longer
# match the NumPy reference (separate ufuncs, two roundings) to the last bit. The kernels are
# bandwidth-bound, so the extra instruction costs nothing measurable. The interpreter ignores
# launch keywords the kernel does not declare. (Triton's default enable_reflect_ftz stays: CUDA's
# libdevice functions, such as the cbrt of MADGRAD's cube root, flush float32 subnormals to 0 on a
# GPU, which NumPy and the interpreter do not; turning it off would also change tl.randn's code.)
LAUNCH_OPTIONS: dict[str, Any] = {"enable_fp_fusion": False}


def interpreting() -> bool:
    """True when kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# The libdevice functions generated kernels call (codegen/targets/triton.py), with the NumPy
# function the interpreter computes each with, in the operand's dtype (fp32).
LIBDEVICE_FUNCTIONS: dict[str, Any] = {
    "cbrt": np.cbrt,
    "log1p": np.log1p,
    "pow": np.power,
    "tanh": np.tanh,
}


def _interpreted(function: Any) -> Any:
    """A libdevice function for the interpreter, which has no extern calls (Triton 3.8 raises
    on them): the NumPy function on the interpreter's arrays."""
    from triton.runtime.interpreter import TensorHandle

    def call(*args: Any) -> Any:
        shaped = next((a for a in args if a.type.is_block()), args[0])
        with np.errstate(all="ignore"):  # NaN for a negative base, as on the device
            data = function(*(a.handle.data for a in args))
        handle = TensorHandle(data.astype(shaped.handle.data.dtype), shaped.handle.dtype.scalar)
        return tl.core.tensor(handle, shaped.type)

    return call


def _libdevice() -> Any:
    """CUDA's libdevice (resolved per backend when a kernel compiles), or its interpreter twin."""
    if interpreting():
        return SimpleNamespace(**{k: _interpreted(f) for k, f in LIBDEVICE_FUNCTIONS.items()})
    from triton.language.extra import libdevice as device

    return device


libdevice = _libdevice()


def _quiet_interpreter() -> None:
    """Under the interpreter, kernels run without NumPy's floating-point warnings, as on a GPU
    (no FP exceptions): the interpreter evaluates both sides of a ``tl.where`` in NumPy, and a
    division by zero in the side not taken would warn."""
    from triton.runtime.interpreter import InterpretedFunction

    run = InterpretedFunction.run
    if getattr(run, "optgen_quiet", False):
        return

    def quiet_run(self: Any, *args: Any, **kwargs: Any) -> Any:
        with np.errstate(all="ignore"):
            return run(self, *args, **kwargs)

    quiet_run.optgen_quiet = True  # type: ignore[attr-defined]
    InterpretedFunction.run = quiet_run  # type: ignore[method-assign]


def _float_arguments_as_fp32() -> None:
    """Under the interpreter, a kernel's float argument arrives as a float32 value, as a compiled
    kernel's does (its launcher passes an fp32 runtime argument). The interpreter hands it over
    as a Python float, and Triton 3.8's ``scalar_constant`` makes any value equal to 0 the type's
    null value: a -0.0 argument arrived as +0.0 (found by the fuzz suite: the single-tensor
    kernels' host scalars, where the multi-tensor kernels read theirs from a float32 table)."""
    from triton.runtime import interpreter

    convert = interpreter._implicit_cvt
    if getattr(convert, "optgen_fp32", False):
        return

    def implicit_cvt(arg: Any) -> Any:
        if isinstance(arg, float):
            with np.errstate(over="ignore"):  # beyond float32's range: inf, as the launcher's
                value = np.array([arg], dtype=np.float32)
            return tl.core.tensor(interpreter.TensorHandle(value, tl.float32), tl.float32)
        return convert(arg)

    implicit_cvt.optgen_fp32 = True  # type: ignore[attr-defined]
    interpreter._implicit_cvt = implicit_cvt


def _bfloat16_casts_as_on_a_gpu() -> None:
    """Under the interpreter, float32 <-> bfloat16 casts give a GPU's bits: a bfloat16 widened
    exactly (its bits are float32's upper half), a float32 narrowed to nearest even (as
    ``cvt.rn.bf16.f32`` and torch's CPU conversion; a NaN stays a quiet NaN of its sign).
    Triton 3.8's interpreter converts field by field (``_convert_float``): it truncated every
    narrowing (round toward zero: an ulp off for about half of all values) and read bfloat16
    subnormals wrongly (``1e-39`` became ``5.9e-39``; found by the fuzz suite)."""
    from triton.runtime import interpreter

    cast = interpreter.InterpreterBuilder.cast_impl
    if getattr(cast, "optgen_bf16", False):
        return
    handle = interpreter.TensorHandle

    def cast_impl(self: Any, src: Any, dst_type: Any) -> Any:
        source, target = src.dtype.scalar, dst_type.scalar
        if source == tl.bfloat16 and target == tl.float32:
            bits = src.data.view(np.uint16).astype(np.uint32) << np.uint32(16)
            return handle(bits.view(np.float32), target)
        if source == tl.float32 and target == tl.bfloat16:
            bits = src.data.view(np.uint32)
            odd = (bits >> np.uint32(16)) & np.uint32(1)
            nearest = (bits + np.uint32(0x7FFF) + odd) >> np.uint32(16)  # a NaN's may wrap
            quiet = (bits >> np.uint32(16)) | np.uint32(0x40)
            rounded = np.where(np.isnan(src.data), quiet, nearest).astype(np.uint16)
            return handle(rounded, target)
        return cast(self, src, dst_type)

    cast_impl.optgen_bf16 = True  # type: ignore[attr-defined]
    interpreter.InterpreterBuilder.cast_impl = cast_impl  # type: ignore[method-assign]


if interpreting():
    _quiet_interpreter()
    _float_arguments_as_fp32()
    _bfloat16_casts_as_on_a_gpu()


def aot_compile(fn: Any, signature: dict[str, str], constexprs: dict[str, Any], arch: int) -> Any:
    """Compile a ``@triton.jit`` kernel for ``sm_<arch>`` without a GPU; returns the artifact."""
    if not isinstance(fn, triton.runtime.jit.JITFunction):
        # Under TRITON_INTERPRET=1, @triton.jit returns an interpreter wrapper around the
        # Python function; compiling needs the real JITFunction of that same function.
        fn = triton.runtime.jit.JITFunction(fn.fn)
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=LAUNCH_OPTIONS)


def aot_compile_as_launched(fn: Any, args: list[Any], kwargs: dict[str, Any], arch: int) -> Any:
    """Compile ``fn`` for ``sm_<arch>`` as the JIT would compile ``fn[grid](*args, **kwargs)``
    on that device, without one: the JIT's own binder turns the arguments into the signature,
    constexprs and specialisation (a tensor whose address is a multiple of 16 and an integer
    that is: ``tt.divisibility`` 16; an integer equal to 1: a constant). ``args`` may be CPU
    tensors standing in for device ones (only their dtype and address count). ``kwargs``: the
    kernel's constexprs; LAUNCH_OPTIONS are added."""
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    if not isinstance(fn, JITFunction):
        fn = JITFunction(fn.fn)  # under TRITON_INTERPRET=1 (see aot_compile)
    target = GPUTarget("cuda", arch, 32)
    backend = CUDABackend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    options = {**kwargs, **LAUNCH_OPTIONS}
    bound, specialization, options = binder(*args, **options)
    options, signature, constexprs, attrs = fn._pack_args(
        backend, options, bound, specialization, options
    )
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=target, options=options.__dict__)


def resource_usage(cubin: bytes) -> dict[str, int] | None:
    """REG, STACK, SHARED and LOCAL (bytes per thread) of the one kernel in ``cubin``, as the
    ``cuobjdump -res-usage`` shipped with Triton reports them; None without that tool."""
    import re
    import subprocess
    import tempfile
    from pathlib import Path

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        done = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True)
    found = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", done.stdout))
    return {k.lower(): int(v) for k, v in found.items()} or None
