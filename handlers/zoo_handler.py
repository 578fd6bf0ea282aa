"""The TorchServe handler for every ae-zoo model. This file defines exactly one class.

TorchServe imports this file from the unpacked ``.mar``; the archive root is on
``sys.path`` and holds the zoo core (``zoo``), the plugin package(s) providing
the architecture and this package (``zoo_handlers``), so the handler needs no
ae-zoo installation. All the work happens in :mod:`zoo_handlers.service`.
"""

import logging

from zoo_handlers.service import ZooService

logger = logging.getLogger(__name__)


class ZooHandler:
    """Serves any zoo model: the tasks it declares, batched, with per-request 4xx for bad input."""

    def __init__(self):
        self.service = None
        self.initialized = False

    def initialize(self, context):
        properties = context.system_properties
        self.service = ZooService.from_model_dir(
            properties["model_dir"],
            gpu_id=properties.get("gpu_id"),
            yaml_config=getattr(context, "model_yaml_config", None) or {},
            name=getattr(context, "model_name", None),
        )
        import zoo

        logger.info("zoo model %s ready on %s with tasks %s; zoo core from %s", self.service.name,
                    self.service.device, ", ".join(self.service.tasks), zoo.__file__)
        self.initialized = True

    def handle(self, data, context):
        if not data:
            return []
        return self.service.handle(data, context)
