"""Grad-CAM: where in a photo the model found the evidence for a class.

Grad-CAM (Selvaraju et al., 2017) weighs each channel of the backbone's last convolutional
block by the mean gradient of the class score with respect to it; the positive part of the
weighted sum is a coarse map (7x7 for 224-pixel inputs, 12x12 for 380) of where that evidence
lies. The map belongs to the model's square input, which is the whole photo resized without
cropping, so it is stretched back over the photo and drawn in a colour map.
"""

import dataclasses
import io
import os

import keras
import matplotlib
import numpy as np
import tensorflow as tf
from PIL import Image

from catsdogs.errors import ConfigError
from catsdogs.inference import preprocess as pixels_lib
from catsdogs.models import model as model_lib
from catsdogs.models.backbones import extractor_members, get_backbone
from catsdogs.models.layers import class_logits

COLORMAP = "jet"  # the Grad-CAM paper's
# Cold regions stay visible through the overlay, hot ones are clearly coloured.
MIN_ALPHA, MAX_ALPHA = 0.25, 0.6


@dataclasses.dataclass
class Explanation:
    """A prediction for one photo and the Grad-CAM heatmap of one class."""

    probabilities: dict  # class name -> probability
    label: str  # the predicted class (a multi-label model's: its most probable label)
    explained: str  # the class whose evidence the heatmap shows
    heatmap: np.ndarray  # (rows, columns) float32 in [0, 1], the last convolutional block's grid


class Explainer:
    """A catsdogs model opened at its backbone's last convolutional block.

    It computes the model's own probabilities, and Grad-CAM heatmaps, for batches of photos
    that `prepare` has resized to the model's input. Both are compiled once (fixed input shape).
    In an ensemble each member's last block gets its Grad-CAM weights, and their weighted maps
    are summed before the positive part is taken: the evidence of the whole model.
    """

    def __init__(self, model):
        """Args:
            model: a loaded catsdogs model (`model.load`).
        """
        self.info = model_lib.describe(model)
        self._parts = model_lib.parts(model)
        self._members = [
            keras.Model(member.inputs, [member.get_layer(get_backbone(member.name).last_conv_layer).output,
                                        member.output])
            for member in extractor_members(self._parts.extractor)]
        size = self.info.image_size
        batch = tf.TensorSpec((None, size, size, 3), tf.float32)
        self._predict = tf.function(self._predict_batch, input_signature=[batch])
        self._heatmaps = tf.function(self._heatmap_batch, input_signature=[batch, tf.TensorSpec((None,), tf.int32)])

    @property
    def class_names(self):
        return self.info.class_names

    def prepare(self, pixels):
        """Resizes one photo to the model's input exactly as the model does.

        Args:
            pixels: (height, width, 3) RGB values in [0, 255], any numeric dtype.

        Returns:
            a float32 array of shape (image_size, image_size, 3).
        """
        return pixels_lib.prepare(pixels, self.info.image_size)

    def predict(self, batch):
        """The model's outputs for prepared photos, as a runtime gives them (`runtimes`):
        {"probabilities": (n, classes)[, "in_distribution_score": (n,)]}."""
        return {name: value.numpy() for name, value in self._predict(tf.convert_to_tensor(batch, tf.float32)).items()}

    def heatmaps(self, batch, class_indices):
        """Grad-CAM heatmaps of prepared photos, one class each.

        Args:
            batch: (n, image_size, image_size, 3) from `prepare`.
            class_indices: the class to explain for each photo.

        Returns:
            float32 array (n, rows, columns) in [0, 1]; each map is scaled to its own maximum
            (all zero where nothing in the photo speaks for the class).
        """
        return self._heatmaps(tf.convert_to_tensor(batch, tf.float32),
                              tf.convert_to_tensor(class_indices, tf.int32)).numpy()

    def explain(self, pixels, class_name=None):
        """Predicts one photo and explains the predicted class (a multi-label model's most probable label), or
        `class_name`.

        Returns:
            an `Explanation`.
        """
        if class_name is not None and class_name not in self.class_names:
            raise ConfigError(f"unknown class {class_name!r}; the model knows {self.class_names}")
        batch = self.prepare(pixels)[None]
        probabilities = self.predict(batch)["probabilities"]
        chosen = probabilities[0].argmax() if self.info.multi_label else \
            model_lib.predicted_classes(probabilities, self.info.threshold)[0]
        label = self.class_names[chosen]
        explained = class_name or label
        heatmap = self.heatmaps(batch, [self.class_names.index(explained)])[0]
        return Explanation(model_lib.probabilities_by_class(self.class_names, probabilities[0]), label, explained, heatmap)

    def _maps_and_features_of(self, images):
        """([each member's last block maps], the concatenated features) of a batch."""
        outputs = [member(images, training=False) for member in self._members]
        features = [features for _, features in outputs]
        return [maps for maps, _ in outputs], features[0] if len(features) == 1 else tf.concat(features, axis=-1)

    def _predict_batch(self, images):
        return self._parts.outputs_from_features(self._maps_and_features_of(images)[1])

    def _heatmap_batch(self, images, class_indices):
        # The backbone is frozen, so nothing is watched by default: watching the input records
        # the forward pass, and the gradient is then taken at the last convolutional block.
        with tf.GradientTape() as tape:
            tape.watch(images)
            maps, features = self._maps_and_features_of(images)
            logits = tf.cast(self._parts.head(features, training=False), tf.float32)
            scores = class_logits(logits)
            score = tf.reduce_sum(tf.gather(scores, class_indices, axis=1, batch_dims=1))
        # The gradient is taken at the maps the tape recorded (bfloat16 in a bfloat16 backbone), then cast.
        weighted = []
        for member_maps, gradients in zip(maps, tape.gradient(score, maps)):
            weights = tf.reduce_mean(tf.cast(gradients, tf.float32), axis=(1, 2), keepdims=True)
            weighted.append(tf.reduce_sum(weights * tf.cast(member_maps, tf.float32), axis=-1))
        grid = tf.shape(weighted[0])[1:3]  # members at one input size share it; resized where they do not
        cams = tf.nn.relu(tf.add_n([w if i == 0 else tf.image.resize(w[..., None], grid)[..., 0]
                                    for i, w in enumerate(weighted)]))
        return tf.math.divide_no_nan(cams, tf.reduce_max(cams, axis=(1, 2), keepdims=True))


def colorize(heatmap, width, height):
    """Paints a heatmap over a width x height area: colour map, more opaque where it is hot.

    Returns:
        RGBA uint8 array (height, width, 4).
    """
    values = np.asarray(Image.fromarray(np.asarray(heatmap, np.float32)).resize((width, height), Image.BICUBIC))
    values = np.clip(values, 0.0, 1.0)
    rgba = matplotlib.colormaps[COLORMAP](values)
    rgba[..., 3] = MIN_ALPHA + (MAX_ALPHA - MIN_ALPHA) * values
    return (rgba * 255).round().astype(np.uint8)


def overlay(pixels, heatmap):
    """The photo with its heatmap drawn over it: RGB uint8, the photo's size."""
    height, width = pixels.shape[:2]
    photo = Image.fromarray(np.asarray(pixels, np.uint8)).convert("RGBA")
    return np.asarray(Image.alpha_composite(photo, Image.fromarray(colorize(heatmap, width, height))).convert("RGB"))


def heatmap_png(heatmap, width, height, max_side=320):
    """The coloured, translucent heatmap as PNG bytes, in the photo's proportions, to lay over it.

    Args:
        heatmap: from `Explainer.heatmaps`.
        width, height: the photo's size.
        max_side: the PNG's longest side; the map itself is coarse, so more adds only bytes.
    """
    scale = min(1.0, max_side / max(width, height))
    rgba = colorize(heatmap, max(1, round(width * scale)), max(1, round(height * scale)))
    return png_bytes(rgba)


def png_bytes(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def explain_photo(model, photo, output=None, class_name=None):
    """Writes a photo with the Grad-CAM heatmap of its predicted class (or `class_name`) over it.

    Args:
        model: a loaded catsdogs model.
        photo: an image file, read as every path reads it for the model (`preprocess.load_photo`):
            a large one is drawn near the model's input size.
        output: the image file to write (format from its extension); by default
            `<photo name>-gradcam.png` in the current folder.
        class_name: the class to explain instead of the predicted one.

    Returns:
        (`Explanation`, the path written).
    """
    explainer = Explainer(model)
    pixels = pixels_lib.load_photo(photo, explainer.info.image_size)
    explanation = explainer.explain(pixels, class_name)
    output = output or f"{os.path.splitext(os.path.basename(photo))[0]}-gradcam.png"
    Image.fromarray(overlay(pixels, explanation.heatmap)).save(output)
    return explanation, output
