"""Running a model on photos: the one way a photo is prepared for it, batching pipelines, the
backbone's runtime, saved formats, features through the cache, the classifier, Grad-CAM."""
