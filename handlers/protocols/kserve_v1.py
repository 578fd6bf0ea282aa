"""KServe protocol v1: ``{"instances": [...]}`` -> ``{"predictions": [one object per instance]}``.

An instance is a base64 PNG/JPEG string, ``{"data": b64}`` or ``{"b64": b64}`` (optionally with a
``"task"``), a pixel array in [0, 1] shaped (C, H, W), (H, W) or flat, or a native JSON object such
as ``{"task": "sample", "n": 2}``. Bare images and pixel arrays run the model's default task. Each
prediction is the native reply object for its instance (so a calibrated anomaly score comes as
``{"model", "task", "scalar", "anomalous", "threshold"}``, as in the native protocol). Any bad instance fails the whole request
with its 4xx and ``{"error": message}``.
"""

from __future__ import annotations

from typing import Any

from zoo_handlers.errors import RequestError, names
from zoo_handlers.inputs import Job, ModelSpec
from zoo_handlers.protocols import Parsed, Reply, Request, dumps, native

_IMAGE_KEYS = ("data", "b64")


def parse(body: dict, request: Request, spec: ModelSpec) -> Parsed:
    unknown = [k for k in body if k != "instances"]
    if unknown:
        raise RequestError(f"a v1 request has only \"instances\"; unknown field(s) {names(unknown)}")
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise RequestError("\"instances\" must be a non-empty list")
    if len(instances) > spec.options.max_items:
        raise RequestError(f"{len(instances)} instances are more than this model's limit of "
                           f"{spec.options.max_items} per request", 413)
    jobs = [instance_job(instance, f"instances[{i}]", spec) for i, instance in enumerate(instances)]

    def render(outputs: list[Any]) -> Reply:
        return Reply(200, dumps({"predictions": [native.reply_object(spec, job, out)
                                                 for job, out in zip(jobs, outputs)]}))

    return Parsed(jobs, render)


def instance_job(instance: Any, what: str, spec: ModelSpec) -> Job:
    if isinstance(instance, str):
        return Job(spec.image_task(), spec.image_base64(instance, what))
    if isinstance(instance, list):
        return Job(spec.image_task(), spec.pixels(instance, what))
    if not isinstance(instance, dict):
        raise RequestError(f"{what} must be a base64 image, a pixel array or an object, got {type(instance).__name__}")
    keys = [k for k in _IMAGE_KEYS if k in instance]
    if not keys:
        return native.object_job(instance, spec, what)
    extra = [k for k in instance if k not in (keys[0], "task")]
    if len(keys) > 1 or extra:
        raise RequestError(f"{what} with {keys[0]!r} may only add \"task\", not {names(keys[1:] + extra)}")
    task = spec.image_task(instance.get("task"))
    value = instance[keys[0]]
    where = f"{what}.{keys[0]}"
    return Job(task, spec.pixels(value, where) if isinstance(value, list) else spec.image_base64(value, where))


def error(exc: RequestError) -> Reply:
    return Reply(exc.code, dumps({"error": exc.message}))
