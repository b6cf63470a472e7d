"""Facts about the machine this process runs on: usable cores, CPU name and instruction sets.

Read from the operating system (Linux /proc/cpuinfo), never from TensorFlow, so that asking
costs nothing and needs no import of it.
"""

import os
import platform

CPUINFO = "/proc/cpuinfo"

# CPU flags of native bfloat16 arithmetic, which oneDNN uses for convolutions: AVX512_BF16 (AMD
# Zen 4 and later, Intel Cooper Lake) and AMX (Intel Sapphire Rapids and later).
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def usable_cpus():
    """CPU cores this process may run on (its affinity where the platform tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _cpuinfo_field(name, cpuinfo):
    """The value of the first `name` line of /proc/cpuinfo, or None where it cannot be read."""
    try:
        with open(cpuinfo) as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.split(":", 1)[0].strip() == name), None)
    except OSError:
        return None


def cpu_flags(cpuinfo=CPUINFO):
    """The CPU's instruction-set flags (empty where they cannot be read, e.g. off Linux)."""
    return set((_cpuinfo_field("flags", cpuinfo) or "").split())


def cpu_has_bfloat16(cpuinfo=CPUINFO):
    """Whether the CPU computes bfloat16 natively (False where that cannot be read)."""
    return bool(cpu_flags(cpuinfo) & set(BFLOAT16_CPU_FLAGS))


def cpu_name(cpuinfo=CPUINFO):
    """The CPU's model name, e.g. "AMD EPYC 9B45"."""
    return _cpuinfo_field("model name", cpuinfo) or platform.processor()
