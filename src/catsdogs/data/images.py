"""Reading one image file into RGB pixels with Pillow, whatever its format or quirks."""

import io
import os
import stat

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from catsdogs.config.choices import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS
from catsdogs.errors import ImageError

FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
              (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
EXIF_ORIENTATION = 0x0112


def open_image(data, source, max_pixels=DEFAULT_MAX_PIXELS):
    """Opens an image lazily (header only) and checks its size before anything is decoded.

    Args:
        data: the file's bytes.
        source: a name for error messages (usually the path).
        max_pixels: images with more pixels are refused.

    Returns:
        an unloaded `PIL.Image.Image`.
    """
    if not data:
        raise ImageError(source, "empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(source, "not an image (no known image format)") from None
    except Image.DecompressionBombError as error:  # far over any limit: Pillow refuses it when opening
        raise ImageError(source, f"too large, a likely decompression bomb ({error})") from None
    except (OSError, ValueError) as error:
        raise ImageError(source, f"unreadable image header ({error})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(source, f"too large: {width}x{height} pixels, limit {max_pixels}")
    return image


def to_rgb_array(image, source, min_side=None):
    """Decodes an opened image fully and returns it upright, as RGB uint8 pixels.

    EXIF orientation is applied, transparency is composed onto white, and grayscale, palette,
    CMYK and 16-bit images are converted to RGB.

    Args:
        image: from `open_image`.
        source: a name for error messages.
        min_side: if given, a large image is shrunk while it is decoded, by a whole factor that
            keeps both sides at least this long (see `shrink_while_decoding`).

    Returns:
        a numpy array of shape (height, width, 3) and dtype uint8.
    """
    try:
        if min_side:
            image = shrink_while_decoding(image, min_side)
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            image = Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8))
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = Image.new("RGB", rgba.size, (255, 255, 255))
            image.paste(rgba, mask=rgba.getchannel("A"))
        elif image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageError(source, f"corrupt or truncated image ({error})") from None


def decode_image(data, source="image", max_pixels=DEFAULT_MAX_PIXELS, min_side=None):
    """Decodes image bytes into upright RGB uint8 pixels (see `to_rgb_array`).

    Pixels for a model are decoded by `inference.preprocess.decode_photo`, which sets `min_side`
    as every path does; without it the image is decoded at its full size.
    """
    return to_rgb_array(open_image(data, source, max_pixels), source, min_side)


def read_file(path, max_bytes=DEFAULT_MAX_FILE_BYTES):
    """The bytes of a photo file, or an ImageError that names it and says why it cannot be read.

    Every photo catsdogs reads from a local disk is read here. Only regular files (or links to them) of at
    most `max_bytes` are read: a FIFO would block the reader for ever and a link to /dev/zero would
    fill the memory. The file is checked before it is opened, so that a device or FIFO is never
    opened, and again once open (without waiting: O_NONBLOCK), in case it was replaced in between.

    Args:
        path: the file.
        max_bytes: larger files are refused.

    Raises:
        ImageError: a file that is missing, unreadable, not a regular file or too large.
    """
    try:
        _check_regular(path, os.stat(path), max_bytes)
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with open(descriptor, "rb") as f:
            _check_regular(path, os.fstat(descriptor), max_bytes)
            data = f.read(max_bytes + 1)
    except OSError as error:
        raise ImageError(path, f"cannot read file ({error.strerror or error})") from None
    if len(data) > max_bytes:  # grown since it was checked
        raise ImageError(path, f"too large: over the limit of {max_bytes} bytes")
    return data


def _check_regular(path, info, max_bytes):
    """Raises an ImageError unless `info` (an os.stat result) is that of a regular file of at most `max_bytes`."""
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for is_kind, name in FILE_KINDS if is_kind(info.st_mode)), "of an unknown kind")
        raise ImageError(path, f"not a regular file ({kind})")
    if info.st_size > max_bytes:
        raise ImageError(path, f"too large: {info.st_size} bytes, limit {max_bytes}")


def shrink_while_decoding(image, min_side):
    """Decodes an opened image at a reduced size when it is much larger than needed.

    A model that resizes every photo to `min_side` pixels gains nothing from 7000x7000 of them,
    while decoding them costs up to 4 bytes a pixel. JPEG is decoded directly at 1/2, 1/4 or 1/8
    of its size (libjpeg's DCT scaling, `Image.draft`), so the full-size pixels never exist;
    other formats are shrunk by box averaging (`Image.reduce`) right after decoding, before any
    conversion could copy them. Both keep each side at least `min_side` long, so the model's own
    (antialiased) resize still does the last step; images already that small are left as they are.

    Args:
        image: from `open_image`, not loaded yet.
        min_side: the shortest side worth keeping, usually the model's input size.

    Returns:
        a loaded `PIL.Image.Image`, possibly smaller, in the same mode (or one that `to_rgb_array`
        converts: palette and 1-bit images are expanded first, as `reduce` cannot average them).
    """
    if image.format == "JPEG":
        image.draft(None, (min_side, min_side))  # picks the largest scale that keeps both sides >= min_side
    image.load()
    factor = min(image.width, image.height) // min_side
    if factor < 2:
        return image
    if image.mode in ("P", "PA"):
        has_alpha = image.mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    elif image.mode == "1" or image.mode.startswith("I;16"):
        image = image.convert("L" if image.mode == "1" else "I")
    return image.reduce(factor)


def load_image(path, max_pixels=DEFAULT_MAX_PIXELS):
    """Reads and decodes an image file into upright RGB uint8 pixels at its full size.

    Pixels for a model (or shown beside its answers) are read by `inference.preprocess.load_photo`
    instead, near the model's input size as every path reads them.

    Raises:
        ImageError: naming the file and the problem.
    """
    return decode_image(read_file(path), os.fspath(path), max_pixels)


def describe_quirks(image, path):
    """Lists what is unusual about an opened image but handled when it is read.

    Returns:
        list of short phrases, e.g. ["PNG data named .jpg", "CMYK converted to RGB"].
    """
    quirks = []
    extension = os.path.splitext(str(path))[1].lower().lstrip(".")
    expected = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP",
                "webp": "WEBP", "tif": "TIFF", "tiff": "TIFF"}.get(extension)
    if image.format and expected != image.format:
        quirks.append(f"{image.format} data named .{extension}" if extension else f"{image.format} data without extension")
    if image.mode != "RGB":
        quirks.append(f"{image.mode} converted to RGB")
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    if orientation != 1:
        quirks.append(f"EXIF orientation {orientation} applied")
    return quirks
