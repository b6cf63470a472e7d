"""Settings: the choices and defaults every layer shares, and the settings of training and serving.

The bottom layer: it imports only the standard library (and catsdogs.errors), so that the
command line parses and settings check themselves before TensorFlow loads."""
