"""The optional ONNX packages, imported only when an export runs."""

import importlib
from types import ModuleType

from zoo.export.errors import ONNX_INSTALL_HINT, MissingExtraError

ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


def require_onnx() -> dict[str, ModuleType]:
    """Import onnx, onnxscript and onnxruntime, or raise MissingExtraError saying how to install them."""
    modules = {}
    for name in ONNX_PACKAGES:
        try:
            modules[name] = importlib.import_module(name)
        except ImportError as exc:
            raise MissingExtraError(f"ONNX export needs the {name!r} package, which is not installed "
                                    f"({exc}): {ONNX_INSTALL_HINT}") from None
    return modules
