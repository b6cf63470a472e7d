"""What the served model takes and gives, in the words both tensor protocols use (TensorFlow
Serving's signature, the Open Inference Protocol's metadata).

Inputs: `image_bytes`, image files (JPEG, PNG, ...), one per photo; for the Open Inference Protocol
also `pixels`, RGB values in [0, 255] already at the model's input size, for clients that resize
photos themselves. Outputs, per photo: `probabilities`, one per class in the order of the class
names, and `in_distribution_score` where the model has an open-set score (`models.model.SCORE`).
"""

import dataclasses

from catsdogs.models.model import SCORE

IMAGE_INPUT = "image_bytes"
PIXELS_INPUT = "pixels"
PROBABILITIES = "probabilities"


@dataclasses.dataclass(frozen=True)
class Signature:
    """The served model's inputs and outputs.

    Attributes:
        classes: the class names, in the order of the probabilities.
        image_size: the side of the model's input (`pixels` are image_size x image_size x 3).
        outputs: output name -> its shape for one photo (() for a scalar), in the order answers give them.
    """

    classes: tuple
    image_size: int
    outputs: dict

    @classmethod
    def of(cls, info):
        """The signature of a model described by its `ModelInfo`."""
        outputs = {PROBABILITIES: (len(info.class_names),)}
        if info.reject_threshold is not None:  # the model has an open-set score
            outputs[SCORE] = ()
        return cls(tuple(info.class_names), info.image_size, outputs)

    @property
    def pixels_shape(self):
        """The shape of one photo's `pixels`."""
        return (self.image_size, self.image_size, 3)
