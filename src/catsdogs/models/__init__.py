"""The model's parts: the backbone registry and builders, pretrained weights, precision, the
layers saved in a model, heads, calibration, the open-set score, the assembled model."""
