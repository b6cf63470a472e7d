"""The Open Inference Protocol (KServe's V2 inference protocol, REST), which NVIDIA Triton, KServe,
Seldon Core and MLServer speak, and `tritonclient.http` is a client of: its messages, read and written.

A request is JSON, or JSON followed by raw tensor bytes (Triton's binary tensor data extension:
the header `Inference-Header-Content-Length` gives the JSON's length, and each tensor sent so
says its size in `parameters.binary_data_size`). It carries one input (`signature`):

- `image_bytes`, BYTES, shape [n]: n image files. In JSON each is a base64 string (as MLServer's
  `"content_type": "base64"`: a file is not text); as binary data, each is a 4-byte little-endian
  length followed by the file, as Triton writes BYTES.
- `pixels`, FP32 or UINT8, shape [n, size, size, 3]: RGB values in [0, 255] already at the
  model's input size, row-major, in JSON flat or nested.

The answer holds the model's outputs as FP32 tensors named as the metadata says (all of them, or
those the request lists), each in JSON (`data`) or, where asked for (`binary_data_output`,
an output's `binary_data`), as binary data after the JSON.

What a JSON body may cost is bounded before it is parsed, as for TF Serving's requests: its
separators and brackets are counted, and each may cost up to `PARSED_TOKEN_BYTES` once parsed (a
number becomes a Python float in a list, a bracket a list), so a body holds at most as many as
twice the upload limit affords; pixels beyond that travel as binary data.
"""

import base64
import dataclasses
import json
import math
import struct

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from catsdogs import __version__
from catsdogs.apps.serve.signature import IMAGE_INPUT, PIXELS_INPUT
from catsdogs.apps.web.handlers import describe_validation_error
from catsdogs.apps.web.limits import check_image_count, count_json_tokens

BINARY_HEADER = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data"]
PIXEL_TYPES = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}
OUTPUT_TYPE = "FP32"
PARSED_TOKEN_BYTES = 80  # the most one separator or bracket of a JSON body may cost once parsed (a nested list)


class InputTensor(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description=f"{IMAGE_INPUT} (image files) or {PIXELS_INPUT} (RGB values at the input size)")
    shape: list[int] = Field(description=f"[n] for {IMAGE_INPUT}, [n, size, size, 3] for {PIXELS_INPUT}")
    datatype: str = Field(description=f"BYTES for {IMAGE_INPUT}; FP32 or UINT8 for {PIXELS_INPUT}")
    parameters: dict | None = Field(None, description="binary_data_size: the tensor's bytes after the JSON")
    data: list | None = Field(None, description="the tensor's elements in row-major order, flat or nested; BYTES "
                                                "elements as base64 strings")


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: dict | None = Field(None, description="binary_data: answer this output as binary data")


class InferRequest(BaseModel):
    """The Open Inference Protocol's inference request."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, description="echoed in the answer")
    parameters: dict | None = Field(None, description="binary_data_output: answer every output as binary data")
    inputs: list[InputTensor] = Field(description="one input: the photos")
    outputs: list[RequestedOutput] | None = Field(None, description="the outputs to answer (default: all)")


class OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict | None = Field(None, description="binary_data_size, for an output sent as binary data")
    data: list[float] | None = None


class InferResponse(BaseModel):
    """The Open Inference Protocol's inference answer (as JSON; with binary outputs, their bytes follow it)."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OutputTensor]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata] = Field(description="a request carries one of them")
    outputs: list[TensorMetadata]
    parameters: dict = Field(description="classes: the class names, in the order of the probabilities")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


@dataclasses.dataclass
class Request:
    """An inference request, checked and its photos taken out.

    Attributes:
        id: the request's id, if any.
        files: (bytes, source name) of each image file of `image_bytes`; None for `pixels`.
        pixels: (n, size, size, 3) float32 RGB values of `pixels`; None for `image_bytes`.
        outputs: the names of the outputs to answer, in order.
        binary: those of them to answer as binary data.
    """

    id: str | None
    files: list | None
    pixels: np.ndarray | None
    outputs: list
    binary: set


def server_metadata():
    return ServerMetadata(name="catsdogs", version=__version__, extensions=EXTENSIONS)


def model_metadata(name, version, signature, format):
    """The model's metadata (`GET /v2/models/NAME`).

    Args:
        name: the model's name.
        version: its version.
        signature: its `Signature`.
        format: how it is stored (keras, onnx, ...): the platform is "catsdogs_FORMAT".
    """
    inputs = [TensorMetadata(name=IMAGE_INPUT, datatype="BYTES", shape=[-1]),
              TensorMetadata(name=PIXELS_INPUT, datatype="FP32", shape=[-1, *signature.pixels_shape])]
    outputs = [TensorMetadata(name=output, datatype=OUTPUT_TYPE, shape=[-1, *shape])
               for output, shape in signature.outputs.items()]
    return ModelMetadata(name=name, versions=[str(version)], platform=f"catsdogs_{format}", inputs=inputs,
                         outputs=outputs, parameters={"classes": list(signature.classes)})


def max_json_tokens(max_images, max_upload_bytes):
    """The most separators and brackets a JSON inference request may hold: what twice the upload
    limit affords once parsed, and never fewer than a request of `max_images` files needs."""
    return max(8 * max_images + 64, 2 * max_upload_bytes // PARSED_TOKEN_BYTES)


def _bad(message):
    return HTTPException(400, message)


def parse_request(body, header_length, signature, max_images, max_tokens):
    """Reads an inference request: its JSON, bounded before it is parsed, then its one input.

    Args:
        body: the request's body.
        header_length: the `Inference-Header-Content-Length` header (binary data follow the JSON), or None.
        signature: the served model's `Signature`.
        max_images: the most photos in one request.
        max_tokens: the most separators and brackets its JSON may hold (`max_json_tokens`).

    Returns:
        a `Request`.

    Raises:
        HTTPException: 400 for a malformed request, 413 for one over the limits.
    """
    header, binary = body, memoryview(b"")
    if header_length is not None:
        length = int(header_length) if header_length.isdigit() else -1
        if not 0 < length <= len(body):
            raise _bad(f"{BINARY_HEADER}: {header_length!r} is not a length within the body's {len(body)} bytes")
        header, binary = body[:length], memoryview(body)[length:]
    if not header or header.isspace():
        raise _bad("empty request body")
    tokens = count_json_tokens(header)
    if tokens > max_tokens:
        raise HTTPException(413, f"the request's JSON has {tokens} separators and brackets; the limit is {max_tokens}: "
                                 f"send {PIXELS_INPUT} as binary data ({BINARY_HEADER}), or the photos as "
                                 f"{IMAGE_INPUT}, or fewer photos")
    try:
        request = InferRequest.model_validate_json(header)
    except ValidationError as error:
        raise _bad(describe_validation_error(error.errors()))
    if len(request.inputs) != 1:
        raise _bad(f"inputs: expected one input, {IMAGE_INPUT} or {PIXELS_INPUT}; got {len(request.inputs)}")
    tensor = request.inputs[0]
    if tensor.name not in (IMAGE_INPUT, PIXELS_INPUT):
        raise _bad(f"inputs[0].name: unknown input {tensor.name!r}; the model takes {IMAGE_INPUT} or {PIXELS_INPUT}")
    outputs, binary_outputs = _requested_outputs(request, signature)
    data = _binary_data(tensor, binary)
    if tensor.name == IMAGE_INPUT:
        return Request(request.id, _image_files(tensor, data, max_images), None, outputs, binary_outputs)
    return Request(request.id, None, _pixels(tensor, data, signature, max_images), outputs, binary_outputs)


def _requested_outputs(request, signature):
    """The outputs to answer, in order, and those of them to answer as binary data."""
    binary_default = (request.parameters or {}).get("binary_data_output") is True
    if not request.outputs:
        names = list(signature.outputs)
        return names, set(names) if binary_default else set()
    names, binary = [], set()
    for i, output in enumerate(request.outputs):
        if output.name not in signature.outputs:
            raise _bad(f"outputs[{i}].name: unknown output {output.name!r}; the model's outputs are "
                       f"{', '.join(signature.outputs)}")
        names.append(output.name)
        if (output.parameters or {}).get("binary_data", binary_default) is True:
            binary.add(output.name)
    return names, binary


def _binary_data(tensor, binary):
    """The input's binary data (a memoryview), or None where it comes as JSON `data`."""
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        if len(binary):
            raise _bad(f"{len(binary)} bytes follow the JSON, but inputs[0] has no parameters.binary_data_size")
        if tensor.data is None:
            raise _bad("inputs[0]: no data (give data, or parameters.binary_data_size and the bytes after the JSON)")
        return None
    if tensor.data is not None:
        raise _bad("inputs[0]: both data and parameters.binary_data_size; give one")
    if type(size) is not int or size != len(binary):
        raise _bad(f"inputs[0].parameters.binary_data_size: {size!r}, but {len(binary)} bytes follow the JSON")
    return binary


def _image_files(tensor, data, max_images):
    """The files of an `image_bytes` input: list of (bytes, "image_bytes[i]")."""
    if tensor.datatype != "BYTES":
        raise _bad(f"inputs[0].datatype: {IMAGE_INPUT} is BYTES (image files), got {tensor.datatype!r}")
    if len(tensor.shape) != 1 or tensor.shape[0] < 1:
        raise _bad(f"inputs[0].shape: {IMAGE_INPUT} has shape [n], n the number of images; got {tensor.shape}")
    count = tensor.shape[0]
    check_image_count(count, max_images)
    if data is not None:
        files = _split_bytes(data, count)
    else:
        if len(tensor.data) != count or not all(isinstance(value, str) for value in tensor.data):
            raise _bad(f"inputs[0].data: expected {count} strings (base64 of image files), as its shape says")
        files = []
        for i, value in enumerate(tensor.data):
            try:
                files.append(base64.b64decode(value, validate=True))
            except ValueError as error:  # binascii.Error, or non-ASCII characters
                raise _bad(f"inputs[0].data[{i}]: not valid base64 ({error})")
    return [(file, f"{IMAGE_INPUT}[{i}]") for i, file in enumerate(files)]


def _split_bytes(data, count):
    """`count` BYTES elements as Triton writes them: each a 4-byte little-endian length, then the bytes."""
    files, offset = [], 0
    for i in range(count):
        if offset + 4 > len(data):
            raise _bad(f"inputs[0]: binary data ends before element {i} of {count}")
        (length,) = struct.unpack_from("<I", data, offset)
        if offset + 4 + length > len(data):
            raise _bad(f"inputs[0]: element {i} says {length} bytes, more than the binary data holds")
        files.append(bytes(data[offset + 4:offset + 4 + length]))
        offset += 4 + length
    if offset != len(data):
        raise _bad(f"inputs[0]: {len(data) - offset} bytes of binary data after the {count} elements of its shape")
    return files


def _pixels(tensor, data, signature, max_images):
    """The (n, size, size, 3) float32 RGB values of a `pixels` input."""
    dtype = PIXEL_TYPES.get(tensor.datatype)
    if dtype is None:
        raise _bad(f"inputs[0].datatype: {PIXELS_INPUT} is FP32 or UINT8, got {tensor.datatype!r}")
    shape = tuple(tensor.shape)
    if len(shape) != 4 or shape[0] < 1 or shape[1:] != signature.pixels_shape:
        raise _bad(f"inputs[0].shape: {PIXELS_INPUT} has shape [n, {', '.join(map(str, signature.pixels_shape))}] "
                   f"(photos at the model's input size); got {list(shape)}")
    check_image_count(shape[0], max_images)
    if data is not None:
        if len(data) != math.prod(shape) * dtype.itemsize:
            raise _bad(f"inputs[0]: {len(data)} bytes of binary data; shape {list(shape)} of {tensor.datatype} needs "
                       f"{math.prod(shape) * dtype.itemsize}")
        pixels = np.frombuffer(data, dtype).reshape(shape)
    else:
        try:
            pixels = np.asarray(tensor.data, np.float64)
        except (TypeError, ValueError):  # strings, objects, ragged nesting
            raise _bad("inputs[0].data: expected numbers, nested evenly or flat") from None
        if pixels.size != math.prod(shape):
            raise _bad(f"inputs[0].data: {pixels.size} values; shape {list(shape)} needs {math.prod(shape)}")
        pixels = pixels.reshape(shape)
    # Not bounded to [0, 255]: a resize (the model's own too) overshoots a little at sharp edges.
    if not np.isfinite(pixels).all():
        raise _bad(f"inputs[0].data: {PIXELS_INPUT} are RGB values on the scale 0-255; found NaN or infinity")
    return pixels.astype(np.float32)


def response(name, version, request, outputs):
    """The answer to an inference request.

    Args:
        name: the model's name.
        version: its version.
        request: the `Request`.
        outputs: one dict {output name: numpy value} per photo, in order.

    Returns:
        (body, extra headers, media type): JSON, or JSON and binary outputs after it.
    """
    tensors, blobs = [], []
    for output in request.outputs:
        values = np.stack([photo[output] for photo in outputs]).astype("<f4")
        tensor = {"name": output, "datatype": OUTPUT_TYPE, "shape": list(values.shape)}
        if output in request.binary:
            blobs.append(values.tobytes())
            tensor["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            tensor["data"] = values.ravel().tolist()
        tensors.append(tensor)
    answer = {"model_name": name, "model_version": str(version), **({"id": request.id} if request.id else {}),
              "outputs": tensors}
    header = json.dumps(answer).encode()
    if not blobs:
        return header, {}, "application/json"
    return header + b"".join(blobs), {BINARY_HEADER: str(len(header))}, "application/octet-stream"
