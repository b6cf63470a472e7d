"""Every way to run a catsdogs model, behind one interface: Keras, ONNX Runtime, LiteRT/TFLite, SavedModel.

A runtime is a callable: (batch, size, size, 3) float32 RGB pixels in [0, 255], already resized
(`models.layers.resize_layer`), in; a dict out: "probabilities" (batch, classes) and, where the model
has an open-set score, "in_distribution_score" (batch,). Its `info` is the `model.ModelInfo`
(class names, input size, thresholds). `inference.pipeline.run_on_files` runs any of them over files.

An export folder written by `catsdogs export` holds the exported file and `export.json`: the
class names, threshold and input size of the model it came from. Every exported model takes
(batch, size, size, 3) float32 RGB pixels in [0, 255], already resized to size x size by
`models.layers.resize_layer` (bilinear with antialiasing, no crop), and returns one probability per
class, then the in-distribution score where the model has one (`model.fixed_size_model`): the Keras
model after its own resize layer.

An export folder from elsewhere may be hostile, and its export.json names files: it is read by
`store.export_dir`, which confines them.
"""

import os

import numpy as np

from catsdogs.inference.backbone_runtime import onnx_session
from catsdogs.models import model as model_lib
from catsdogs.store import export_dir, run_dir
from catsdogs.store.model_file import check_format
from catsdogs.utils.extras import require
from catsdogs.utils.host import usable_cpus


def compiled_forward(model):
    """The inference pass of a Keras model as one compiled TensorFlow graph, retraced only for new shapes."""
    import tensorflow as tf

    return tf.function(lambda images: model(images, training=False), reduce_retracing=True)


class KerasModel:
    """A catsdogs Keras model (`model.load`), run as one compiled graph, or with its backbone in ONNX Runtime.

    With `backbone`, the frozen backbone (nearly all of the work) runs in ONNX Runtime, as the run
    that trained the model computed its features (`backbone_runtimes`), and the rest of the model
    (head, calibration, open-set score) in Keras on the features.

    Attributes:
        model: the `keras.Model`.
        info: its `model.ModelInfo`.
        backbone: the `inference.backbone_runtime.OnnxBackbone`, or None.
    """

    format = "keras"

    def __init__(self, model, backbone=None):
        self.model = model
        self.info = model_lib.describe(model)
        self.backbone = backbone
        self.bank_size = model_lib.parts(model).bank_size  # training photos that `with_similar` can name
        self._with_similar = {}  # k -> its forward
        if backbone is None:
            self._forward = compiled_forward(model)
        else:
            self._forward = self._features_then(model_lib.parts(model).outputs_from_features)

    def _features_then(self, tail):
        """A forward that computes the features (in the ONNX backbone where there is one) and then `tail` on them."""
        import tensorflow as tf

        tail = tf.function(tail, reduce_retracing=True)
        if self.backbone is not None:
            return lambda images: tail(self.backbone(images))
        parts = model_lib.parts(self.model)
        features = tf.function(lambda images: parts.extractor(parts.resize(images), training=False),
                               reduce_retracing=True)
        return lambda images: tail(features(images))

    def __call__(self, images):
        """The model's outputs (see the module) for (batch, size, size, 3) float32 pixels in [0, 255]."""
        return {name: np.asarray(value) for name, value in model_lib.outputs_as_dict(self._forward(images)).items()}

    def with_similar(self, k):
        """A runtime like this one whose outputs also hold each photo's `k` most similar training photos of
        the kNN bank (`model.SIMILARITIES`, `model.SIMILAR_ROWS`); k at most `bank_size`."""
        if k not in self._with_similar:
            parts = model_lib.parts(self.model)
            tail = self._features_then(lambda features: parts.outputs_from_features(features, k))
            self._with_similar[k] = lambda images: {name: np.asarray(value) for name, value in tail(images).items()}
        return self._with_similar[k]


def split_outputs(array, info):
    """An exported model's one output, (batch, classes [+ 1]), as the dict every runtime returns."""
    array = np.asarray(array)
    classes = len(info.class_names)
    outputs = {"probabilities": array[:, :classes]}
    if info.reject_threshold is not None:
        outputs[model_lib.SCORE] = array[:, classes]
    return outputs


class ExportedModel:
    """An exported model loaded in its runtime: resized pixels in, class probabilities out.

    Attributes:
        folder: the export folder.
        metadata: the contents of its export.json.
        info: the `model.ModelInfo` of the model it was exported from.
        path: the exported file (or SavedModel folder).
        source: the model file it was exported from, where that is still there and the export lies
            inside its folder (see the module); else None.
    """

    format = None

    def __init__(self, export_info):
        """Args:
            export_info: the folder's `export_dir.ExportInfo`.
        """
        self.folder = export_info.folder
        self.metadata = export_info.metadata
        self.path = export_info.path
        self.source = export_info.source
        self.info = model_lib.ModelInfo(**self.metadata["model"])

    def __call__(self, images):
        """The model's outputs (see the module) for (batch, size, size, 3) float32 pixels in [0, 255]."""
        return split_outputs(self.run(np.asarray(images, np.float32)), self.info)

    def run(self, images):
        """The exported model's output array for a batch."""
        raise NotImplementedError


class OnnxExport(ExportedModel):
    """An ONNX model in ONNX Runtime (CPU)."""

    format = "onnx"

    def __init__(self, export_info):
        super().__init__(export_info)
        require("onnx", "the onnx format")
        self.session = onnx_session(self.path)
        self.input_name = self.session.get_inputs()[0].name

    def run(self, images):
        return self.session.run(None, {self.input_name: images})[0]


class TFLiteExport(ExportedModel):
    """A TFLite model in the LiteRT interpreter (XNNPACK on CPU)."""

    format = "tflite"

    def __init__(self, export_info):
        super().__init__(export_info)
        require("tflite", "the tflite format")
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=self.path, num_threads=usable_cpus())
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        self.output_index = self.interpreter.get_output_details()[0]["index"]
        self.batch_shape = None

    def run(self, images):
        if images.shape != self.batch_shape:  # TFLite tensors have one shape at a time
            self.interpreter.resize_tensor_input(self.input_index, images.shape)
            self.interpreter.allocate_tensors()
            self.batch_shape = images.shape
        self.interpreter.set_tensor(self.input_index, images)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index).copy()


class SavedModelExport(ExportedModel):
    """A TensorFlow SavedModel, through its "serve" endpoint."""

    format = "savedmodel"

    def __init__(self, export_info):
        super().__init__(export_info)
        import tensorflow as tf

        self.saved_model = tf.saved_model.load(self.path)  # holds the variables that "serve" uses

    def run(self, images):
        return self.saved_model.serve(images).numpy()


EXPORTED_MODELS = {cls.format: cls for cls in (OnnxExport, TFLiteExport, SavedModelExport)}


def stored_backbone(path):
    """The ONNX backbone a run directory keeps (`run_dir.BACKBONE`), or None."""
    from catsdogs.inference.backbone_runtime import OnnxBackbone

    run = run_dir.RunDirectory(path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path)))
    if not (run.has(run_dir.BACKBONE) and run.has(run_dir.CONFIG)):
        return None
    return OnnxBackbone(run.file(run_dir.BACKBONE), run.config()["precision"])


def load(path, format=None):
    """Loads a model in the runtime that its format needs.

    Args:
        path: a run directory or .keras file, or an export folder (or the exported file in it).
        format: one of `config.choices.FORMATS`, checked against what `path` holds; None: whatever it holds
            (a run directory whose backbone ran in ONNX Runtime runs it there again; "keras" runs
            the whole Keras model instead).

    Returns:
        a `KerasModel`, or an `ExportedModel` of the export's format.
    """
    path = os.fspath(path)
    held = check_format(path, format)
    if held == "keras":
        return KerasModel(model_lib.load(path), None if format == "keras" else stored_backbone(path))
    return EXPORTED_MODELS[held](export_dir.read_info(export_dir.export_folder_of(path)))
