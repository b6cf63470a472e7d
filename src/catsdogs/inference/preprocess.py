"""Preparing a photo for a model: the one owner of how every path decodes and resizes a photo.

Local extraction, predict, serve, review, Ray's scoring and extraction, Grad-CAM and the report's
figures all take a photo's pixels from here, so that a photo gets the same input everywhere:

- decoding (`load_photo`, `decode_photo`): any common format, upright (EXIF orientation), RGB,
  at most `max_pixels`, and a large photo decoded near the model's input size
  (`images.shrink_while_decoding` with the model's input side as the shortest side kept);
- resizing (`resize`, `prepare`, `prepare_batch`): the whole photo to the model's square input,
  bilinear with antialiasing and no crop, giving the very pixels of the layer the end-to-end Keras
  model has inside (`models.layers.resize_layer`), in a fraction of its time;
- the views of a resized photo (`VIEWS`): the mirror image for test-time augmentation, low
  resolution for training.

Decoding and resizing need no TensorFlow (Ray's decoding tasks import this module): it is
imported only where a view runs.
"""

import functools
import os

import numpy as np

from catsdogs.data.images import DEFAULT_MAX_PIXELS, decode_image, read_file
from catsdogs.errors import ConfigError

# Bump when decoding or resizing changes, so that old features are not mixed with new ones.
# 2: large photos decoded near the model's size (`images.shrink_while_decoding`);
# 3: Ray's workers too, which had decoded them at full size into the same cache;
# 4: resized by `resize` (scipy) rather than TensorFlow's kernel: the same weights and sums, equal
#    pixels on every photo compared (tests/test_preprocess.py), versioned all the same.
PIPELINE_VERSION = 4

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


@functools.lru_cache(maxsize=1024)  # photo sides seen (about 14 kB each)
def _axis_weights(in_size, out_size):
    """The weights of the model's resize along one axis: a sparse (out_size, in_size) float32 matrix.

    TensorFlow's antialiased bilinear resize (`tf.image.resize(..., antialias=True)`, the Keras
    Resizing layer's) is its ScaleAndTranslate kernel with a triangle filter widened by the
    shrink factor when shrinking. Its weights are computed here as that kernel computes them, in
    float32 operation by operation (scipy's and TensorFlow's sums then run over the same taps in
    the same order), so that the pixels come out the same.
    """
    from scipy import sparse

    f32 = np.float32
    scale = f32(out_size) / f32(in_size)
    inv_scale = f32(1.0 / np.float64(scale))
    kernel_scale = max(inv_scale, f32(1))  # the triangle widens only when shrinking
    centres = (np.arange(out_size, dtype=f32) + f32(0.5)) * inv_scale  # inside the photo, whatever the sizes
    starts = np.clip(np.ceil(centres - kernel_scale - f32(0.5)).astype(np.int64), 0, in_size - 1)
    ends = np.clip(np.floor(centres + kernel_scale - f32(0.5)).astype(np.int64), 0, in_size - 1) + 1
    taps = starts[:, None] + np.arange((ends - starts).max())
    distance = np.abs((taps.astype(f32) + f32(0.5) - centres[:, None]) * (f32(1) / kernel_scale))
    weights = np.where((distance < 1) & (taps < ends[:, None]), f32(1) - distance, f32(0)).astype(f32)
    total = np.zeros(out_size, f32)
    for column in weights.T:  # summed tap by tap, in float32, as the kernel sums them
        total += column
    weights *= (f32(1) / total)[:, None]
    inside = taps < ends[:, None]
    rows = np.broadcast_to(np.arange(out_size)[:, None], taps.shape)
    return sparse.csr_array((weights[inside], (rows[inside], taps[inside])), shape=(out_size, in_size))


def resize(pixels, image_size):
    """One photo resized to a model's square input, the whole photo with no crop: the pixels the
    model's own Resizing layer (`models.layers.resize_layer`) gives, at several times its speed.

    TensorFlow's resize of a 500x375 photo to 380 px takes about 5 ms of CPU; this, the same
    weights applied as two sparse matrix products, about 1 ms: decoding and resizing were a third
    of the CPU time of extraction with a fast backbone.

    Args:
        pixels: (height, width, 3) RGB values in [0, 255], any numeric dtype.
        image_size: the model's input side.

    Returns:
        a float32 array (image_size, image_size, 3).
    """
    height, width, _ = pixels.shape
    # Over rows first, as TensorFlow; then over columns, each pass over the leading axis of its
    # input, with the pixels transposed in between as 12-byte units (twice as fast as float by float).
    tall = _axis_weights(height, image_size) @ pixels.reshape(height, width * 3).astype(np.float32)
    across = np.ascontiguousarray(tall.view("V12").T).view(np.float32)  # (width, image_size * 3)
    done = _axis_weights(width, image_size) @ across  # (image_size, image_size * 3): column by column
    return np.ascontiguousarray(done.view("V12").T).view(np.float32).reshape(image_size, image_size, 3)


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
    return resize(check_pixels(pixels, source), image_size)


def prepare_batch(photos, image_size):
    """Photos of any sizes resized to a model's input: (n, image_size, image_size, 3) float32."""
    if not len(photos):
        return np.zeros((0, image_size, image_size, 3), np.float32)
    return np.stack([prepare(photo, image_size, f"photo {i}") for i, photo in enumerate(photos)])


def _hflip(images):
    return images[:, :, ::-1, :]


# The long side, in pixels, of the "low_resolution" view: about the smallest photos met in other
# collections of cats and dogs (180 px), a little below so that they are covered.
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
