"""Hand-written runtime support imported by the generated modules (no sympy, no jinja2).

- :mod:`optgen_runtime.common`: hyperparameter and step-count checks shared by every target, and
  ``TorchEquivalent`` (a rule's torch.optim mapping).
- :mod:`optgen_runtime.checks`: the buffer checks, shared by both targets and the torch classes.
- :mod:`optgen_runtime.numpy_support`: array checks and chunking for the NumPy reference modules.
- :mod:`optgen_runtime.triton_support`: tensor checks and launch glue for the Triton modules.
- :mod:`optgen_runtime.triton_compat`: the one place that knows about Triton version differences.
- :mod:`optgen_runtime.optim`: ``GeneratedOptimizer``, the base of the torch.optim-style classes
  (``optgen_runtime.torch_optim`` re-exports it for the generated package).
"""
