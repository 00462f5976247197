"""The one device and CUDA-speed idiom: pick the device, and run a model the fast way on it.

On CUDA a forward pass runs under bf16 autocast with channels_last inputs and weights (tensor cores);
on the CPU it runs as is, in float32. Every embedding, training and search path goes through here.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from core.errors import ShoesearchError


def pick_device(requested: str) -> torch.device:
    """``auto`` (or empty) -> cuda when available, else cpu; an explicit ``cuda`` without a GPU is a user error."""
    if requested in ("auto", ""):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ShoesearchError(f"device {requested!r} was asked for but no CUDA GPU is available "
                              "(set the device to auto or cpu)")
    return torch.device(requested)


def on_device(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` moved to ``device``, in channels_last on CUDA."""
    module = module.to(device)
    return module.to(memory_format=torch.channels_last) if device.type == "cuda" else module


def autocast(device: torch.device, amp: bool = True):
    """bf16 autocast on CUDA (when ``amp``), nothing elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else nullcontext()


def fast_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch moved to ``device`` (non-blocking from pinned memory), channels_last on CUDA."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def forward(fn, x: torch.Tensor, device: torch.device, amp: bool = True) -> torch.Tensor:
    """``fn(x)`` the fast way on ``device`` (see module docstring), as float32."""
    with autocast(device, amp):
        return fn(fast_input(x, device)).float()
