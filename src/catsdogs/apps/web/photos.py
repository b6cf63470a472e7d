"""Photos as the web pages show them: brought down to the size a page needs and sent as JPEG; and the
training photos similar to a photo (`inference.similar`), as serve and review answer them."""

import io

import numpy as np
from fastapi.responses import Response
from PIL import Image
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from catsdogs.errors import ImageError
from catsdogs.inference.preprocess import load_photo

THUMBNAIL_SIDE = 160  # longest side of a similar training photo sent to a page
TRAINING_PHOTO_ROUTE = "/training-photos/{row}.jpg"  # a training photo of the model's kNN bank, by its row


def shown(pixels, side):
    """Pixels brought down to at most `side` on their longest side: what a page needs."""
    image = Image.fromarray(pixels)
    image.thumbnail((side, side))
    return np.asarray(image)


def jpeg_bytes(pixels):
    """RGB pixels as a JPEG file's bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


class SimilarPhotoAnswer(BaseModel):
    """A training photo similar to the photo asked about."""

    row: int = Field(description="its row in the model's kNN bank of training photos")
    path: str = Field(description="relative to the data folder the model was trained on")
    label: str = Field(description="the label it was trained with")
    similarity: float = Field(description="cosine similarity of its features to the photo's, from -1 to 1")
    photo_url: str | None = Field(None, description=(
        f"GET it, {THUMBNAIL_SIDE} pixels a side at most, with the same credentials; none where the training "
        f"photos are not reachable from the server (it names them only)"))


def similar_answers(photos) -> list:
    """`SimilarPhotoAnswer`s of `inference.similar.SimilarPhoto`s; a photo has a URL where the server can read it."""
    return [SimilarPhotoAnswer(row=photo.row, path=photo.path, label=photo.label, similarity=photo.similarity,
                               photo_url=TRAINING_PHOTO_ROUTE.format(row=photo.row) if photo.file else None)
            for photo in photos]


def training_photo_response(training_photos, row):
    """A training photo of the model's kNN bank as a small JPEG (`TRAINING_PHOTO_ROUTE`).

    The photo is read only inside the run's data folder (`TrainingPhotos.file`).

    Args:
        training_photos: the classifier's `inference.similar.TrainingPhotos`, or None.
        row: the photo's row in the bank.

    Raises:
        HTTPException: 404, saying why: no such row, or the photo is not reachable from here.
    """
    if training_photos is None:
        raise HTTPException(404, "this model names no similar training photos")
    if not 0 <= row < len(training_photos):
        raise HTTPException(404, f"no training photo {row}: the model keeps {len(training_photos)} "
                                 f"(0 to {len(training_photos) - 1})")
    path = training_photos.file(row)
    if path is None:
        raise HTTPException(404, f"training photo {row} ({training_photos.paths[row]}) is not reachable from here: "
                                 f"the run's data folder is not on this machine, or the name leads out of it")
    try:
        pixels = load_photo(path, THUMBNAIL_SIDE)
    except ImageError as error:
        raise HTTPException(404, f"training photo {row} ({training_photos.paths[row]}): {error.reason}")
    return Response(jpeg_bytes(shown(pixels, THUMBNAIL_SIDE)), media_type="image/jpeg")
