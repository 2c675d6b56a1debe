"""A step's inputs besides the gradients: per-element inputs (``META.INPUTS``, AdaHessian's
``hessian``) and per-step scalar inputs (``META.STEP_SCALARS``, a loss).

``opt.step(closure=None, **inputs)``, as pytorch-optimizer's ``AdaHessian.step(closure,
hessian=...)``:

- a per-element input is a list with one tensor per parameter, in the order of
  ``param_groups`` (the order of ``state_dict()``), each shaped like its parameter, on its
  device (entries of parameters without a gradient are not read and may be None); or a
  callable returning that list, called after the closure with gradients enabled (so a closure
  that runs ``loss.backward(create_graph=True)`` and an estimate built on it, such as
  ``optgen_runtime.hutchinson.hessian_diagonal``, fit one ``step`` call);
- a scalar input is a finite number; a rule that declares one named ``loss`` takes the
  closure's return value when the keyword is not given.

Everything is checked before anything is written (names, counts, shapes, devices, dtypes,
memory shared with a buffer the step writes). GradScaler's loss scale is not applied to them:
pass unscaled values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from optgen_runtime.checks import check_dense, check_device, check_dtype, check_kind, check_shape
from optgen_runtime.hyperparams import scalar_inputs

FLOATING = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class Given:
    """One step's checked inputs: ``arrays[id(param)]`` -> {input: tensor}, ``scalars``."""

    def __init__(self) -> None:
        self.arrays: dict[int, dict[str, torch.Tensor]] = {}
        self.scalars: dict[str, float] = {}

    def of(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.arrays.get(id(p), {})


class StepInputs:
    """The step inputs of ``GeneratedOptimizer`` (see the module docstring)."""

    def _given(self, inputs: dict[str, Any], loss: Any) -> Given:
        """The step's inputs, resolved (callables called, the loss taken from the closure) and
        checked by name and count; each tensor's own checks: :meth:`_check_inputs`."""
        name, meta = type(self).__name__, self.META
        unknown = sorted(set(inputs) - set(meta.INPUTS) - set(meta.STEP_SCALARS))
        if unknown:
            takes = ", ".join((*meta.INPUTS, *meta.STEP_SCALARS)) or "none"
            raise TypeError(f"{name}: unknown step input(s) {', '.join(unknown)}; takes {takes}")
        given = Given()
        scalars = dict(inputs)
        for key in meta.STEP_SCALARS:
            if scalars.get(key) is None and key == "loss" and loss is not None:
                scalars[key] = loss.detach() if isinstance(loss, torch.Tensor) else loss
            scalars.setdefault(key, None)
        given.scalars = scalar_inputs(name, meta.STEP_SCALARS, scalars)
        params = [p for group in self.param_groups for p in group["params"]]
        for key in meta.INPUTS:
            value = inputs.get(key)
            if callable(value):
                with torch.enable_grad():
                    value = value()
            if value is None:
                raise TypeError(
                    f"{name}: the step input {key} is missing: pass step({key}=[...]), one "
                    "tensor per parameter in param_groups order (or a callable returning it); "
                    "torch.distributed.checkpoint's set_optimizer_state_dict steps without it: "
                    "call init_state() before it"
                )
            if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
                raise TypeError(
                    f"{name}: step input {key} must be a list of tensors, one per parameter, "
                    f"got {type(value).__name__}"
                )
            if len(value) != len(params):
                raise ValueError(
                    f"{name}: {len(value)} {key} tensors for {len(params)} parameters "
                    "(one per parameter, in param_groups order)"
                )
            for p, x in zip(params, value, strict=True):
                if p.grad is not None:
                    given.arrays.setdefault(id(p), {})[key] = x
        return given

    def _check_inputs(self, p: torch.Tensor, label: str, given: Given) -> None:
        """``p``'s per-element inputs: dense tensors of its shape, on its device, floating
        point (the kernels' fp32/fp16/bf16 on the Triton path)."""
        name = type(self).__name__
        for key, x in given.of(p).items():
            where = f"{label}'s {key}"
            check_kind(name, where, x, torch.Tensor, "torch.Tensor")
            check_dense(name, where, x)
            check_shape(name, where, x, p, label)
            check_device(name, where, x, p, label)
            allowed = FLOATING[:3] if self._use_triton(p) else FLOATING
            check_dtype(name, where, x, allowed, ", ".join(map(str, allowed)))
