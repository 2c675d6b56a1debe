"""torch.amp.GradScaler's ``(found_inf, grad_scale)`` as the multi-tensor kernels read them on the
device (no launch before the update, no host sync)."""

from __future__ import annotations

from typing import Any

import torch

Amp = tuple[torch.Tensor, torch.Tensor]  # the kernels' (found_inf, grad_scale)
_NO_AMP: dict[torch.device, Amp] = {}


def amp_flags(
    found_inf: torch.Tensor | None, scale: torch.Tensor | None, device: torch.device
) -> Amp:
    """The multi-tensor kernels' ``amp`` argument on ``device``: (found_inf, grad_scale), each a
    one-element float32 tensor, which the kernels read themselves (the inverse scale computed
    there as IEEE fp32 ``1 / grad_scale``, GradScaler.unscale_'s bits).

    GradScaler's own tensors (float32, one element, on ``device``) are passed as they are: no
    device operation, no host read; another dtype or device is converted (one copy, without
    blocking). A missing one is a constant 0 (found_inf) or 1 (grad_scale) cached per device
    (``grad * (1 / 1)`` is exact).
    """
    if device not in _NO_AMP:
        _NO_AMP[device] = (
            torch.zeros(1, dtype=torch.float32, device=device),
            torch.ones(1, dtype=torch.float32, device=device),
        )
    if found_inf is None and scale is None:
        return _NO_AMP[device]
    zero, one = _NO_AMP[device]
    return _amp_part("found_inf", found_inf, zero, device), _amp_part(
        "grad_scale", scale, one, device
    )


def _amp_part(
    name: str, value: torch.Tensor | None, missing: torch.Tensor, device: torch.device
) -> torch.Tensor:
    if value is None:
        return missing
    if value.numel() != 1:
        raise ValueError(f"GradScaler's {name} has {value.numel()} elements, not one")
    if value.dtype != torch.float32 or value.device != device:
        return value.detach().reshape(1).to(device, torch.float32, non_blocking=True)
    return value  # read through its address: its shape (one element) needs no view


def check_amp(rule: str, amp: Any, device: torch.device) -> Amp:
    if amp is None:
        return amp_flags(None, None, device)
    if not (isinstance(amp, tuple) and len(amp) == 2):
        raise TypeError(
            f"{rule}: amp must be a pair (found_inf, grad_scale) of tensors, "
            f"not {type(amp).__name__}"
        )
    for name, part in zip(("found_inf", "grad_scale"), amp, strict=True):
        if not isinstance(part, torch.Tensor) or part.dtype != torch.float32 or part.numel() != 1:
            what = (
                f"{part.dtype} {tuple(part.shape)}"
                if isinstance(part, torch.Tensor)
                else type(part).__name__
            )
            raise TypeError(
                f"{rule}: amp's {name} must be a one-element float32 tensor, not {what}"
            )
        if part.device != device:
            raise ValueError(f"{rule}: amp's {name} is on {part.device}; the weights on {device}")
    return amp


class CheckedAmp(list):
    """``ChunkTable.checked_amp``'s flags, one pair per group."""
