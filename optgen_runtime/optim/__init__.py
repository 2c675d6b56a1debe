"""The ``torch.optim``-style base class of the generated optimizers, one module per concern
(see :mod:`optgen_runtime.optim.base`)."""

from optgen_runtime.hyperparams import TorchEquivalent
from optgen_runtime.optim.base import GeneratedOptimizer
from optgen_runtime.optim.exchange import torch_optimizer

__all__ = ["GeneratedOptimizer", "TorchEquivalent", "torch_optimizer"]
