"""GradScaler (AMP): skipped steps and unscaling, on the device where the kernels allow it.

The classes declare ``_step_supports_amp_scaling``, so ``torch.amp.GradScaler`` only checks the
gradients for inf/NaN and hands the optimizer ``grad_scale`` and ``found_inf``. A step with
``found_inf`` set is skipped (weights, state, step counts and host states untouched).

On the Triton path of a rule without per-tensor reductions neither is read on the host: the
update kernels read GradScaler's found_inf and scale themselves (``amp_flags``: no device
operation when both are float32 on the weights' device; the inverse scale computed in the kernel
to GradScaler.unscale_'s bits), write nothing when the flag is set and unscale the gradient
right after loading it; the step count and host states advance speculatively and ``_settle`` rolls
them back, before anything reads or steps the state again, if the flag (copied to the host
without blocking) was set. Otherwise (the NumPy backend; LAMB/LARS/LBSGD, which copy their
partial sums to the host anyway) both are read on the host: a flagged step returns at once, and
the loss scale is undone as ``rescale_grad / scale`` where the gradient enters only through
``rescale_grad * grad`` (``FOLDS_GRAD_SCALE``, decided symbolically at generation), else by
unscaling the gradients in place first, as GradScaler.unscale_ would.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import torch

from optgen_runtime.checks import view_key
from optgen_runtime.triton_amp import Amp, amp_flags

# What a skipped step rolls back, per parameter: (param, its state, its step count before the
# step or None if the step created the state, its host states before the step). The param is
# read only to drop a state the step created (None from the fast step, which creates none).
# Read once, by ``_settle``, and only if the step was skipped: an iterator will do.
Undo = Iterable[tuple[torch.Tensor | None, dict[str, Any], int | None, dict[str, float]]]


class Pending(NamedTuple):
    """A step taken with GradScaler's ``found_inf`` on the device: a non-blocking copy of the
    flag to the host, the event that marks it done (None for a CPU flag: the copy is
    synchronous), and what to roll back if it was set (``AmpScaling._settle``)."""

    flag: torch.Tensor
    event: Any
    undo: Undo

    @classmethod
    def start(cls, found_inf: torch.Tensor, undo: Undo, flag: torch.Tensor | None) -> Pending:
        """``flag``: the host buffer of the optimizer's last pending step, reused where it
        suits (read by ``_settle`` before this step began), else None: a new one."""
        cuda = found_inf.device.type == "cuda"
        if flag is None or flag.dtype != found_inf.dtype or flag.is_pinned() != cuda:
            flag = torch.empty(found_inf.shape, dtype=found_inf.dtype, pin_memory=cuda)
        if flag.shape != found_inf.shape:
            flag = flag.reshape(found_inf.shape)  # one element either way
        flag.copy_(found_inf, non_blocking=True)
        event = None
        if cuda:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(found_inf.device))
        return cls(flag, event, undo)

    def found(self) -> bool:
        if self.event is not None:
            self.event.synchronize()
        return self.flag.item() != 0.0


class AmpScaling:
    """GradScaler support of ``GeneratedOptimizer`` (see the module docstring)."""

    _step_supports_amp_scaling = True  # GradScaler passes grad_scale / found_inf

    def _amp_on_device(self, scale: Any, found_inf: Any) -> bool:
        """Whether this step leaves GradScaler's ``found_inf``/``grad_scale`` on the device.

        True when there is one and every parameter with a gradient goes through the Triton
        kernels of a rule without per-tensor reductions: the kernels skip and unscale, and the
        step count and host states advance speculatively (``_settle`` rolls them back). Other
        steps read ``found_inf`` and ``grad_scale`` on the host: the NumPy backend, and rules
        with reductions, which copy their partial sums to the host anyway (one sync per step).
        """
        if (scale is None and found_inf is None) or self.META.REDUCTIONS:
            return False
        return all(
            self._use_triton(p)
            for group in self.param_groups
            for p in group["params"]
            if p.grad is not None
        )

    def _undo(self, params: list[torch.Tensor]) -> Undo:
        """What a step of ``params`` skipped on the device rolls back (read before the step)."""
        undo: list[tuple[torch.Tensor | None, dict[str, Any], int | None, dict[str, float]]] = []
        for p in params:
            state = self.state.get(p)
            if not state:
                undo.append((p, {}, None, {}))
            else:
                old = {key: state[key] for key in self.META.HOST_STATES}
                undo.append((p, state, int(state["step"]), old))
        return undo

    def _device_amp(
        self, devices: list[torch.device], scale: Any, found_inf: Any, undo: Undo
    ) -> dict[torch.device, Amp]:
        """The kernels' (found_inf, grad_scale) per device; a set flag is settled later."""
        amps = {device: amp_flags(found_inf, scale, device) for device in devices}
        if found_inf is not None:
            self._pending = Pending.start(found_inf, undo, getattr(self, "_flag", None))
            self._flag = self._pending.flag
        return amps

    def _unscale(self, grads: list[torch.Tensor], inverse: float) -> None:
        """Gradients unscaled in place, where ``rescale_grad`` cannot take the scale; a gradient
        shared by parameters once (``_check_across`` refused partial overlaps)."""
        if self._unscales_in_place(inverse):
            for grad in {view_key(grad): grad for grad in grads}.values():
                grad.mul_(inverse)

    def _unscales_in_place(self, inverse: float) -> bool:
        return inverse != 1.0 and not self.META.FOLDS_GRAD_SCALE

    def _fold_scale(self, hp: dict[str, Any], inverse: float) -> None:
        """The inverse loss scale folded into ``rescale_grad``, where the spec proves it exact."""
        if inverse != 1.0 and self.META.FOLDS_GRAD_SCALE:
            hp["rescale_grad"] = hp["rescale_grad"] * inverse

    def _settle(self) -> None:
        """Resolve the last step's speculative state; every read or step of state calls this.

        A step that left ``found_inf`` on the device (``_amp_on_device``) advanced every step
        count and host state as if it was taken and started a non-blocking copy of the flag to
        the host. Here the copy is waited for (long complete by now) and, if the flag was set,
        the kernels wrote nothing, so step counts and host states are rolled back and state
        created by that step is dropped: as if ``step()`` had not been called. (``opt.state``
        read directly in between shows the speculative step counts; ``state_dict()`` settles.)
        """
        pending, self._pending = getattr(self, "_pending", None), None
        if pending is None or not pending.found():
            return
        for p, state, step, host in pending.undo:
            if step is None:
                self.state.pop(p, None)
            else:
                state["step"].fill_(step)
                state.update(host)

    def __getstate__(self) -> dict[str, Any]:
        self._settle()
        return super().__getstate__()
