"""How the runtime and the generated numba modules compile: numba's options (IEEE arithmetic,
NumPy's error model, the GIL released), a cache keyed by the runtime's sources too, and the bit
casts the compiled scalar code shares (:mod:`optgen_runtime.numba_bits`' bfloat16 and float16
conversions, :mod:`optgen_runtime.numba_math`'s logarithm and cube root)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
from numba.core import types
from numba.core.caching import FunctionCache
from numba.extending import intrinsic

# IEEE arithmetic (no reassociation, no contraction to fused multiply-add: float32 results round
# as NumPy's ufuncs do), NumPy's error model (x / 0 is inf, not ZeroDivisionError: it also keeps
# the element loops free of branches, so they vectorise), the GIL released.
NJIT: dict[str, Any] = {"fastmath": False, "error_model": "numpy", "nogil": True}

# Compiled code is cached in ``__pycache__`` next to the generated module, as Python caches
# bytecode there (numba falls back to its user-wide cache directory when that is not writable;
# NUMBA_CACHE_DIR moves it); OPTGEN_NUMBA_CACHE=0 compiles in every process.
CACHE = os.environ.get("OPTGEN_NUMBA_CACHE", "1") != "0"


def runtime_stamp(folder: Path | None = None) -> str:
    """A digest of the runtime's sources (every ``*.py`` of ``folder``, this package by default).

    numba keys a cached function by its own file only (its modification time and size, its
    bytecode), yet a compiled step holds this runtime's code too: ``load``, ``store`` and the
    views are compiled into it, and the module constants (``CHUNK``, ``PLAIN``, ...) frozen as
    literals. A checkout that changes the runtime and not a generated module (a ``git pull``, an
    edit) would otherwise run the old runtime from the cache; the digest in every cache key makes
    it compile afresh instead."""
    digest = hashlib.sha256()
    for path in sorted((folder or Path(__file__).parent).glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


RUNTIME_STAMP = runtime_stamp()


class _StampedCache(FunctionCache):
    """numba's cache of one function, each entry keyed by ``RUNTIME_STAMP`` too (read when a key is
    made, so a test can change it)."""

    def _index_key(self, sig: Any, codegen: Any) -> Any:
        return (super()._index_key(sig, codegen), RUNTIME_STAMP)


def compiled(**flags: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit`` with ``NJIT``'s options and ``flags``, cached under ``RUNTIME_STAMP``: the
    decorator of every compiled function of the runtime and the generated modules."""

    def decorate(function: Callable[..., Any]) -> Any:
        dispatcher = numba.njit(**NJIT, **flags)(function)
        if CACHE:
            # numba's ``enable_caching`` with the stamped cache in place of its FunctionCache
            dispatcher._cache = _StampedCache(function)
        return dispatcher

    return decorate


def _bitcast(source: Any, target: Any) -> Any:
    """An intrinsic reading a ``source`` value's bits as a ``target`` (same width)."""

    def typer(typingctx: Any, value: Any) -> Any:
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return builder.bitcast(args[0], context.get_value_type(target))

        return target(source), codegen

    return intrinsic(typer)


float32_of = _bitcast(types.uint32, types.float32)  # the float32 whose bits are a uint32
bits_of = _bitcast(types.float32, types.uint32)  # a float32's bits
float64_of = _bitcast(types.int64, types.float64)  # the float64 whose bits are an int64
float64_bits = _bitcast(types.float64, types.int64)  # a float64's bits
