"""Preparing a photo for a model: the one owner of how every path decodes and resizes a photo.

Local extraction, predict, serve, review, Ray's scoring and extraction, Grad-CAM and the report's
figures all take a photo's pixels from here, so that a photo gets the same input everywhere:

- decoding (`load_photo`, `decode_photo`): any common format, upright (EXIF orientation), RGB,
  at most `max_pixels`, and a large photo decoded near the model's input size
  (`images.shrink_while_decoding` with the model's input side as the shortest side kept);
- resizing (`prepare`, `prepare_batch`, `resizer`): the whole photo to the model's square input,
  bilinear with antialiasing and no crop, with the very layer the end-to-end Keras model has
  inside (`resize_layer`);
- the views of a resized photo (`VIEWS`): the mirror image for test-time augmentation, low
  resolution for training.

Decoding needs no TensorFlow (Ray's decoding tasks import this module): it is imported only
where resizing or a view runs.
"""

import functools
import os

import numpy as np

from catsdogs.data.images import DEFAULT_MAX_PIXELS, decode_image, read_file
from catsdogs.errors import ConfigError

# Bump when decoding or resizing changes, so that old features are not mixed with new ones.
# 2: large photos decoded near the model's size (`images.shrink_while_decoding`);
# 3: Ray's workers too, which had decoded them at full size into the same cache.
PIPELINE_VERSION = 3

# The side a photo is decoded near when it is only shown, in a figure that knows no model: more
# than a figure's cell shows (about 250 px at 90 dpi).
DISPLAY_SIZE = 384


def decode_photo(data, source, image_size, max_pixels=DEFAULT_MAX_PIXELS):
    """Decodes a photo's bytes for a model: upright RGB uint8 pixels, a large photo near the model's size.

    A photo much larger than the model's input is decoded at a fraction of its size (JPEG by the
    decoder itself, other formats by box averaging right after decoding; see
    `images.shrink_while_decoding`), each side kept at least `image_size` long: the model's own
    antialiased resize (`prepare`) does the last step. Memory stays bounded and every path gets
    the same pixels.

    Args:
        data: the file's bytes.
        source: a name for error messages (usually the path).
        image_size: the model's input side (or `DISPLAY_SIZE` for a photo only shown).
        max_pixels: photos with more pixels (in their header) are refused.

    Returns:
        a numpy array of shape (height, width, 3) and dtype uint8.

    Raises:
        ImageError: naming the source and the problem.
    """
    return decode_image(data, source, max_pixels, min_side=image_size)


def load_photo(path, image_size, max_pixels=DEFAULT_MAX_PIXELS):
    """Reads and decodes a photo file for a model, as `decode_photo` does.

    Raises:
        ImageError: naming the file and the problem.
    """
    return decode_photo(read_file(path), os.fspath(path), image_size, max_pixels)


@functools.lru_cache(maxsize=4)
def resizer(image_size):
    """`resize_layer` as one compiled TensorFlow graph, built once per process and size.

    It takes one photo, (height, width, 3) float32 pixels of any size, and returns
    (image_size, image_size, 3) float32. A graph rather than the Keras layer called eagerly: 3 ms
    an image instead of 6-9; it also runs inside tf.data pipelines.
    """
    import tensorflow as tf

    from catsdogs.models.layers import resize_layer

    resize = resize_layer(image_size)
    return tf.function(lambda image: resize(image), input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])


def check_pixels(pixels, source="photo"):
    """A photo's pixels as an array, checked to be RGB: (height, width, 3), no side empty.

    Raises:
        ConfigError: naming `source` and the shape found.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.shape[-1] != 3 or 0 in pixels.shape:
        raise ConfigError(f"{source}: expected RGB pixels of shape (height, width, 3), got shape {pixels.shape}")
    return pixels


def prepare(pixels, image_size, source="photo"):
    """One photo resized to a model's input, exactly as the model does.

    Args:
        pixels: (height, width, 3) RGB values in [0, 255], any numeric dtype.
        image_size: the model's input side.
        source: a name for the error message.

    Returns:
        a float32 array (image_size, image_size, 3).
    """
    pixels = check_pixels(pixels, source)
    return resizer(image_size)(pixels.astype(np.float32)).numpy()


def prepare_batch(photos, image_size):
    """Photos of any sizes resized to a model's input: (n, image_size, image_size, 3) float32."""
    if not len(photos):
        return np.zeros((0, image_size, image_size, 3), np.float32)
    return np.stack([prepare(photo, image_size, f"photo {i}") for i, photo in enumerate(photos)])


def _hflip(images):
    return images[:, :, ::-1, :]


# The long side, in pixels, of the "low_resolution" view: about the smallest photos met in other
# collections of cats and dogs (180 px; issue 11), a little below so that they are covered.
LOW_RESOLUTION = 160


def _low_resolution(images):
    """The resized images as a small photo would give them: down to LOW_RESOLUTION px, and up again."""
    import keras

    size = images.shape[1]
    small = keras.ops.image.resize(images, (LOW_RESOLUTION, LOW_RESOLUTION), antialias=True)
    return keras.ops.convert_to_numpy(keras.ops.image.resize(small, (size, size), interpolation="bilinear"))


# Label-preserving transformations of the resized image: the mirror image for test-time
# augmentation; low resolution for training the head on small photos too (`TrainConfig.low_resolution`).
VIEWS = {"original": lambda images: images, "hflip": _hflip, "low_resolution": _low_resolution}
TTA_VIEWS = ("original", "hflip")


def views_for(tta: bool) -> tuple:
    """The views a prediction averages: the photo alone, or the photo and its mirror image."""
    return TTA_VIEWS if tta else ("original",)
