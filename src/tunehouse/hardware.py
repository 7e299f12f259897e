"""What this machine can do (CPU instructions, memory), read without torch so every layer may ask."""

from __future__ import annotations

from functools import cache


@cache
def cpu_has_native_bf16() -> bool:
    """Whether the CPU advertises AMX-BF16 or AVX512-BF16 instructions (Linux
    ``/proc/cpuinfo``; elsewhere False: there bf16 would be emulated, slower than float32)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def available_memory() -> int | None:
    """Memory the system reports available (``MemAvailable`` of ``/proc/meminfo``), in bytes;
    None where there is no such report."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
