"""The TorchServe handler for every ae-zoo model. This file defines exactly one class.

TorchServe imports this file from the unpacked ``.mar``; the archive root is on
``sys.path`` and holds the zoo core (``zoo``), the plugin package(s) providing
the architecture and this package (``zoo_handlers``), so the handler needs no
ae-zoo installation. The service (:mod:`zoo_handlers.service`) does the work;
this class only translates between TorchServe's batch and the service's
requests and replies. It recognises KServe bodies itself (``instances``: v1,
``inputs``: v2), so it needs no TorchServe request envelope.
"""

import logging

from zoo_handlers.errors import PHRASES
from zoo_handlers.protocols import Request
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
            version=((getattr(context, "manifest", None) or {}).get("model") or {}).get("modelVersion"),
        )
        import zoo

        logger.info("zoo model %s ready on %s with tasks %s; zoo core from %s", self.service.name,
                    self.service.device, ", ".join(self.service.tasks), zoo.__file__)
        self.initialized = True

    def handle(self, data, context):
        if not data:
            return []
        requests = [Request(_body(row), _header(context, i, "content-type"), _header(context, i, "accept"))
                    for i, row in enumerate(data)]
        replies = self.service.answer(requests)
        for i, reply in enumerate(replies):
            if context is None:
                continue
            if reply.status != 200:  # only ever on TorchServe's own index of this request
                context.set_response_status(reply.status, PHRASES.get(reply.status, "Bad Request"), idx=i)
            context.set_response_content_type(i, reply.content_type)
        return [reply.body for reply in replies]


def _body(row):
    """The request body from a TorchServe row: ``body`` or ``data``, else the first value present."""
    if not isinstance(row, dict):
        return row
    for key in ("body", "data"):
        if row.get(key) is not None:
            return row[key]
    values = [v for v in row.values() if v is not None]
    return values[0] if values else b""


def _header(context, idx, name):
    """A request header by case-insensitive name (for the content type, also the body part's own)."""
    if context is None:
        return None
    try:
        headers = context.get_all_request_header(idx) or {}
    except (AttributeError, IndexError, KeyError):
        return None
    for key in ("body", "data"):
        part = headers.get(key)
        if name == "content-type" and isinstance(part, dict) and part.get("content-type"):
            return part["content-type"]
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name and isinstance(value, str):
            return value
    return None
