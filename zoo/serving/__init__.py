"""Serving zoo models with TorchServe: packaging, server lifecycle and a client.

Nothing here imports click, tqdm or huggingface_hub at module level.
"""

from zoo.serving.package import RUNTIME_REQUIREMENTS, PackageOptions, ServingError, package, write_kserve

__all__ = ["RUNTIME_REQUIREMENTS", "PackageOptions", "ServingError", "package", "write_kserve"]
