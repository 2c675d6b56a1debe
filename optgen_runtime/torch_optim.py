"""Compatibility: the generated package imports ``GeneratedOptimizer`` and ``TorchEquivalent``
from here; both now live in :mod:`optgen_runtime.optim` and :mod:`optgen_runtime.hyperparams`."""

from optgen_runtime.hyperparams import TorchEquivalent
from optgen_runtime.optim import GeneratedOptimizer

__all__ = ["GeneratedOptimizer", "TorchEquivalent"]
