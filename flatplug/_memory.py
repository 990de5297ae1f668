"""How much memory a device has in use and free: CUDA's allocator, or this process and the
machine on Linux (``/proc``). ``None`` where it cannot be told, so callers take the safe path."""

from __future__ import annotations

import os

import torch


def memory_in_use(device: torch.device) -> int | None:
    """Bytes this process holds on ``device``: CUDA tensors, or the process's resident memory on a
    CPU (``/proc/self/statm``; it includes freed memory the allocator kept, so it over-counts)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None
    return None


def memory_available(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device``: CUDA's free memory, or the machine's
    ``MemAvailable`` on a CPU (``/proc/meminfo``)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    return None
