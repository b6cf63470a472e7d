"""TensorFlow Serving's REST API as it is specified (its guide, "RESTful API"): the answer to a
predict request and the model's metadata.

A predict answer holds the model's output tensors by name, in the request's format: row format
(`"instances"` in) answers `{"predictions": [...]}`, one item per photo; columnar format (`"inputs"`
in) answers `{"outputs": ...}`, one list per output. Where the model has a single output (no
open-set score), TF Serving leaves out its name: each prediction is then the probabilities
themselves, and `"outputs"` their list.
"""

from pydantic import BaseModel, Field

from catsdogs.apps.serve.signature import IMAGE_INPUT

SIGNATURE_NAME = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"

# One photo's value of an output: the probabilities (a list) or the in-distribution score (a number).
Tensor = list[float] | float


class RowAnswer(BaseModel):
    """TF Serving's answer to a row-format request."""

    predictions: list[dict[str, Tensor]] | list[Tensor] = Field(description=(
        "one per image, in order: {output name: value}, or the value itself where the model has one output"))


class ColumnarAnswer(BaseModel):
    """TF Serving's answer to a columnar-format request."""

    outputs: dict[str, list[Tensor]] | list[Tensor] = Field(description=(
        "{output name: one value per image}, or the list of values itself where the model has one output"))


class Metadata(BaseModel):
    """TF Serving's GetModelMetadata answer, and the class names."""

    model_spec: dict = Field(description="name, version, signature_name")
    metadata: dict = Field(description=(
        "signature_def: the inputs and outputs of the serving_default signature (names, dtypes, shapes); "
        "classes: the class names, in the order of the probabilities (a catsdogs addition)"))


def answer(signature, outputs, columnar):
    """The answer to a predict request.

    Args:
        signature: the served model's `Signature`.
        outputs: one dict {output name: numpy value} per photo, in order.
        columnar: whether the request came in columnar format.

    Returns:
        `RowAnswer` or `ColumnarAnswer`.
    """
    names = list(signature.outputs)
    values = {name: [photo[name].tolist() for photo in outputs] for name in names}
    if columnar:
        return ColumnarAnswer(outputs=values if len(names) > 1 else values[names[0]])
    if len(names) == 1:
        return RowAnswer(predictions=values[names[0]])
    return RowAnswer(predictions=[{name: values[name][i] for name in names} for i in range(len(outputs))])


def _tensor_info(name, dtype, shape):
    """A TensorInfo as TF Serving writes it in JSON (sizes as strings: they are int64 in the proto)."""
    return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(size), "name": ""} for size in shape],
                                             "unknown_rank": False},
            "name": f"{SIGNATURE_NAME}_{name}:0"}


def metadata(name, version, signature):
    """The model's metadata, as TF Serving's `GET /v1/models/NAME/metadata` gives it.

    Args:
        name: the model's name.
        version: its version.
        signature: its `Signature`.

    Returns:
        `Metadata`.
    """
    outputs = {output: _tensor_info(output, "DT_FLOAT", (-1, *shape)) for output, shape in signature.outputs.items()}
    serving_default = {"inputs": {IMAGE_INPUT: _tensor_info(IMAGE_INPUT, "DT_STRING", (-1,))}, "outputs": outputs,
                       "method_name": PREDICT_METHOD}
    return Metadata(model_spec={"name": name, "signature_name": "", "version": str(version)},
                    metadata={"signature_def": {"signature_def": {SIGNATURE_NAME: serving_default}},
                              "classes": list(signature.classes)})

