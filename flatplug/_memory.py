"""How much memory a device has in use and free: CUDA's allocator, or this process's heap and the
machine on Linux with glibc. ``None`` where it cannot be told, so callers take the safe path."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo2():
    """glibc's ``mallinfo2`` (2.33 and later), or None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return fn


_MALLINFO2 = _mallinfo2()


def memory_in_use(device: torch.device) -> int | None:
    """Bytes allocated and not freed on ``device``: CUDA tensors, or on a CPU the bytes glibc's
    ``malloc`` has handed out (``mallinfo2``: heap blocks in use plus mapped chunks; freed memory
    the allocator keeps is not counted, so a new graph that reuses it still shows)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    if device.type == "cpu" and _MALLINFO2 is not None:
        info = _MALLINFO2()
        return int(info.uordblks + info.hblkhd)
    return None


def resident_memory(device: torch.device) -> int | None:
    """This process's resident memory (``/proc/self/statm``) on a CPU: it also sees allocations
    ``mallinfo2`` does not (other threads' arenas). None elsewhere."""
    if device.type != "cpu":
        return None
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def memory_available(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device``: on CUDA the device's free memory plus what
    PyTorch's caching allocator holds reserved but unused (it hands that out again first; the
    free memory alone omits it, right after a big measure has freed its graph); the machine's
    ``MemAvailable`` on a CPU (``/proc/meminfo``)."""
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + max(cached, 0)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    return None


def growth(before: tuple[int | None, int | None], after: tuple[int | None, int | None]) -> int | None:
    """Bytes taken between two ``(memory_in_use, resident_memory)`` readings: the larger of the
    two increases (each can miss what the other sees), None without the allocator's reading."""
    (used0, res0), (used1, res1) = before, after
    if used0 is None or used1 is None:
        return None
    grown = used1 - used0
    if res0 is not None and res1 is not None:
        grown = max(grown, res1 - res0)
    return max(grown, 0)


def reading(device: torch.device) -> tuple[int | None, int | None]:
    """``(memory_in_use, resident_memory)`` now, for :func:`growth`."""
    return memory_in_use(device), resident_memory(device)
