"""Optional dependencies: which packages each extra of catsdogs brings, and a clear error without them.

Nothing here imports the packages themselves, so checking is cheap and says what is missing
before any work starts.
"""

import importlib.util

from catsdogs.errors import MissingDependency

# extra -> (import name, PyPI name) of each package; pyproject.toml's optional-dependencies install them.
EXTRAS = {
    "serve": [("fastapi", "fastapi"), ("fastapi_offline", "fastapi-offline"), ("uvicorn", "uvicorn"),
              ("python_multipart", "python-multipart")],
    "onnx": [("tf2onnx", "tf2onnx"), ("onnxruntime", "onnxruntime")],
    "tflite": [("ai_edge_litert", "ai-edge-litert")],
    "ray": [("ray", "ray[data]"), ("pyarrow", "pyarrow"), ("grpc_reflection", "ray[serve]")],
    "mlflow": [("mlflow", "mlflow")],
}


def require(extra, needed_for):
    """Checks that the packages of an extra are installed.

    Args:
        extra: a key of EXTRAS.
        needed_for: what needs them, for the message ("serving", "the onnx format").

    Raises:
        MissingDependency: naming every missing package and the pip command that installs it.
    """
    missing = [package for module, package in EXTRAS[extra] if importlib.util.find_spec(module) is None]
    if missing:
        raise MissingDependency(f"{needed_for} needs {' and '.join(missing)}, which "
                                f"{'is' if len(missing) == 1 else 'are'} not installed. Install with: "
                                f"pip install \"catsdogs[{extra}]\"  (or: pip install {' '.join(missing)})")
