"""The `catsdogs` command: parses arguments and calls the library."""

import argparse
import json
import logging
import sys

from catsdogs.config import TrainConfig, default_cache_dir
from catsdogs.serve import MissingDependencyError, ServeSettings

EPILOG = "Run `catsdogs COMMAND -h` for the options of a command."


def _int_list(text):
    return tuple(int(part) for part in text.split(",") if part.strip())


def _add_train(commands):
    defaults = TrainConfig(data_dir="")
    p = commands.add_parser(
        "train", help="train and evaluate a classifier on a folder of labelled photos",
        description="Trains a classifier by transfer learning: features of every image are computed once "
                    "by a frozen ImageNet backbone and cached, then a small head is trained on them. Writes a "
                    "run directory with the model, metrics, figures and report.html.")
    p.add_argument("data_dir", help="dataset folder: Kaggle cat-and-dog layout, train/[val/]test/ folders of "
                                    "classes, or one folder of class folders")
    p.add_argument("--backbone", default=defaults.backbone, help="resnet50 (the study's) or efficientnet_lite0 "
                   "(ImageNet weights from pip, works offline); see `catsdogs backbones`")
    p.add_argument("--weights", default=defaults.weights,
                   help="imagenet (default), random (no pretraining, for trying the pipeline), or a weights file")
    p.add_argument("--image-size", type=int, default=defaults.image_size, help="input side in pixels (default: the backbone's)")
    p.add_argument("--precision", choices=("float32", "bfloat16"), default=defaults.precision,
                   help="compute precision of the backbone")
    p.add_argument("--head", choices=("linear", "dense"), default=defaults.head,
                   help="linear (default, best on validation): logistic regression on standardised features, "
                        "L2 strength chosen by cross-validation; dense: the study's fully connected layers with dropout")
    p.add_argument("--hidden-units", type=_int_list, default=defaults.hidden_units,
                   help="hidden layer sizes of a dense head, comma separated (default: 256)")
    p.add_argument("--dropout", type=float, default=defaults.dropout)
    p.add_argument("--l2", type=float, default=defaults.l2, help="L2 penalty on a dense head's weights")
    p.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="head training batch size")
    p.add_argument("--max-epochs", type=int, default=defaults.max_epochs)
    p.add_argument("--patience", type=int, default=defaults.patience, help="early stopping patience in epochs")
    p.add_argument("--fine-tune", action="store_true",
                   help="stage 2: after the head, train the top blocks of the backbone end to end with augmentation "
                        "(off by default: on a CPU each epoch takes minutes; the better model on validation is kept)")
    p.add_argument("--fine-tune-blocks", type=int, default=defaults.fine_tune_blocks,
                   help="how many of the backbone's last blocks to unfreeze (default: the backbone's own; "
                        "ResNet-50: 3, its stage conv5)")
    p.add_argument("--fine-tune-learning-rate", type=float, default=defaults.fine_tune_learning_rate)
    p.add_argument("--fine-tune-epochs", type=int, default=defaults.fine_tune_epochs)
    p.add_argument("--fine-tune-patience", type=int, default=defaults.fine_tune_patience)
    p.add_argument("--fine-tune-batch-size", type=int, default=defaults.fine_tune_batch_size)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=defaults.augment,
                   help="random flips, small rotations, zooms, shifts and contrast while fine-tuning")
    p.add_argument("--tta", action="store_true",
                   help="also report validation and test with test-time augmentation (photo and mirror image averaged)")
    p.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=defaults.calibrate,
                   help="temperature scaling on the validation split, so probabilities mean what they say")
    p.add_argument("--target", default=defaults.target, metavar="METRIC:CLASS=VALUE",
                   help="choose the decision threshold on validation for a target, e.g. precision:dogs=0.99 "
                        "or recall:cats=0.995 (two classes only; default: threshold 0.5)")
    p.add_argument("--exclude", default=defaults.exclude, metavar="FILE",
                   help="file listing training images to leave out (confirmed label errors); never test images")
    p.add_argument("--val-fraction", type=float, default=defaults.val_fraction,
                   help="fraction of the training images held out for validation (stratified)")
    p.add_argument("--test-fraction", type=float, default=defaults.test_fraction,
                   help="fraction held out for testing when the dataset has no test folder")
    p.add_argument("--seed", type=int, default=defaults.seed, help="makes splits and training repeatable")
    p.add_argument("--extract-batch-size", type=int, default=defaults.extract_batch_size)
    p.add_argument("--cache-dir", default=default_cache_dir(), help="feature and weights cache (default: %(default)s)")
    p.add_argument("--runs-dir", default=defaults.runs_dir, help="where run directories are created")
    p.add_argument("--name", default="", help="run directory name (default: backbone and time)")


def _train(args):
    from catsdogs.evaluate import format_metrics
    from catsdogs.train import train

    config = TrainConfig(**{k: v for k, v in vars(args).items() if k not in ("command", "func", "verbose")})
    run_dir, metrics = train(config)
    print(format_metrics(metrics))
    print(f"\nrun directory: {run_dir}  (open {run_dir}/report.html)")


def _evaluate(args):
    from catsdogs.evaluate import evaluate_model, format_metrics

    output_dir, metrics = evaluate_model(args.model, args.data, args.output, args.batch_size, args.tta)
    print(format_metrics(metrics))
    print(f"\nevaluation written to {output_dir}")


def _predict(args):
    from catsdogs import model as model_lib
    from catsdogs import predict, report

    rows = predict.predict_files(model_lib.load(args.model), args.inputs, args.batch_size, args.tta)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.csv:
        flat = [{"path": r["path"], "label": r.get("label", ""), "probability": r.get("probability", ""),
                 **{f"p_{k}": v for k, v in r.get("probabilities", {}).items()}, "error": r.get("error", "")}
                for r in rows]
        report.write_csv(flat, args.csv)
        print(f"{len(rows)} predictions written to {args.csv}")
    else:
        print(predict.format_table(rows))
    failed = sum("error" in r for r in rows)
    if failed:
        logging.getLogger("catsdogs").warning("%d of %d files could not be read", failed, len(rows))


def _explain(args):
    from catsdogs import explain
    from catsdogs import model as model_lib

    explanation, output = explain.explain_photo(model_lib.load(args.model), args.photo, args.output, args.class_name)
    print(f"{args.photo}: {explanation.label} {explanation.probabilities[explanation.label]:.4f}; "
          f"Grad-CAM of {explanation.explained!r} written to {output}")


def _serve(args):
    from catsdogs.serve import check_dependencies

    check_dependencies()
    from catsdogs.serve.app import serve

    settings = ServeSettings(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                             max_upload_bytes=args.max_upload_bytes, max_pixels=args.max_pixels,
                             max_images=args.max_images)
    serve(args.model, args.host, args.port, settings, args.name)


def _add_serve(commands):
    defaults = ServeSettings()
    p = commands.add_parser(
        "serve", help="serve a model over HTTP: an API and a web page",
        description="Serves a trained model: TensorFlow Serving's REST API (POST /v1/models/NAME:predict), "
                    "multipart uploads (POST /predict), GET /healthz, GET /v1/models/NAME, a web page at / "
                    "and API documentation at /docs. Requests that arrive together share one forward pass.")
    p.add_argument("model", help="run directory or .keras model file")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 for every network)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0 picks a free one)")
    p.add_argument("--name", help="the model's name in /v1/models/NAME (default: the run directory's name)")
    p.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size,
                   help="most images in one forward pass; 1 turns batching off (default: %(default)s)")
    p.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms,
                   help="how long a request waits for others to share its forward pass (default: %(default)s)")
    p.add_argument("--max-upload-bytes", type=int, default=defaults.max_upload_bytes,
                   help="largest request body, refused before decoding (default: %(default)s)")
    p.add_argument("--max-pixels", type=int, default=defaults.max_pixels,
                   help="largest image in pixels, read from its header before decoding (default: %(default)s)")
    p.add_argument("--max-images", type=int, default=defaults.max_images,
                   help="most images in one request (default: %(default)s)")
    p.set_defaults(func=_serve)


def _backbones(args):
    from catsdogs.backbones import BACKBONES

    for backbone in BACKBONES.values():
        print(f"{backbone.name:<20} {backbone.default_image_size}px  {backbone.feature_dim}-d  {backbone.description}")


def build_parser():
    parser = argparse.ArgumentParser(prog="catsdogs", description="Image classifiers from folders of photos, "
                                     "by transfer learning from ImageNet backbones.", epilog=EPILOG)
    parser.add_argument("-v", "--verbose", action="store_true", help="show debugging messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(commands)
    commands.choices["train"].set_defaults(func=_train)

    p = commands.add_parser("evaluate", help="evaluate a trained model on labelled photos")
    p.add_argument("model", help="run directory or .keras model file")
    p.add_argument("--data", required=True, help="dataset with a test folder, or a folder of class folders")
    p.add_argument("--output", help="folder for metrics, predictions, figures and report.html")
    p.add_argument("--tta", action="store_true", help="also report test-time augmentation (photo and mirror image)")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=_evaluate)

    p = commands.add_parser("predict", help="predict the class of photos")
    p.add_argument("model", help="run directory or .keras model file")
    p.add_argument("inputs", nargs="+", help="image files and folders")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--csv", metavar="FILE", help="write the predictions to a CSV file")
    output.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.add_argument("--tta", action="store_true", help="average the photo's and its mirror image's probabilities")
    p.add_argument("--batch-size", type=int, default=32)
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

    p = commands.add_parser("backbones", help="list the available backbones")
    p.set_defaults(func=_backbones)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    for noisy in ("absl", "tensorflow", "h5py", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from catsdogs.backbones import WeightsError
    from catsdogs.data import DataError
    from catsdogs.images import ImageError

    try:
        args.func(args)
    except (DataError, WeightsError, ImageError, MissingDependencyError, FileNotFoundError, ValueError) as error:
        print(f"catsdogs {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"catsdogs {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
