"""Keras layers saved inside catsdogs models, so a model carries its preprocessing and labels."""

import keras
from keras import layers, ops

from catsdogs.config.choices import LABEL_SEPARATOR, OPEN_SET_METHODS
from catsdogs.errors import ConfigError

# keras.applications.resnet50.preprocess_input ("caffe" mode) subtracts these from BGR pixels.
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="catsdogs")
class CaffePreprocessing(layers.Layer):
    """ResNet-50's ImageNet preprocessing: RGB pixels in [0, 255] to mean-centred BGR."""

    def call(self, inputs):
        return ops.flip(inputs, axis=-1) - ops.cast(IMAGENET_BGR_MEAN, inputs.dtype)


def logit_units(num_classes):
    """How many logits a head has: two classes share one, z, the log-odds of the second; more have one each."""
    return 1 if num_classes == 2 else num_classes


def class_logits(logits):
    """One logit per class from a head's logits.

    A shared logit z becomes [-z/2, z/2], whose softmax is [sigmoid(-z), sigmoid(z)]: from here on
    two classes are computed like many (probabilities, losses, Grad-CAM scores).
    """
    if logits.shape[-1] == 1:
        return ops.concatenate([-logits / 2, logits / 2], axis=-1)
    return logits


@keras.saving.register_keras_serializable(package="catsdogs")
class ClassProbabilities(layers.Layer):
    """Turns logits into one probability per class and carries the class names and threshold.

    Logits are made one per class (`class_logits`), divided by `temperature` (calibration) and
    turned into probabilities by a softmax. `threshold` is the probability of the second class at
    which a binary model predicts it; it is stored here so that it travels with the model.
    """

    def __init__(self, class_names, temperature=1.0, threshold=0.5, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.class_names = list(class_names)
        self.temperature = float(temperature)
        self.threshold = float(threshold)

    def call(self, logits):
        return ops.softmax(class_logits(ops.cast(logits, "float32")) / self.temperature, axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], len(self.class_names))

    def get_config(self):
        return {**super().get_config(), "class_names": self.class_names,
                "temperature": self.temperature, "threshold": self.threshold}


@keras.saving.register_keras_serializable(package="catsdogs")
class LabelProbabilities(layers.Layer):
    """Multi-label: one independent probability per label, and the labels' names, thresholds and separator.

    Each logit is divided by its label's temperature (calibration) and turned into a probability by a
    sigmoid, so that a photo may have any number of the labels. A label is predicted where its
    probability reaches its threshold; the thresholds, and the separator that joins a photo's labels
    in tables, are stored here so that they travel with the model.
    """

    def __init__(self, class_names, temperatures=None, thresholds=None, separator=LABEL_SEPARATOR, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.class_names = list(class_names)
        self.temperatures = [float(t) for t in (temperatures if temperatures is not None else [1.0] * len(class_names))]
        self.thresholds = [float(t) for t in (thresholds if thresholds is not None else [0.5] * len(class_names))]
        self.separator = str(separator)

    def call(self, logits):
        return ops.sigmoid(ops.cast(logits, "float32") / ops.convert_to_tensor(self.temperatures, "float32"))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], len(self.class_names))

    def get_config(self):
        return {**super().get_config(), "class_names": self.class_names, "temperatures": self.temperatures,
                "thresholds": self.thresholds, "separator": self.separator}


@keras.saving.register_keras_serializable(package="catsdogs")
class InDistributionScore(layers.Layer):
    """In-distribution score of photos from their pooled features and head logits (see `catsdogs.models.openset`).

    Call with [features (n, d), logits (n, logit units)]; returns (n,) scores in [0, 1]. With
    `raw=True`, returns the raw score of each method, (n, methods), for fitting.

    Weights, all fixed (set by `openset.fit_open_set`): the kNN bank, the class means and precision
    matrix for Mahalanobis, the ImageNet classifier and the mask of the trained classes' ImageNet
    classes, the sorted out-of-fold raw scores of each method and the sorted combined percentiles.
    """

    def __init__(self, methods, feature_dim, num_classes, bank_size=1, reference_size=1, temperature=1.0,
                 threshold=0.0, neighbours=5, **kwargs):
        kwargs.setdefault("dtype", "float32")
        kwargs["trainable"] = False  # fixed weights, whatever a saved config says
        super().__init__(**kwargs)
        unknown = sorted(set(methods) - set(OPEN_SET_METHODS))
        if unknown or not methods:
            raise ConfigError(f"open-set methods {list(methods)}: choose from {OPEN_SET_METHODS}")
        self.methods, self.feature_dim, self.num_classes = tuple(methods), int(feature_dim), int(num_classes)
        self.bank_size, self.reference_size = int(bank_size), int(reference_size)
        self.temperature, self.threshold, self.neighbours = float(temperature), float(threshold), int(neighbours)

    def build(self, input_shape):
        def weight(name, shape):
            return self.add_weight(name=name, shape=shape, initializer="zeros", trainable=False)

        d = self.feature_dim
        if "knn" in self.methods:
            self.bank = weight("bank", (self.bank_size, d))
        if "mahalanobis" in self.methods:
            self.means = weight("means", (self.num_classes, d))
            self.precision = weight("precision", (d, d))
        if "imagenet" in self.methods:
            self.imagenet_kernel = weight("imagenet_kernel", (d, 1000))
            self.imagenet_bias = weight("imagenet_bias", (1000,))
            self.imagenet_mask = weight("imagenet_mask", (1000,))
        self.references = weight("references", (len(self.methods), self.reference_size))
        self.combined_references = weight("combined_references", (self.reference_size,))

    def bank_similarities(self, features):
        """(n, bank size) cosine similarities of photos' features to the training photos of the kNN bank."""
        unit = features / ops.maximum(ops.norm(features, axis=-1, keepdims=True), 1e-12)
        return ops.matmul(unit, ops.transpose(self.bank))

    def nearest(self, features, k):
        """The `k` training photos of the kNN bank most similar to each photo, most similar first.

        Args:
            features: (n, feature_dim) pooled backbone features.
            k: how many, at most the bank's size.

        Returns:
            (cosine similarities (n, k) float32, rows of the bank (n, k) int32).
        """
        similarities, rows = ops.top_k(self.bank_similarities(ops.cast(features, "float32")), k)
        return similarities, ops.cast(rows, "int32")

    def raw_scores(self, features, logits):
        """(n, methods) raw scores, higher for more typical photos."""
        features = ops.cast(features, "float32")
        logits = class_logits(ops.cast(logits, "float32"))
        columns = []
        for method in self.methods:
            if method == "msp":
                columns.append(ops.max(ops.softmax(logits / self.temperature, axis=-1), axis=-1))
            elif method == "energy":
                columns.append(ops.logsumexp(logits, axis=-1))
            elif method == "mahalanobis":
                projected = ops.matmul(features, self.precision)
                distances = (ops.sum(projected * features, axis=-1)[:, None]
                             - 2 * ops.matmul(projected, ops.transpose(self.means))
                             + ops.sum(ops.matmul(self.means, self.precision) * self.means, axis=-1)[None, :])
                columns.append(-ops.min(distances, axis=-1))
            elif method == "knn":
                columns.append(ops.top_k(self.bank_similarities(features), self.neighbours)[0][:, -1])
            else:  # imagenet
                probabilities = ops.softmax(ops.matmul(features, self.imagenet_kernel) + self.imagenet_bias, axis=-1)
                columns.append(ops.sum(probabilities * self.imagenet_mask, axis=-1))
        return ops.stack(columns, axis=-1)

    def call(self, inputs, raw=False):
        features, logits = inputs
        scores = self.raw_scores(features, logits)
        if raw:
            return scores
        # Percentile of each method's score among the training photos' out-of-fold scores, then of
        # their mean among the training photos' own combined values.
        percentiles = ops.mean(ops.cast(self.references[None, :, :] <= scores[:, :, None], "float32"), axis=-1)
        combined = ops.mean(percentiles, axis=-1)
        return ops.mean(ops.cast(self.combined_references[None, :] <= combined[:, None], "float32"), axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0],)

    def get_config(self):
        return {**super().get_config(), "methods": list(self.methods), "feature_dim": self.feature_dim,
                "num_classes": self.num_classes, "bank_size": self.bank_size, "reference_size": self.reference_size,
                "temperature": self.temperature, "threshold": self.threshold, "neighbours": self.neighbours}


def resize_layer(image_size):
    """The one resizing used everywhere: any image to the backbone's square input (no crop)."""
    from keras import layers

    return layers.Resizing(image_size, image_size, interpolation="bilinear", antialias=True, name="resize")
