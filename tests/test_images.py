"""Decoding any common image into upright RGB, and clear errors for files that are not usable."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from catsdogs.data.images import (
    DEFAULT_MAX_FILE_BYTES,
    decode_image,
    describe_quirks,
    load_image,
    open_image,
    read_file,
)
from catsdogs.errors import ImageError
from catsdogs.inference.preprocess import decode_photo
from conftest import gradient, image_bytes, run_bounded


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "WEBP", "TIFF"])
def test_lossless_formats_decode_exactly_even_when_named_jpg(tmp_path, fmt):
    pixels = gradient()
    path = tmp_path / "photo.jpg"
    path.write_bytes(image_bytes(pixels, fmt, **({"lossless": True} if fmt == "WEBP" else {})))
    assert np.array_equal(load_image(path), pixels)
    with open_image(path.read_bytes(), path) as image:
        assert describe_quirks(image, path) == [f"{fmt} data named .jpg"]


def test_gif_palette_becomes_rgb(tmp_path):
    path = tmp_path / "anim.gif"
    path.write_bytes(image_bytes(gradient(), "GIF"))
    decoded = load_image(path)
    assert decoded.shape == (40, 60, 3) and decoded.dtype == np.uint8


@pytest.mark.parametrize("mode", ["L", "CMYK", "I;16"])
def test_other_colour_modes_become_rgb(mode):
    if mode == "I;16":
        data = image_bytes((np.arange(40 * 60, dtype=np.uint16).reshape(40, 60) * 27), "PNG")
    else:
        data = image_bytes(gradient(mode=mode), "JPEG" if mode == "CMYK" else "PNG")
    decoded = decode_image(data)
    assert decoded.shape == (40, 60, 3) and decoded.dtype == np.uint8
    if mode == "L":
        assert np.array_equal(decoded[..., 0], decoded[..., 2])


def test_transparency_is_composed_on_white():
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[:, :5] = (255, 0, 0, 255)  # opaque red left half, transparent black right half
    decoded = decode_image(image_bytes(rgba, "PNG"))
    assert decoded[0, 0].tolist() == [255, 0, 0]
    assert decoded[0, 9].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied(tmp_path):
    pixels = gradient(20, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate 90 degrees clockwise
    path = tmp_path / "phone.jpg"
    Image.fromarray(pixels).save(path, "JPEG", quality=100, exif=exif.tobytes())
    decoded = load_image(path)
    assert decoded.shape == (30, 20, 3)
    expected = np.rot90(pixels, k=-1)
    assert np.abs(decoded.astype(int) - expected).mean() < 8  # JPEG is lossy
    with open_image(path.read_bytes(), path) as image:
        assert "EXIF orientation 6 applied" in describe_quirks(image, path)


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"hello, I am a text file\n", "not an image"),
])
def test_unusable_files_name_the_file_and_the_problem(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError) as error:
        load_image(path)
    assert str(path) in str(error.value) and reason in str(error.value)


def test_truncated_jpeg_is_an_error_not_a_grey_image(tmp_path):
    data = image_bytes(gradient(200, 200), "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(path)


def test_decompression_bomb_is_refused_before_decoding():
    data = image_bytes(np.zeros((100, 100, 3), np.uint8), "PNG")
    with pytest.raises(ImageError, match="too large: 100x100"):
        decode_image(data, "bomb.png", max_pixels=5000)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="cannot read file"):
        load_image(tmp_path / "nothing.jpg")


READ_EACH = """
import json, sys
from catsdogs.data.images import read_file
from catsdogs.errors import ImageError
reasons = {}
for path in sys.argv[1:]:
    try:
        reasons[path] = len(read_file(path))
    except ImageError as error:
        reasons[path] = error.reason
print(json.dumps(reasons))
"""


def test_only_regular_files_of_bounded_size_are_read(tmp_path):
    """A FIFO blocked the reader for ever, a link to /dev/zero read until the memory ran out (issue 23):
    read in a subprocess with a timeout and a memory limit, so that a regression fails this test only."""
    photo = tmp_path / "photo.png"
    photo.write_bytes(image_bytes(gradient(), "PNG"))
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "pipe-link.jpg").symlink_to(tmp_path / "pipe.jpg")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    (tmp_path / "photo-link.png").symlink_to(photo)  # a link to a regular file is read
    (tmp_path / "folder.jpg").mkdir()
    with open(tmp_path / "huge.tif", "wb") as f:
        f.truncate(DEFAULT_MAX_FILE_BYTES + 1)  # sparse: takes no disk
    names = ["photo.png", "photo-link.png", "pipe.jpg", "pipe-link.jpg", "zero.jpg", "folder.jpg", "huge.tif"]
    result = run_bounded(READ_EACH, *(tmp_path / name for name in names), memory_bytes=1 << 30)
    assert result.returncode == 0, result.stderr
    reasons = {os.path.basename(path): reason for path, reason in json.loads(result.stdout).items()}
    assert reasons == {"photo.png": photo.stat().st_size, "photo-link.png": photo.stat().st_size,
                       "pipe.jpg": "not a regular file (a FIFO)", "pipe-link.jpg": "not a regular file (a FIFO)",
                       "zero.jpg": "not a regular file (a character device)",
                       "folder.jpg": "not a regular file (a folder)",
                       "huge.tif": f"too large: {DEFAULT_MAX_FILE_BYTES + 1} bytes, limit {DEFAULT_MAX_FILE_BYTES}"}


def test_read_file_reads_up_to_its_limit(tmp_path):
    path = tmp_path / "ten.bin"
    path.write_bytes(b"0123456789")
    assert read_file(path, max_bytes=10) == b"0123456789"
    with pytest.raises(ImageError, match="ten.bin: too large: 10 bytes, limit 9"):
        read_file(path, max_bytes=9)


def test_decompression_bomb_beyond_pillows_own_limit_says_too_large():
    from corpus import png_bomb

    with pytest.raises(ImageError, match="bomb.png: too large, a likely decompression bomb"):
        decode_image(png_bomb(20_000, 20_000), "bomb.png")


def test_decoding_for_the_model_leaves_small_images_as_they_are():
    data = image_bytes(gradient(500, 700), "PNG")
    assert np.array_equal(decode_photo(data, "small.png", 380), decode_image(data))


@pytest.mark.parametrize("fmt, mode", [("JPEG", "RGB"), ("PNG", "RGB"), ("PNG", "P"), ("PNG", "I;16"), ("WEBP", "RGB")])
def test_a_large_image_is_decoded_near_the_model_input_size(fmt, mode):
    image = Image.fromarray(np.kron(gradient(40, 60), np.ones((100, 100, 1), np.uint8)))  # 6000x4000, smooth
    if mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L"), np.uint16) * 257)
    pixels = decode_photo(image_bytes(image, fmt), "large", 380)
    height, width = pixels.shape[:2]
    assert 380 <= height < 2 * 380 and width / height == pytest.approx(1.5, rel=0.01)
    full = decode_image(image_bytes(image, fmt))
    # The same picture, smaller: compare with the full decode shrunk the same way.
    expected = np.asarray(Image.fromarray(full).resize((width, height), Image.Resampling.BOX), np.float32)
    assert np.abs(pixels.astype(np.float32) - expected).mean() < 4


def test_exif_orientation_is_applied_after_shrinking():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise
    data = image_bytes(Image.fromarray(np.kron(gradient(30, 40), np.ones((100, 100, 1), np.uint8))), "JPEG", exif=exif.tobytes())
    height, width = decode_photo(data, "rotated.jpg", 380).shape[:2]
    assert height > width  # 4000 wide, 3000 high, standing up
