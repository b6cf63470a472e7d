"""Images/s from files (decoding included) of one backbone at 380 px in one runtime and precision, with user and system CPU seconds.

    python benchmarks/backbone_files_rate.py efficientnet_lite0 onnx int8     # or keras float32, keras bfloat16, onnx float32
    TF_ENABLE_ONEDNN_OPTS=0 python benchmarks/backbone_files_rate.py efficientnet_lite0 keras float32  # AVX2 CPUs as TensorFlow ships
"""
import glob
import os
import sys
import time

from catsdogs.data.splits import spread
from catsdogs.engine.timing import files_rate
from catsdogs.inference.model_formats import compiled_forward
from catsdogs.models import backbones

name, runtime, precision = sys.argv[1], sys.argv[2], sys.argv[3]
paths = spread(sorted(glob.glob("../shared/data/cats-and-dogs/test_set/*/*.jpg")), 384)
ex = backbones.build_feature_extractor(name, "imagenet", 380, "bfloat16" if precision == "bfloat16" else "float32")
if runtime == "onnx":
    from catsdogs.inference.backbone_runtime import onnx_backbone
    cal = spread(sorted(glob.glob("../shared/data/cats-and-dogs/training_set/*/*.jpg")), 128)
    forward = onnx_backbone(ex, precision, os.path.expanduser("~/.cache/catsdogs"), cal)
else:
    forward = compiled_forward(ex)
t0 = time.process_time(); r0 = os.times()
rate = files_rate(forward, paths, 380, 64)
r1 = os.times()
from tensorflow.python.util import _pywrap_util_port as port

print(f"RESULT {name} {runtime} {precision} onednn={port.IsMklEnabled()} steady={rate['steady']:.1f} total={rate['total']:.1f} user={r1.user-r0.user:.1f} sys={r1.system-r0.system:.1f}")
