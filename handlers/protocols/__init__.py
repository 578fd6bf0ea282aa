"""The wire protocols a served zoo model speaks, and how a request body picks one.

- :mod:`.native`: a raw PNG/JPEG body, or a JSON object ``{"task", "image", "latent", "n", "seed"}``;
- :mod:`.kserve_v1`: KServe's protocol v1, ``{"instances": [...]}`` -> ``{"predictions": [...]}``;
- :mod:`.kserve_v2`: KServe's open inference protocol v2, ``{"inputs": [...]}`` -> ``{"outputs": [...]}``.

Each protocol module has ``parse(body, request, spec) -> Parsed`` and
``error(exc) -> Reply``. Parsing turns a body into :class:`~zoo_handlers.inputs.Job`
items and a ``render`` function that builds the reply from their outputs, so the
service batches the jobs of many requests, whatever their protocol, into one
forward pass per task. Nothing here depends on TorchServe: the same code can sit
behind any server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from zoo_handlers.errors import RequestError
from zoo_handlers.images import is_image
from zoo_handlers.inputs import Job, ModelSpec


@dataclass
class Request:
    """One request as a server hands it over: its body (bytes, text or decoded JSON) and two headers."""

    body: Any
    content_type: str | None = None
    accept: str | None = None


@dataclass
class Reply:
    """What to send back: the status, the body and its content type."""

    status: int
    body: bytes | str
    content_type: str = "application/json"


@dataclass
class Parsed:
    """A valid request: its jobs, and how to turn their outputs (one tensor per job) into the reply."""

    jobs: list[Job]
    render: Callable[[list[Any]], Reply]


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def protocol_of(body: Any):
    """The protocol module for a decoded body: ``instances`` means v1, ``inputs`` v2, anything else native."""
    from zoo_handlers.protocols import kserve_v1, kserve_v2, native

    if isinstance(body, dict) and "instances" in body:
        return kserve_v1
    if isinstance(body, dict) and "inputs" in body:
        return kserve_v2
    return native


def parse(request: Request, spec: ModelSpec) -> tuple[Any, Parsed | Reply]:
    """(protocol module, Parsed) for a valid request, or (protocol module, error Reply) for a bad one."""
    from zoo_handlers.protocols import native

    protocol = native
    try:
        body = decode_body(request, spec)
        protocol = protocol_of(body)
        return protocol, protocol.parse(body, request, spec)
    except RequestError as exc:
        return protocol, protocol.error(exc)


def decode_body(request: Request, spec: ModelSpec) -> Any:
    """The body as raw image bytes or decoded JSON, after the size check that comes before any decoding."""
    body = request.body
    if isinstance(body, (bytes, bytearray, str)):
        size = len(body)
        if size == 0:
            raise RequestError("empty request body: send a PNG/JPEG image or a JSON object "
                               f"such as {{\"task\": \"{spec.tasks[0]}\", ...}}")
        if size > spec.body_bytes:
            raise RequestError(f"request body of {size} bytes exceeds this model's limit of {spec.body_bytes}", 413)
    if isinstance(body, (bytes, bytearray)):
        body = bytes(body)
        if is_image(body):
            return body
        content_type = (request.content_type or "").split(";")[0].strip().lower()
        if content_type != "application/json" and body.lstrip()[:1] not in (b"{", b"["):
            raise RequestError("unsupported body: send a PNG or JPEG image, or a JSON object with Content-Type "
                               "application/json", 415)
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("the body is not valid JSON: it is not UTF-8 text") from None
    if isinstance(body, str):
        try:
            return json.loads(body)
        except RecursionError:
            raise RequestError("the body is not valid JSON: nested too deeply") from None
        except ValueError as exc:
            raise RequestError(f"the body is not valid JSON: {exc}") from None
    return body
