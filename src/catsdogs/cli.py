"""The `catsdogs` command: parses arguments and calls the library."""

import argparse
import dataclasses
import json
import logging
import os
import sys

from catsdogs.config.choices import (
    BACKBONE_PRECISIONS,
    BENCH_BATCH_SIZES,
    BENCH_RUNTIMES,
    ENGINES,
    FORMATS,
    INFERENCE_BATCH_SIZE,
    MAX_SIMILAR,
    QUANTIZATIONS,
    REVIEW_MISTAKES,
    UNKNOWN_LABEL,
)
from catsdogs.config.fields import flag_of
from catsdogs.config.serve import API_KEY_ENV, ReplicaSettings, ServeSettings
from catsdogs.config.train import TrainConfig
from catsdogs.errors import ConfigError

EPILOG = "Run `catsdogs COMMAND -h` for the options of a command."


def _int_list(text):
    return tuple(int(part) for part in text.split(",") if part.strip())


def _name_list(choices=None):
    """An argument type: comma-separated names, each one of `choices` if given."""
    def parse(text):
        names = tuple(part.strip() for part in text.split(",") if part.strip())
        unknown = [name for name in names if choices and name not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"{', '.join(unknown) or repr(text)}: choose from {', '.join(choices or ())}")
        return names
    return parse


def _default(field):
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def add_settings(p, settings, names=None):
    """One option per field of a settings dataclass (`TrainConfig`, `ServeSettings`), as the field declares it
    (`config.fields.setting`): flag, help, choices; the default and the type from the field itself.

    Args:
        p: the parser of a command.
        settings: the dataclass.
        names: the fields to add (default: every field that has an option).
    """
    for field in dataclasses.fields(settings):
        if not field.metadata.get("option", True) or (names is not None and field.name not in names):
            continue
        default = _default(field)
        help_text = field.metadata.get("help", "")
        kwargs = dict(dest=field.name, default=default, choices=field.metadata.get("choices"),
                      metavar=field.metadata.get("metavar"))
        if not (kwargs["metavar"] or kwargs["choices"] or field.type is bool):
            kwargs["metavar"] = flag_of(field).lstrip("-").replace("-", "_").upper()  # --max-images MAX_IMAGES
        if field.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction  # --fine-tune / --no-fine-tune
        elif field.type == tuple[str, ...]:
            kwargs.update(action="append", default=[])  # repeat the option for more
        elif field.type == tuple[int, ...]:
            kwargs["type"] = _int_list
            help_text += " (default: " + ",".join(map(str, default)) + ")"
        else:
            kwargs["type"] = field.type if field.type in (int, float) else str
            if default not in (None, "") and "%(default)" not in help_text:
                help_text += " (default: %(default)s)"
        p.add_argument(flag_of(field), help=help_text, **{k: v for k, v in kwargs.items() if v is not None})


def settings_from(args, settings, **values):
    """A settings dataclass from parsed arguments: every field that has an option, tuples as tuples."""
    fields = {field.name: getattr(args, field.name) for field in dataclasses.fields(settings)
              if hasattr(args, field.name)}
    fields = {name: tuple(value) if isinstance(value, list) else value for name, value in fields.items()}
    return settings(**{**fields, **values})


class _Renamed(argparse.Action):
    """An option's old spelling: refused, with the new one named (so that old commands fail clearly)."""

    def __init__(self, option_strings, dest, instead="", **kwargs):
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS)
        self.instead = instead

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is not an option of this command: {self.instead}")


def _add_train(commands):
    p = commands.add_parser(
        "train", help="train and evaluate a classifier on a folder of labelled photos",
        description="Trains a classifier by transfer learning: features of every image are computed once "
                    "by a frozen ImageNet backbone and cached, then a small head is trained on them. Writes a "
                    "run directory with the model, metrics, figures and report.html.")
    data_dir = next(field for field in dataclasses.fields(TrainConfig) if field.name == "data_dir")
    p.add_argument("data_dir", help=data_dir.metadata["help"])
    add_settings(p, TrainConfig)  # one option per setting, as TrainConfig declares it
    p.set_defaults(func=_train)


def _add_format(p):
    """--format of predict and serve: how MODEL is stored, checked against what it holds."""
    p.add_argument("--format", choices=FORMATS,
                   help="how the model is stored, checked against what MODEL holds (default: what it holds: a run "
                        "directory or .keras file is keras, its backbone run in ONNX Runtime where the run computed "
                        "its features there; keras on a run directory runs all of it in Keras; an export folder is "
                        "its format)")
    p.add_argument("--runtime", action=_Renamed, instead="the model's format is --format (keras, savedmodel, onnx, "
                   "tflite); --runtime names what runs the backbone in `catsdogs train`")


def _add_engine(p, what):
    """--engine of predict, and the cluster's --address and --workers as TrainConfig declares them."""
    p.add_argument("--engine", choices=ENGINES, default="local",
                   help=f"local (default): this process; ray: {what} (pip install 'catsdogs[ray]')")
    add_settings(p, TrainConfig, names=("ray_address", "ray_workers"))


def _train(args):
    from catsdogs.engine.train import train
    from catsdogs.evaluation.metrics import format_metrics

    run = train(settings_from(args, TrainConfig))
    print(format_metrics(run.metrics))
    print(f"\nrun directory: {run.run_dir}  (open {run.run_dir}/report.html)")


def _evaluate(args):
    from catsdogs.data.labels import Columns
    from catsdogs.evaluation.evaluate import default_output_dir, evaluate
    from catsdogs.evaluation.metrics import format_metrics
    from catsdogs.inference.classifier import load

    columns = Columns(args.path_column, args.label_column, args.split_column)
    evaluation = evaluate(load(args.model), args.data, args.tta, args.batch_size, args.unknown_data, args.labels, columns)
    # Each file left out is named with its reason, so that the metrics' image count is explained.
    for skipped in evaluation.integrity["skipped"]:
        logging.getLogger("catsdogs").warning("skipped %s: %s", printable(skipped["path"]), skipped["problem"])
    output_dir = args.output or default_output_dir(args.model)
    evaluation.save(output_dir)
    print(format_metrics(evaluation.metrics))
    print(f"\nevaluation written to {output_dir}")


def printable(name):
    """A file name as one printable line: newlines and undecodable bytes escaped as Python does."""
    return name if name.isprintable() else ascii(name)[1:-1]


def format_table(predictions, top_k=1):
    """A plain table: path, label, probability (and in-distribution score), and the next most
    probable classes with `top_k` above 1; errors on their own line; the similar training photos
    where asked for, one indented line each (similarity, label, path relative to the run's data folder).
    A multi-label model's table has the set of labels ("none" where none applies, "unknown" when
    rejected) and every label's probability.

    Odd characters in file names (newlines, undecodable bytes) are escaped, so each file keeps one line.
    """
    names = [printable(p.path) for p in predictions]
    width = max([len(n) for n in names] + [4])
    scored = any(p.in_distribution_score is not None for p in predictions)
    multi_label = any(p.labels is not None for p in predictions)
    lines = [f"{'file':<{width}}  " + ("in-distribution  " if scored else "")
             + ("labels                 probabilities" if multi_label else f"{'label':<12} probability")
             + (f"  top {top_k}" if top_k > 1 else "")]
    for name, p in zip(names, predictions):
        if p.error is not None:
            lines.append(f"{name:<{width}}  ERROR: {p.error}")
            continue
        score = f"{p.in_distribution_score:15.4f}  " if p.in_distribution_score is not None else ""
        top = "  " + ", ".join(f"{label} {probability:.4f}" for label, probability in p.top(top_k)) \
            if top_k > 1 else ""
        if multi_label:
            answer = p.label if p.accepted is False else ", ".join(p.labels) or "none"
            every = " ".join(f"{label} {probability:.4f}" for label, probability in p.probabilities.items())
            lines.append(f"{name:<{width}}  {score}{answer:<22} {every}{top}")
        else:
            lines.append(f"{name:<{width}}  {score}{p.label:<12} {p.probability:.4f}{top}")
        lines += [f"    similar {photo.similarity:.4f}  {photo.label:<12} {printable(photo.path)}"
                  for photo in p.similar or ()]
    return "\n".join(lines)


def _predict_on_ray(args):
    from catsdogs.engine.ray.scoring import predict_to_parquet

    if not args.output or args.csv or args.json:
        raise ConfigError("--engine ray writes Parquet: give --output DIR (and neither --csv nor --json)")
    if args.top_k != 1:
        raise ConfigError("--top-k is for predictions printed or written here; --engine ray's Parquet files have "
                          "every class's probability (p_CLASS columns)")
    if args.similar:
        raise ConfigError("--similar is for predictions printed or written here, not --engine ray's Parquet files")
    result = predict_to_parquet(args.model, args.inputs, args.output, args.ray_address or None,
                                args.ray_workers, args.format, args.tta, args.batch_size)
    print(f"{result.rows} predictions ({result.errors} errors) written to {result.output} by {result.workers} "
          f"workers on {result.nodes} nodes in {result.seconds:.1f} s")
    return 1 if result.rows and result.errors == result.rows else 0


def _predict(args):
    if args.top_k < 1:
        raise ConfigError(f"--top-k {args.top_k}: expected at least 1")
    if not 0 <= args.similar <= MAX_SIMILAR:
        raise ConfigError(f"--similar {args.similar}: expected 1 to {MAX_SIMILAR}")
    if args.engine == "ray":  # before anything loads TensorFlow: this process only lists files and starts Ray
        return _predict_on_ray(args)
    from catsdogs.inference.classifier import load
    from catsdogs.utils.csvfiles import write_csv

    if args.output:
        raise ConfigError("--output is for --engine ray (Parquet); use --csv FILE or --json")
    classifier = load(args.model, args.format)
    predictions = classifier.predict(args.inputs, args.tta, args.batch_size, reject=args.reject,
                                     reject_threshold=args.reject_threshold, unknown_label=args.unknown_label,
                                     similar=args.similar)
    if args.json:
        print(json.dumps([p.to_dict(args.top_k) for p in predictions], indent=2))
    elif args.csv:  # the same columns on every row
        write_csv([p.to_row(classifier.classes, args.top_k, classifier.info.label_separator, args.similar)
                   for p in predictions], args.csv)
        print(f"{len(predictions)} predictions written to {args.csv}")
    else:
        print(format_table(predictions, args.top_k))
    failed = sum(p.error is not None for p in predictions)
    if failed:
        logging.getLogger("catsdogs").warning("%d of %d files could not be read", failed, len(predictions))
    return 1 if predictions and failed == len(predictions) else 0


def _export(args):
    from catsdogs.engine.export import export_model, format_parity

    folder, parity = export_model(args.model, args.format, args.output, args.quantization, args.data,
                                  args.parity_images, args.calibration_images, args.batch_size)
    print(format_parity(folder, parity))


def _bench(args):
    from catsdogs.engine.bench import format_report, run_bench

    report = run_bench(args.backbone, args.precisions, args.batch_sizes, args.images, args.data, args.repeats,
                       args.quick, args.runtimes, args.image_size)
    print(format_report(report))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)
        print(f"results written to {args.output}")


def _runs(args):
    from catsdogs.store import runs

    if args.compare:
        from catsdogs.engine.compare import compare_runs, format_comparison

        comparison = compare_runs(*args.compare, folder=args.folder)
        print(json.dumps(comparison, indent=2) if args.json else format_comparison(comparison))
        return
    listed = runs.list_runs(args.folder)  # folders that are not finished runs are named on stderr
    if args.json:
        print(json.dumps(listed, indent=2))
    else:
        print(runs.format_runs(listed) if listed else f"no runs in {args.folder}")


def _add_runs(commands):
    p = commands.add_parser(
        "runs", help="list the runs in a folder, or compare two",
        description="Lists the run directories in DIR, oldest first: backbone, head, input size, runtime, the "
                    "other settings that differ from the defaults, test accuracy, balanced accuracy, the share "
                    "of unknown photos accepted (runs trained with --unknown-data), the seconds of the training "
                    "stages and the date. Folders that are not finished runs are named on stderr. With --compare, "
                    "every setting that differs between two runs, their metrics side by side, and, where both were "
                    "tested on the same photos, whether they differ by more than chance (McNemar's exact test, a "
                    "paired bootstrap of the log-loss) and the photos whose answer changed; runs tested on "
                    "different photos are said not to be comparable.")
    p.add_argument("folder", nargs="?", default="runs", metavar="DIR",
                   help="folder of run directories (default: %(default)s)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two run directories, or names of runs in DIR")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_runs)


def _add_export(commands):
    p = commands.add_parser(
        "export", help="export a trained model to another format and check it against the Keras model",
        description="Writes the model as Keras, TensorFlow SavedModel, ONNX or TFLite into a folder with "
                    "export.json (inputs, outputs, class names) and parity.json: agreement and largest probability "
                    "difference with the Keras model on real test photos, speed and size. Exported models take "
                    "resized pixels; `catsdogs predict EXPORT_DIR` decodes and resizes photos for them as for "
                    "the Keras model. ONNX needs pip install 'catsdogs[onnx]', TFLite 'catsdogs[tflite]'.")
    p.add_argument("model", help="run directory or .keras model file")
    p.add_argument("--format", required=True, choices=FORMATS, help="how the exported model is stored")
    p.add_argument("--quantization", choices=QUANTIZATIONS, default="float32",
                   help="TFLite only: float32; float16 weights; int8 weights and activations, calibrated on "
                        "training photos (post-training quantization)")
    p.add_argument("--output", help="export folder (default: exports/FORMAT beside the model)")
    p.add_argument("--data", help="dataset to take photos from (default: the run's splits.csv)")
    p.add_argument("--parity-images", type=int, default=200,
                   help="test photos to check the export on, drawn at random (0: all; default: %(default)s)")
    p.add_argument("--calibration-images", type=int, default=200,
                   help="training photos that calibrate int8 quantization (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=INFERENCE_BATCH_SIZE, help="images per forward pass")
    p.set_defaults(func=_export)


def _add_bench(commands):
    p = commands.add_parser(
        "bench", help="measure the speed of each backbone in every runtime and precision on this machine",
        description="Images/s of the model alone (forward) and from files (decoding included, as predict and "
                    "feature extraction), at several batch sizes, in every runtime side by side: Keras (float32, "
                    "and bfloat16 where the CPU has it), ONNX Runtime float32 and int8, OpenVINO float32 (where "
                    "installed). Achieved GFLOP/s against the peak of the runtime's precision, measured in the "
                    "same run by a tuned kernel (float32: numpy's OpenBLAS sgemm; bfloat16: oneDNN's matmul; "
                    "int8: ONNX Runtime's integer matmul); the CPU's flags; peak memory; the fastest runtime "
                    "from files. Runs on random weights where pretrained ones are unavailable (speed does not "
                    "depend on them) and says so.")
    p.add_argument("--backbone", type=_name_list(), default=None,
                   help="comma-separated backbones (default: all; see `catsdogs backbones`)")
    p.add_argument("--precisions", type=_name_list(BACKBONE_PRECISIONS), default=None,
                   help="comma-separated precisions; each runtime is timed in those it has (keras: float32, "
                        "bfloat16; onnx: float32, int8; openvino: float32) (default: float32, int8, and bfloat16 "
                        "where the CPU has it natively)")
    p.add_argument("--batch-sizes", type=_int_list, default=BENCH_BATCH_SIZES,
                   help=f"default: {','.join(map(str, BENCH_BATCH_SIZES))}")
    p.add_argument("--images", type=int, default=256, help="photos to predict from files (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=0,
                   help="input side in pixels (default: each backbone's own, see `catsdogs backbones`)")
    p.add_argument("--data", help="folder of photos (default: synthetic 500x375 JPEG photos)")
    p.add_argument("--repeats", type=int, default=5, help="timed forward passes; the median is reported")
    p.add_argument("--runtimes", type=_name_list(BENCH_RUNTIMES), default=None,
                   help=f"comma-separated, from {','.join(BENCH_RUNTIMES)}: what runs the backbone, as train's "
                        f"--runtime (default: all that are installed; the others are noted)")
    p.add_argument("--quick", action="store_true", help="a smoke test in seconds, not a measurement")
    p.add_argument("--output", metavar="FILE", help="write the results as JSON")
    p.set_defaults(func=_bench)


def _explain(args):
    from catsdogs.inference import explain
    from catsdogs.inference.classifier import load

    explanation, output = explain.explain_photo(load(args.model, "keras").model, args.photo, args.output,
                                                args.class_name)
    print(f"{args.photo}: {explanation.label} {explanation.probabilities[explanation.label]:.4f}; "
          f"Grad-CAM of {explanation.explained!r} written to {output}")


def _serve(args):
    from catsdogs.utils.extras import require

    require("serve", "serving")
    # The key may come from the environment, so that it stays out of `ps` and shell history.
    settings = settings_from(args, ServeSettings, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None)
    if args.engine == "ray":
        replicas = settings_from(args, ReplicaSettings)
        require("ray", "--engine ray")
        from catsdogs.apps.serve.ray_serve import serve_on_ray

        serve_on_ray(args.model, args.host, args.port, settings, args.name, args.format, args.ray_address or None,
                     replicas)
        return
    from catsdogs.apps.serve.app import serve

    serve(args.model, args.host, args.port, settings, args.name, args.format)


def _add_serve(commands):
    p = commands.add_parser(
        "serve", help="serve a model over HTTP: an API and a web page",
        description="Serves a trained model: TensorFlow Serving's REST API (POST /v1/models/NAME:predict, GET "
                    "/v1/models/NAME/metadata), the Open Inference Protocol (/v2/...: Triton, KServe), catsdogs' "
                    "labelled answers (POST /predict: JSON or multipart uploads), GET /healthz, a web page at / "
                    "and API documentation at /docs. Requests that arrive together share one forward pass. "
                    "Limits bound memory and time per request. --engine ray runs model replicas on Ray Serve. "
                    "See docs/serving.md.")
    p.add_argument("model", help="run directory, .keras model file, or export folder (from catsdogs export); "
                                 "Grad-CAM heatmaps need a run directory or .keras file")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 for every network)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0 picks a free one)")
    p.add_argument("--name", help="the model's name in /v1/models/NAME (default: the run directory's name)")
    _add_format(p)
    add_settings(p, ServeSettings)  # one option per setting, as ServeSettings declares it
    p.add_argument("--engine", choices=ENGINES, default="local",
                   help="local (default): this process; ray: model replicas on Ray Serve, on a cluster of this "
                        "machine or --address (pip install 'catsdogs[ray]')")
    add_settings(p, TrainConfig, names=("ray_address",))
    add_settings(p, ReplicaSettings)
    p.set_defaults(func=_serve)


def _review(args):
    from catsdogs.utils.extras import require

    require("serve", "the review page")
    from catsdogs.apps.review.app import review

    review(args.run, args.corrections, args.mistakes, args.host, args.port, tuple(args.allowed_hosts))


def _add_review(commands):
    p = commands.add_parser(
        "review", help="review wrongly labelled photos in a web page: keep, relabel or exclude each",
        description="Opens a local web page listing the training and validation photos whose labels look wrong "
                    "(cleanlab, on out-of-sample predictions) and the most confident mistakes of every split, "
                    "each with its Grad-CAM. Keep, relabel or exclude each one with a click or a key; every "
                    "decision is saved at once to a corrections file, which `catsdogs train DATA --labels FILE` "
                    "applies. Test photos can be relabelled but never excluded. The page opens from the address "
                    "printed at start-up, whose token lets the browser in.")
    p.add_argument("run", help="run directory (from catsdogs train)")
    p.add_argument("--corrections", metavar="FILE",
                   help="the corrections CSV to append decisions to; decisions already in it are shown "
                        "(default: RUN/corrections.csv)")
    p.add_argument("--mistakes", type=int, default=REVIEW_MISTAKES, metavar="K",
                   help="list the K most confident mistakes besides the flagged photos (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=8001, help="port (default: %(default)s; 0 picks a free one)")
    add_settings(p, ServeSettings, names=("allowed_hosts",))
    p.set_defaults(func=_review)


def _backbones(args):
    from catsdogs.models.backbones import BACKBONES

    for backbone in BACKBONES.values():
        print(f"{backbone.name:<20} {backbone.default_image_size}px  {backbone.feature_dim}-d  {backbone.description}")


def build_parser():
    parser = argparse.ArgumentParser(prog="catsdogs", description="Image classifiers from folders of photos, "
                                     "by transfer learning from ImageNet backbones.", epilog=EPILOG)
    parser.add_argument("-v", "--verbose", action="store_true", help="show debugging messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(commands)

    p = commands.add_parser("evaluate", help="evaluate a trained model on labelled photos")
    p.add_argument("model", help="run directory or .keras model file")
    p.add_argument("--data", required=True, help="dataset with a test folder, or a folder of class folders")
    p.add_argument("--output", help="folder for metrics, predictions, figures and report.html")
    p.add_argument("--tta", action="store_true", help="also report test-time augmentation (photo and mirror image)")
    p.add_argument("--batch-size", type=int, default=INFERENCE_BATCH_SIZE, help="images per forward pass")
    p.add_argument("--unknown-data", metavar="DIR",
                   help="a folder of photos of no trained class: AUROC and false accepts of the open-set score")
    add_settings(p, TrainConfig, names=("labels", "path_column", "label_column", "split_column"))
    p.set_defaults(func=_evaluate)

    p = commands.add_parser("predict", help="predict the class of photos")
    p.add_argument("model", help="run directory, .keras model file, or export folder (from catsdogs export)")
    p.add_argument("inputs", nargs="+", help="image files and folders")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--csv", metavar="FILE", help="write the predictions to a CSV file")
    output.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.add_argument("--tta", action="store_true", help="average the photo's and its mirror image's probabilities")
    p.add_argument("--batch-size", type=int, default=INFERENCE_BATCH_SIZE, help="images per forward pass")
    p.add_argument("--no-reject", dest="reject", action="store_false",
                   help="always answer one of the trained classes, never 'unknown'")
    p.add_argument("--reject-threshold", type=float, metavar="SCORE",
                   help="in-distribution score under which a photo is 'unknown', instead of the model's own "
                        "(from 0 to 1; higher rejects more)")
    p.add_argument("--unknown-label", default=UNKNOWN_LABEL, help="the label of rejected photos (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=1, metavar="N",
                   help="also show the N most probable classes of each photo, with their probabilities")
    p.add_argument("--similar", type=int, default=0, metavar="K",
                   help=f"also name the K training photos most similar to each photo (path, label, cosine "
                        f"similarity of their features; at most {MAX_SIMILAR}): a run directory whose model has a "
                        f"kNN open-set score (the default)")
    _add_format(p)
    _add_engine(p, "scores the photos on a Ray cluster (INPUTS may also be URIs such as s3://bucket/photos) "
                "into Parquet files in --output")
    p.add_argument("--output", metavar="DIR", help="with --engine ray: the Parquet folder to create")
    p.set_defaults(func=_predict)

    p = commands.add_parser("explain", help="show where in a photo the model saw its class (Grad-CAM)",
                            description="Writes the photo with the Grad-CAM heatmap of the predicted class (or "
                                        "--class) over it, from the backbone's last convolutional block.")
    p.add_argument("model", help="run directory or .keras model file")
    p.add_argument("photo", help="an image file")
    p.add_argument("-o", "--output", help="image file to write (default: PHOTO-gradcam.png in this folder)")
    p.add_argument("--class", dest="class_name", help="explain this class instead of the predicted one")
    p.set_defaults(func=_explain)

    _add_serve(commands)
    _add_review(commands)
    _add_export(commands)
    _add_bench(commands)
    _add_runs(commands)

    p = commands.add_parser("backbones", help="list the available backbones")
    p.set_defaults(func=_backbones)
    return parser


class _NoRetracingWarnings(logging.Filter):
    """Drops TensorFlow's warning that a graph was traced again: catsdogs does so on purpose, once
    per model and batch shape (the last batch is smaller)."""

    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    for noisy in ("absl", "tensorflow", "h5py", "matplotlib", "PIL", "tf2onnx", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("tensorflow").addFilter(_NoRetracingWarnings())
    from catsdogs.errors import CatsdogsError

    try:
        return args.func(args) or 0
    except CatsdogsError as error:  # anything else is a bug in catsdogs: its traceback shows
        print(f"catsdogs {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"catsdogs {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
