"""A corpus of awkward and broken image files, made by the tests themselves (issue 12).

`build_corpus(folder)` writes one file of each kind and returns what a reader of images should
make of it: "ok" (a usable photo, however odd its file) or "error" (to be reported by name with
its reason, never a crash). Any test (the server's, the CLI's) can run it through its command.
"""

import io
import os
import pathlib
import struct
import zlib

import numpy as np
from PIL import Image

from catsdogs.data.images import DEFAULT_MAX_PIXELS


def _encode(image, fmt, **save_args):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width, height):
    """A valid grayscale PNG of width x height black pixels, compressed to a few hundred kilobytes.

    Written row by row, so that the pixels never exist in this process either.
    """
    compressor, rows = zlib.compressobj(9), []
    row = bytes(width + 1)  # filter byte 0, then the pixels
    for _ in range(height):
        rows.append(compressor.compress(row))
    rows.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", b"".join(rows))
            + _png_chunk(b"IEND", b""))


def large_png(side=7000):
    """A side x side RGB PNG that compresses well (smooth gradients): few bytes, many pixels."""
    ramp = Image.linear_gradient("L").resize((side, side))
    image = Image.merge("RGB", (ramp, ramp.transpose(Image.Transpose.ROTATE_90), ramp.transpose(Image.Transpose.FLIP_TOP_BOTTOM)))
    return _encode(image, "PNG", compress_level=1)


def tiny_instances_json(size):
    """A TF Serving predict request of at most `size` bytes holding as many `{"b64": "AAAA"}`
    instances as fit (2 million in 31 MiB): each is cheap to send and costly to parse (issue 23)."""
    instance = b'{"b64": "AAAA"}'
    return b'{"instances": [' + b",".join([instance] * ((size - 20) // (len(instance) + 1))) + b"]}"


def _with_orientation(image, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(image, "JPEG", quality=90, exif=exif.tobytes())


def _with_corrupt_exif(jpeg):
    # An APP1 Exif segment whose TIFF header is garbage, right after the SOI marker.
    payload = b"Exif\x00\x00" + b"\x4d\x4d\x00\x2a\xff\xff\xff\xf0" + os.urandom(40)
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def _animated_gif(image):
    frames = [image.convert("P"), image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("P")]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _palette_with_transparency(image):
    palette = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return _encode(palette, "PNG", transparency=0)


def _sixteen_bit(image):
    gray = np.asarray(image.convert("L"), dtype=np.uint16) * 257
    return _encode(Image.fromarray(gray), "PNG")  # Pillow writes mode I;16 as a 16-bit PNG


def build_corpus(folder, photo=None, max_pixels=DEFAULT_MAX_PIXELS):
    """Writes one file of each kind into `folder`.

    Args:
        folder: where to write (created if needed).
        photo: path of a real photo that the good kinds are made from; by default a synthetic image.
        max_pixels: the reader's pixel limit, which decides whether the large image is "ok".

    Returns:
        list of (kind, path, expected), expected being "ok" or "error".
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if photo is not None:
        image = Image.open(photo).convert("RGB")
    else:
        y, x = np.mgrid[0:300, 0:400]
        image = Image.fromarray(np.stack([x * 255 // 400, y * 255 // 300, (x + y) % 256], -1).astype(np.uint8))
    jpeg = _encode(image, "JPEG", quality=90)
    side = 7000
    kinds = [
        # kind, file name, bytes, expected
        ("zero-byte", "zero.jpg", b"", "error"),
        ("truncated JPEG", "truncated.jpg", jpeg[: len(jpeg) // 3], "error"),
        ("text named .jpg", "notes.jpg", b"These are my notes, not a photo.\n" * 20, "error"),
        ("HTML named .png", "page.png", b"<!doctype html><html><body><img src=cat.png></body></html>", "error"),
        ("PNG named .jpg", "png-inside.jpg", _encode(image, "PNG"), "ok"),
        ("WEBP named .jpg", "webp-inside.jpg", _encode(image, "WEBP"), "ok"),
        ("GIF named .jpg", "gif-inside.jpg", _encode(image.convert("P"), "GIF"), "ok"),
        ("BMP named .jpg", "bmp-inside.jpg", _encode(image, "BMP"), "ok"),
        ("TIFF named .jpg", "tiff-inside.jpg", _encode(image, "TIFF"), "ok"),
        ("animated GIF", "animated.gif", _animated_gif(image), "ok"),
        ("CMYK JPEG", "cmyk.jpg", _encode(image.convert("CMYK"), "JPEG"), "ok"),
        ("16-bit PNG", "sixteen-bit.png", _sixteen_bit(image), "ok"),
        ("palette with transparency", "palette-transparent.png", _palette_with_transparency(image), "ok"),
        ("1x1", "one-pixel.png", _encode(Image.new("RGB", (1, 1), (200, 120, 40)), "PNG"), "ok"),
        ("1x10000", "thin.png", _encode(image.resize((1, 10_000)), "PNG"), "ok"),
        ("20000x20000 bomb", "bomb.png", png_bomb(20_000, 20_000), "error"),
        (f"{side}x{side} under the pixel limit", "large.png", large_png(side),
         "ok" if side * side <= max_pixels else "error"),
        ("EXIF-rotated", "rotated.jpg", _with_orientation(image, 6), "ok"),
        ("corrupt EXIF", "corrupt-exif.jpg", _with_corrupt_exif(jpeg), "ok"),
        ("unicode name", "chat noir été 猫.jpg", jpeg, "ok"),
        ("spaces in name", "my cat photo .jpg", jpeg, "ok"),
        ("newline in name", "two\nlines.jpg", jpeg, "ok"),
    ]
    written = []
    for kind, name, data, expected in kinds:
        path = folder / name
        path.write_bytes(data)
        written.append((kind, path, expected))
    # A name that is not valid UTF-8 (Linux allows any bytes but '/' and NUL).
    raw = os.path.join(os.fsencode(folder), b"caf\xe9-latin1.jpg")
    with open(raw, "wb") as f:
        f.write(jpeg)
    written.append(("non-UTF-8 name", pathlib.Path(os.fsdecode(raw)), "ok"))
    return written
