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
# CPU flags of int8 dot products (VNNI), which ONNX Runtime's quantized kernels use: AVX512_VNNI (Intel
# Cascade Lake and later, AMD Zen 4 and later) and AVX_VNNI (Intel Alder Lake and later, AMD Zen 5).
VNNI_CPU_FLAGS = ("avx512_vnni", "avx_vnni")


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


def cpu_has_vnni(cpuinfo=CPUINFO):
    """Whether the CPU has int8 dot-product instructions (AVX512_VNNI, or AVX_VNNI on AVX2 CPUs)."""
    return bool(cpu_flags(cpuinfo) & set(VNNI_CPU_FLAGS))


def cpu_has_bfloat16(cpuinfo=CPUINFO):
    """Whether the CPU computes bfloat16 natively (False where that cannot be read)."""
    return bool(cpu_flags(cpuinfo) & set(BFLOAT16_CPU_FLAGS))


def cpu_has_amx(cpuinfo=CPUINFO):
    """Whether the CPU has AMX tile matrix units for bfloat16 (Intel Sapphire Rapids and later)."""
    return "amx_bf16" in cpu_flags(cpuinfo)


def cpu_has_fast_bfloat16(cpuinfo=CPUINFO):
    """Whether TensorFlow's bfloat16 convolutions were measured faster than float32 on this kind of CPU.

    Faster with AMX (Intel Sapphire Rapids and later) and on AMD Zen 4/5 (AVX512_BF16): ResNet-50
    1.9x, EfficientNet-Lite0 1.6x; slower (0.76x, Lite0) on an Intel Xeon with AVX512_BF16 but no
    AMX (docs/BENCHMARKS.md, "Speed per CPU and runtime").
    """
    flags = cpu_flags(cpuinfo)
    return cpu_has_amx(cpuinfo) or ("avx512_bf16" in flags and _cpuinfo_field("vendor_id", cpuinfo) == "AuthenticAMD")


def cpu_name(cpuinfo=CPUINFO):
    """The CPU's model name, e.g. "AMD EPYC 9B45"."""
    return _cpuinfo_field("model name", cpuinfo) or platform.processor()
