"""Resizing a photo for a model: `preprocess.resize` gives the pixels of the model's own Resizing layer."""

import numpy as np
import pytest

from catsdogs.inference.preprocess import load_photo, prepare, resize
from catsdogs.models.layers import resize_layer
from conftest import photo


def layer_resize(pixels, size):
    return np.asarray(resize_layer(size)(pixels[None].astype(np.float32)))[0]


@pytest.mark.parametrize("size", [380, 96])
def test_resize_gives_the_pixels_of_the_models_resize_layer_on_real_photos(size):
    photos = [load_photo(photo("test", cls, number), size) for cls in ("cats", "dogs") for number in range(4001, 4011)]
    assert len({p.shape for p in photos}) > 5  # photos of many sizes, shrunk and enlarged
    for pixels in photos:
        resized = resize(pixels, size)
        assert resized.shape == (size, size, 3) and resized.dtype == np.float32 and resized.flags.c_contiguous
        np.testing.assert_allclose(resized, layer_resize(pixels, size), rtol=0, atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (3, 500), (2000, 50), (380, 380), (100, 150), (381, 379)])
def test_resize_gives_the_pixels_of_the_models_resize_layer_on_any_shape(shape):
    pixels = np.random.default_rng(0).uniform(0, 255, (*shape, 3))  # float64, as a library user may give
    np.testing.assert_allclose(prepare(pixels, 380), layer_resize(pixels, 380), rtol=0, atol=1e-4)


def test_a_photo_of_the_models_size_is_left_as_it_is():
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert np.array_equal(resize(pixels, 64), pixels.astype(np.float32))
