"""Keras layers saved inside catsdogs models, so a model carries its preprocessing and labels."""

import keras
from keras import layers, ops

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
