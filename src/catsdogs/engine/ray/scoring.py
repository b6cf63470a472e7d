"""Past one machine: batch scoring into Parquet and feature extraction into the cache, on Ray.

Optional (`pip install "catsdogs[ray]"`); nothing else in catsdogs imports Ray. Both jobs are
Ray Data pipelines of the same shape:

    list the files -> decode them (CPU tasks) -> resize them and run the model (a pool of
    actors, the model loaded once per actor) -> Parquet rows (scoring) or feature cache chunks

Photos are prepared as everywhere else (`inference.preprocess`: decoded near the model's input
size by `load_photo` or `decode_photo`, then resized by `resizer`, as `ImagePipeline` does), the
model runs through `pipeline.forward_batch` as in `pipeline.iter_batches`, and predictions are
made by `Classifier.predictions`: a photo gets the same prediction (or features) here as on one
machine. A file that fails to decode becomes a row
with its error, never a failed job.

Every node reads the files, the model and the feature cache by the paths given here: on a real
cluster they live on a shared file system (or, for the photos to score, any file system pyarrow
knows, such as s3://). catsdogs itself travels with the job (Ray's `py_modules`); its
dependencies (TensorFlow, Keras, ...) must be installed on every node.
"""

import dataclasses
import logging
import math
import os
import time

import numpy as np

from catsdogs.config.choices import INFERENCE_BATCH_SIZE
from catsdogs.engine.ray.cluster import alive_nodes, connect, node_id, use_every_core
from catsdogs.errors import ConfigError, ModelNotFoundError
from catsdogs.store.model_file import check_format, input_size

log = logging.getLogger(__name__)


# Logical CPUs that Ray reserves for each decoding task and each model actor. Fractions, so that a
# node with a single CPU still runs both (a whole CPU per actor would leave none for decoding on
# it and stall the job); TensorFlow in an actor uses every core of its machine either way. They
# differ so that Ray Data does not fuse decoding into the model actors (it fuses stages that ask
# for the same resources): decoding then overlaps the model, in other processes.
DECODE_CPUS = 0.25
MODEL_CPUS = 0.5
# Most blocks a list of local files is cut into: one decoding task each.
MAX_BLOCKS = 10_000


def is_uri(path) -> bool:
    """Whether an input names a file system by scheme (s3://, gs://, file://) rather than a local path."""
    return "://" in os.fspath(path)


def _blocks(files, batch_size, workers):
    """How many blocks (one decoding task each) to cut a list of files into: a batch each, but at
    least one per worker, so that every worker gets some on a small job."""
    return max(1, min(max(math.ceil(files / batch_size), workers), files, MAX_BLOCKS))


def files_dataset(ray, inputs, batch_size, workers):
    """A Ray dataset of the files to decode: rows {path} of local files, {path, bytes} of URIs.

    Local files and folders are listed here as `catsdogs predict` lists them
    (`data.dataset.expand_inputs`) and read by the decoding tasks; URIs are listed and read by Ray
    Data (`read_binary_files`), for any file system pyarrow knows.

    Returns:
        a list of datasets (one per kind of input present).
    """
    from catsdogs.data.dataset import expand_inputs

    local = expand_inputs([item for item in inputs if not is_uri(item)])
    uris = [os.fspath(item) for item in inputs if is_uri(item)]
    datasets = []
    if local:
        blocks = _blocks(len(local), batch_size, workers)
        datasets.append(ray.data.from_items([{"path": path} for path in local], override_num_blocks=blocks))
    if uris:
        datasets.append(ray.data.read_binary_files(uris, include_paths=True))
    return datasets


def decode_batch(batch, image_size):
    """Decodes a batch of files as `ImagePipeline` does (`preprocess.load_photo`); a Ray Data batch function.

    Args:
        batch: columns "path", optionally "bytes" (the file's contents, else it is read from
            "path"), and any others, which are passed through.
        image_size: the model's input side: large photos are decoded near it.

    Returns:
        the batch with "image" (upright RGB uint8 pixels; one blank pixel where it did not decode)
        and "error" (the reason, "" where it decoded) instead of "bytes".
    """
    from catsdogs.errors import ImageError
    from catsdogs.inference.preprocess import decode_photo, load_photo

    paths = [str(path) for path in batch["path"]]
    contents = batch.get("bytes")
    images = np.empty(len(paths), object)
    errors = np.full(len(paths), "", object)
    for i, path in enumerate(paths):
        try:
            images[i] = (load_photo(path, image_size) if contents is None
                         else decode_photo(contents[i], path, image_size))
        except ImageError as error:
            images[i], errors[i] = np.zeros((1, 1, 3), np.uint8), error.reason
    rest = {name: column for name, column in batch.items() if name != "bytes"}
    return {**rest, "path": np.array(paths, object), "image": images, "error": errors}


def decoded(ray, dataset, batch_size, image_size):
    """A dataset of files (`files_dataset`) decoded for a model of `image_size` by CPU tasks
    (`decode_batch`), one per cluster CPU at most."""
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return dataset.map_batches(decode_batch, fn_kwargs={"image_size": image_size}, batch_size=batch_size,
                               batch_format="numpy", num_cpus=DECODE_CPUS, compute=ray.data.TaskPoolStrategy(size=cpus))


def resized(batch, image_size):
    """The images of a batch from `decode_batch`, resized as `ImagePipeline` resizes them.

    Resizing is done here, in the model's process, rather than in the decoding tasks: those
    then need no TensorFlow (seconds of start-up per process) and ship the decoded uint8 pixels
    rather than float32 ones at the model's size (3x fewer bytes for a 500x375 photo at 380 px);
    measured faster (docs/BENCHMARKS.md).

    Returns:
        (paths, pixels (n, size, size, 3) float32 in [0, 255], ok (n,), errors: path -> reason).
    """
    from catsdogs.inference.preprocess import resizer

    resize = resizer(image_size)
    paths = [str(path) for path in batch["path"]]
    errors = {path: str(reason) for path, reason in zip(paths, batch["error"]) if reason}
    ok = np.array([path not in errors for path in paths], bool)
    pixels = np.zeros((len(paths), image_size, image_size, 3), np.float32)
    for i, image in enumerate(batch["image"]):
        if ok[i]:
            pixels[i] = resize(np.asarray(image, np.float32)).numpy()
    return paths, pixels, ok, errors


# Arrow types of the Prediction fields by their annotation; the probabilities are one column per class, a
# multi-label model's labels one column of text (`Prediction.to_row`).
def _arrow_schema(classes, multi_label=False):
    import pyarrow as pa

    from catsdogs.inference.classifier import Prediction

    types = {str: pa.string(), float: pa.float64(), int: pa.int64(), bool: pa.bool_()}
    fields = []
    for field in dataclasses.fields(Prediction):
        if field.name == "probabilities":
            fields += [pa.field(f"p_{name}", pa.float64()) for name in classes]
        elif field.name == "labels":
            fields += [pa.field("labels", pa.string())] if multi_label else []
        elif field.name == "similar":
            continue  # columns of their own only where asked for (`Prediction.to_row`), which Ray scoring is not
        elif field.type in types:
            fields.append(pa.field(field.name, types[field.type]))
        else:
            raise TypeError(f"Prediction.{field.name}: no Parquet type for {field.type}; add one in {__name__}")
    return pa.schema(fields + [pa.field("node_id", pa.string()), pa.field("pid", pa.int64())])


class Scorer:
    """A classifier in a Ray actor: loaded once, then batches of decoded images in, Parquet rows out."""

    def __init__(self, model, format=None, tta=False):
        """Args:
            model: run directory, .keras file or export folder (see `classifier.load`).
            format: as for `classifier.load`.
            tta: average the photo's and its mirror image's probabilities.
        """
        use_every_core()
        from catsdogs.inference.classifier import load
        from catsdogs.inference.preprocess import views_for

        self.classifier = load(model, format)
        self.views = views_for(tta)
        self.schema = _arrow_schema(self.classifier.classes, self.classifier.info.multi_label)
        self.node_id = node_id()

    def __call__(self, batch):
        import pyarrow as pa

        from catsdogs.inference.pipeline import Outputs, forward_batch

        paths, pixels, ok, errors = resized(batch, self.classifier.info.image_size)
        keep, values = forward_batch(self.classifier.runtime, pixels, ok, paths, self.views, errors)
        for array in (values.values() if isinstance(values, dict) else [values]):
            array[:, ~keep] = 0  # as `inference.pipeline.Outputs` holds failed files
        predictions = self.classifier.predictions(paths, Outputs(values, keep, errors))
        rows = [{**p.to_row(self.classifier.classes, label_separator=self.classifier.info.label_separator),
                 "node_id": self.node_id, "pid": os.getpid()}
                for p in predictions]
        return pa.Table.from_pylist(rows, schema=self.schema)


@dataclasses.dataclass
class ScoringResult:
    """What `predict_to_parquet` wrote.

    Attributes:
        output: the Parquet folder.
        rows: files scored (one row each).
        errors: rows with an error (files that did not decode).
        nodes: distinct cluster nodes whose actors scored files.
        workers: model actors used.
        seconds: wall time, connecting to the cluster included.
    """

    output: str
    rows: int
    errors: int
    nodes: int
    workers: int
    seconds: float


def predict_to_parquet(model, inputs, output, address=None, workers=0, format=None, tta=False,
                       batch_size=INFERENCE_BATCH_SIZE) -> ScoringResult:
    """Scores image files on a Ray cluster and writes one Parquet row per file.

    Columns: every field of `classifier.Prediction` (path, label, probability, error, ...) with
    the probabilities as p_<class>, then node_id and pid (the Ray node and process that ran the
    model). Rows come in no particular order. A file that does not decode has its error and no
    label.

    Args:
        model: run directory, .keras file or export folder, readable at this path on every node.
        inputs: image files and folders (as `catsdogs predict`, on a file system every node
            sees), and URIs of files or folders on any file system pyarrow knows (s3://bucket/photos).
        output: the Parquet folder to create (a path or URI); it must not hold files yet.
        address: the cluster (see `connect`).
        workers: model actors (0: one per live node).
        format: as for `classifier.load`.
        tta: average the photo's and its mirror image's probabilities.
        batch_size: images per forward pass.

    Returns:
        a `ScoringResult`.
    """
    start = time.perf_counter()
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    output, model = os.fspath(output), os.path.abspath(model)
    if not is_uri(output) and os.path.isdir(output) and os.listdir(output):
        raise ConfigError(f"{output} already holds files; give a new folder for the Parquet output")
    if not os.path.exists(model):  # checked before the cluster starts; the workers load it
        raise ModelNotFoundError(f"{model}: no such run directory, model file or export folder")
    ray = connect(address)
    workers = workers or len(alive_nodes(ray))
    check_format(model, format)  # what the model's files say: this process loads no TensorFlow
    image_size = input_size(model)
    datasets = [decoded(ray, ds, batch_size, image_size) for ds in files_dataset(ray, inputs, batch_size, workers)]
    if not datasets:
        raise ConfigError(f"no files to score in {inputs}")
    images = datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]
    scored = images.map_batches(
        Scorer, fn_constructor_kwargs={"model": model, "format": format, "tta": tta},
        batch_size=batch_size, batch_format="numpy", num_cpus=MODEL_CPUS,
        compute=ray.data.ActorPoolStrategy(size=workers))
    scored.write_parquet(output)

    import pyarrow.dataset

    table = pyarrow.dataset.dataset(output, format="parquet").to_table(columns=["error", "node_id"])
    result = ScoringResult(output, table.num_rows, table.num_rows - table["error"].null_count,
                           len(set(table["node_id"].to_pylist())), workers, time.perf_counter() - start)
    log.info("%d files scored (%d errors) by %d workers on %d nodes in %.1f s: %s", result.rows, result.errors,
             workers, result.nodes, result.seconds, output)
    return result
