"""What each speed-up of the backbone gives: BatchNormalization folding and bfloat16, separately.

Forward images/s of each backbone as Keras builds it (BatchNormalization layers kept) and with
BatchNormalization folded into the convolutions, in float32 and bfloat16 (mixed precision),
on ready batches of real photos: the median of several timed calls after warm-up. Each
configuration is measured in a fresh process; the repetitions are interleaved so that drifting
machine load touches all of them alike.

    flock /tmp/catsdogs-heavy.lock .venv/bin/python benchmarks/ablation.py --data ../shared/data/cats-and-dogs/test_set
"""

import argparse
import concurrent.futures
import itertools
import json
import multiprocessing

import numpy as np


def measure(backbone, precision, fold, paths, batch_size, repeats):
    """Forward images/s of one configuration (run in a fresh process)."""
    from catsdogs.engine.bench import extractor_with_available_weights
    from catsdogs.engine.timing import forward_rate
    from catsdogs.inference.model_formats import compiled_forward
    from catsdogs.inference.pipeline import decoded_images

    extractor = extractor_with_available_weights(backbone, precision, fold_batch_norm=fold)[0]
    images = decoded_images(paths[:batch_size], extractor.input_shape[1])
    return forward_rate(compiled_forward(extractor), images, repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder of photos")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per configuration (median)")
    parser.add_argument("--output", help="write the results as JSON")
    args = parser.parse_args()

    from catsdogs.data.dataset import expand_inputs

    paths = expand_inputs([args.data])
    configurations = list(itertools.product(("resnet50", "efficientnet_lite0"), ("float32", "bfloat16"), (False, True)))
    rates = {c: [] for c in configurations}
    context = multiprocessing.get_context("spawn")
    for _ in range(args.rounds):
        for configuration in configurations:
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
                rates[configuration].append(
                    pool.submit(measure, *configuration, paths, args.batch_size, args.repeats).result())

    print(f"forward images/s, batch {args.batch_size}, median of {args.rounds} rounds of {args.repeats} timed calls\n")
    print(f"{'backbone':<20}{'precision':<11}{'BatchNormalization':>20}{'folded':>10}{'speed-up':>10}")
    results = []
    for backbone, precision in itertools.product(("resnet50", "efficientnet_lite0"), ("float32", "bfloat16")):
        kept, folded = (float(np.median(rates[backbone, precision, fold])) for fold in (False, True))
        print(f"{backbone:<20}{precision:<11}{kept:20.1f}{folded:10.1f}{folded / kept:9.2f}x")
        results.append({"backbone": backbone, "precision": precision, "batch_norm_kept": kept, "folded": folded,
                        "rounds": {str(fold): rates[backbone, precision, fold] for fold in (False, True)}})
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"batch_size": args.batch_size, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
