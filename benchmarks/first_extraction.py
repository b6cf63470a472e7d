"""The same extraction timed several times in one process: is the first one slower?

`catsdogs bench` times feature extraction from files once, in a fresh process; `catsdogs train`
extracts after its int8 calibration has run the same code. This times `engine.timing.files_rate`
(the function bench uses, which runs training's `compute_features`) four times in one process,
alternating two ONNX backbone files, each time with a new ONNX Runtime session:

    python benchmarks/first_extraction.py A.onnx B.onnx --precision int8 --photos 400 \\
        --data ../shared/data/cats-and-dogs/training_set
"""

import argparse
import glob
import os

from catsdogs.engine.timing import files_rate
from catsdogs.inference.backbone_runtime import OnnxBackbone


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs=2, help="two ONNX backbone files (catsdogs' cache holds them under onnx/)")
    parser.add_argument("--precision", default="int8", choices=("float32", "int8"))
    parser.add_argument("--data", required=True, help="a folder of class folders of photos")
    parser.add_argument("--photos", type=int, default=400, help="every 6th photo, this many")
    parser.add_argument("--image-size", type=int, default=380)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    paths = sorted(glob.glob(os.path.join(args.data, "*", "*.jpg")))[::6][:args.photos]
    for number, model in enumerate([*args.models, *args.models], 1):
        rate = files_rate(OnnxBackbone(model, args.precision), paths, args.image_size, args.batch_size)
        print(f"extraction {number} ({os.path.basename(model)}): {rate['steady']:.1f} images/s steady, "
              f"{rate['total']:.1f} in all", flush=True)


if __name__ == "__main__":
    main()
