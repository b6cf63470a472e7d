"""catsdogs: an image classifier from a folder of photos, by transfer learning from ImageNet."""

import os

# TensorFlow's C++ start-up chatter is noise to a command-line user; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
