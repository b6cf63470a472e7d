"""`catsdogs review`: a local web page to keep, relabel or exclude photos of a run."""
