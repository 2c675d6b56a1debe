"""Hand-written runtime support imported by the generated modules (no sympy, no jinja2).

- :mod:`optgen_runtime.hyperparams`: hyperparameters' legal values and their resolution at a
  step, scalar and per-element inputs, and ``TorchEquivalent`` (a rule's torch.optim mapping).
- :mod:`optgen_runtime.common`: step-count, host-state and list checks shared by every target.
- :mod:`optgen_runtime.variants`: which update runs (special cases, absent states).
- :mod:`optgen_runtime.writes`: all-or-nothing steps (writes made once every check passed).
- :mod:`optgen_runtime.checks`: the buffer checks, shared by both targets and the torch classes.
- :mod:`optgen_runtime.numpy_support`: array checks and chunking for the NumPy reference modules.
- :mod:`optgen_runtime.numpy_tiles`: the matrix view, tiles and tiled sweeps of row/column and
  matrix rules' NumPy modules.
- The Triton modules' glue, one concern per module: ``triton_checks`` (tensor checks),
  ``triton_launch`` (launches), ``triton_reduce`` (partials combined in a fixed order),
  ``triton_rows`` (per-tensor host scalars), ``triton_amp`` (GradScaler's flags),
  ``triton_chunks`` (multi-tensor chunk tables), ``triton_cache`` (tables kept between steps),
  ``triton_vouched`` (a caller's word that only the gradients moved), ``triton_matrix`` (matrix
  rules).
- :mod:`optgen_runtime.triton_compat`: the one place that knows about Triton version differences.
- :mod:`optgen_runtime.optim`: ``GeneratedOptimizer``, the base of the torch.optim-style classes
  (``optgen_runtime.torch_optim`` re-exports it for the generated package).
"""
