"""The one device and CUDA-speed idiom: pick the device, and run a model the fast way on it.

On CUDA a forward pass runs under bf16 autocast with channels_last inputs and weights (tensor cores);
on the CPU it runs as is, in float32. Every embedding, training and search path goes through here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from contextlib import nullcontext

import torch

from core.errors import ShoesearchError


def pick_device(requested: str) -> torch.device:
    """``auto`` (or empty) -> cuda when available, else cpu; an explicit ``cuda`` without a GPU is a user error.
    On the CPU the process's allocator is set to keep freed memory (:func:`keep_freed_memory`)."""
    if requested in ("auto", ""):
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ShoesearchError(f"device {requested!r} was asked for but no CUDA GPU is available "
                              "(set the device to auto or cpu)")
    device = torch.device(requested)
    if device.type == "cpu":
        keep_freed_memory()
    return device


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)


def keep_freed_memory(keep_bytes: int = 2**30) -> bool:
    """Make glibc serve every allocation from its heap and keep up to ``keep_bytes`` of freed memory there.

    By default glibc maps each block over 32 MB afresh and unmaps it on free, so every forward / backward pass
    of a conv net on the CPU page-faults its activations in again: measured on this project's training step
    (Lite0, 3 trainable stages, 128 images), 25 % of the CPU time was the kernel zeroing pages, and the step
    took 1.34x longer (bench/train.py). Process-wide; the price is up to ``keep_bytes`` held after a peak.
    Returns whether it applied (glibc only; a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, keep_bytes))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


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
