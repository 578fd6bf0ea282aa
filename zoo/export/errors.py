"""Errors of the export path. They live here, beside the code that raises them."""

from zoo.errors import ZooError

ONNX_INSTALL_HINT = "pip install 'ae-zoo[onnx]'"


class ExportError(ZooError):
    """A model, or one of its tasks, cannot be exported; the message names the task and the cause."""


class MissingExtraError(ExportError):
    """An optional dependency the export needs (onnx, onnxscript, onnxruntime) is not installed."""
