"""Export zoo models for servers that run without PyTorch: one ONNX graph per task, plus a manifest.

``zoo export NAME --format onnx --out DIR`` calls :func:`export_onnx`. The
``onnx`` extra (``pip install 'ae-zoo[onnx]'``) is imported only when an export runs.
"""

from zoo.export.errors import ExportError, MissingExtraError
from zoo.export.exporter import export_onnx
from zoo.export.manifest import MANIFEST_NAME

__all__ = ["MANIFEST_NAME", "ExportError", "MissingExtraError", "export_onnx"]
