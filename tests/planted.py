"""Near-duplicates of real photos, made the ways they arise: re-encoded, resized, cropped a little,
mirrored, lightly recoloured. The tests and benchmarks/near_duplicates.py plant them next to the
photos they copy."""

import io

from PIL import Image, ImageEnhance, ImageOps


def _jpeg(image, quality=90):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def reencoded(image, rng):
    """Saved again as a JPEG of lower quality (30-70)."""
    return _jpeg(image, int(rng.integers(30, 71)))


def resized(image, rng):
    """Shrunk to 40-80% of its size."""
    scale = rng.uniform(0.4, 0.8)
    return _jpeg(image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS))


def cropped(image, rng):
    """85-95% of each side kept, anywhere in the photo."""
    width, height = (round(side * rng.uniform(0.85, 0.95)) for side in image.size)
    left, top = int(rng.integers(0, image.width - width + 1)), int(rng.integers(0, image.height - height + 1))
    return _jpeg(image.crop((left, top, left + width, top + height)))


def mirrored(image, rng):
    """The mirror image (left and right swapped)."""
    return _jpeg(ImageOps.mirror(image))


def recoloured(image, rng):
    """Brightness and contrast changed by up to 20%, colour saturation by up to 30%."""
    for enhancer, spread in ((ImageEnhance.Brightness, 0.2), (ImageEnhance.Contrast, 0.2), (ImageEnhance.Color, 0.3)):
        image = enhancer(image).enhance(rng.uniform(1 - spread, 1 + spread))
    return _jpeg(image)


KINDS = {"re-encoded": reencoded, "resized": resized, "cropped": cropped, "mirrored": mirrored,
         "recoloured": recoloured}


def plant(source, kind, destination, rng):
    """Writes a near-duplicate of the photo `source` of the given kind (one of `KINDS`) to `destination`.

    Args:
        source: a photo file.
        kind: how it is changed.
        destination: the file written (JPEG bytes).
        rng: a `numpy.random.Generator`, which draws how much it is changed.
    """
    with Image.open(source) as image:
        data = KINDS[kind](image.convert("RGB"), rng)
    with open(destination, "wb") as f:
        f.write(data)
