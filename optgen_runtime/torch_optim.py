"""Compatibility: the generated package imports ``GeneratedOptimizer`` and ``TorchEquivalent``
from here; both now live in :mod:`optgen_runtime.optim` and :mod:`optgen_runtime.common`."""

from optgen_runtime.common import TorchEquivalent
from optgen_runtime.optim import GeneratedOptimizer

__all__ = ["GeneratedOptimizer", "TorchEquivalent"]
