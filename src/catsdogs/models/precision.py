"""The compute precision of a backbone: which one this CPU should use, and building layers in it."""

import contextlib
import logging

from catsdogs.config.choices import PRECISIONS
from catsdogs.errors import ConfigError
from catsdogs.utils.host import BFLOAT16_CPU_FLAGS, cpu_has_bfloat16, cpu_has_fast_bfloat16

log = logging.getLogger(__name__)


def resolve_precision(precision):
    """The Keras compute precision to use: "auto" becomes "bfloat16" where it was measured faster, else "float32".

    bfloat16 is the default on the CPUs where it was measured both faster (`host.cpu_has_fast_bfloat16`:
    ResNet-50 1.9x, EfficientNet-Lite0 1.6-1.8x, with folded BatchNormalization) and as accurate
    (docs/BENCHMARKS.md); without native support TensorFlow emulates it, slower than float32.
    """
    if precision == "auto":
        return "bfloat16" if cpu_has_fast_bfloat16() else "float32"
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose auto or one of {PRECISIONS}")
    if precision == "bfloat16" and not cpu_has_bfloat16():
        log.warning("this CPU has no native bfloat16 (%s): it is emulated and slower than float32",
                    " or ".join(BFLOAT16_CPU_FLAGS))
    return precision


@contextlib.contextmanager
def dtype_policy(precision):
    """Builds layers under the mixed policy for "bfloat16" (bf16 compute, float32 weights)."""
    import keras

    policy = {"float32": "float32", "bfloat16": "mixed_bfloat16"}[precision]
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
