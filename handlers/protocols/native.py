"""The native protocol: a raw PNG/JPEG body runs the default task; a JSON object names the task.

Request: image bytes, or ``{"task": ..., "image": <base64>}`` / ``{"task": ..., "latent": [...]}`` /
``{"task": ..., "n": ..., "seed": ...}``, by the task's input kind. Reply: ``{"model", "task"}`` plus
``image`` (base64 PNG), ``images`` (several, for a count), ``vector`` or ``scalar``; a scalar task with a
calibrated threshold (``anomaly.json`` in the archive) adds ``anomalous`` (true when the score is above the
threshold or not finite) and ``threshold``. With
``Accept: image/png`` a single-image reply comes back as the PNG itself, without base64 or JSON.
Errors: ``{"code", "type", "message"}``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from zoo_handlers.errors import RequestError, names
from zoo_handlers.images import encode_png, png_bytes
from zoo_handlers.inputs import Job, ModelSpec
from zoo_handlers.protocols import Parsed, Reply, Request, dumps

FIELDS = ("task", "image", "latent", "n", "seed")
_INPUT_FIELDS = {"image": {"image"}, "latent": {"latent"}, "count": {"n", "seed"}}


def parse(body: Any, request: Request, spec: ModelSpec) -> Parsed:
    if isinstance(body, bytes):
        job = Job(spec.image_task(), spec.image(body))
    elif isinstance(body, dict):
        job = object_job(body, spec)
    else:
        raise RequestError(f"a JSON request must be an object with fields {', '.join(FIELDS)}; "
                           f"got {type(body).__name__}")
    as_png = wants_png(request.accept)

    def render(outputs: list[torch.Tensor]) -> Reply:
        if as_png:
            return png_reply(spec, job, outputs[0])
        return Reply(200, dumps(reply_object(spec, job, outputs[0])))

    return Parsed([job], render)


def object_job(body: dict, spec: ModelSpec, what: str = "the request") -> Job:
    """A job from a native JSON object (also what a KServe v1 instance may be)."""
    unknown = [k for k in body if k not in FIELDS]
    if unknown:
        raise RequestError(f"{what} has unknown field(s) {names(unknown)}; allowed fields: {', '.join(FIELDS)}")
    task = spec.task(body.get("task"))
    kind = spec.input_kind(task)
    extra = [k for k in body if k != "task" and k not in _INPUT_FIELDS[kind]]
    if extra:
        raise RequestError(f"task {task!r} takes {' and '.join(sorted(_INPUT_FIELDS[kind]))}, not {names(extra)}")
    if kind == "image":
        return Job(task, spec.image_base64(body.get("image")))
    if kind == "latent":
        return Job(task, spec.latent(body.get("latent")))
    return Job(task, spec.count(body.get("n", 1)), seed=spec.seed(body.get("seed")))


def reply_object(spec: ModelSpec, job: Job, output: torch.Tensor) -> dict[str, Any]:
    """The native reply for one job's output."""
    kind = spec.output_kind(job.task)
    reply: dict[str, Any] = {"model": spec.name, "task": job.task}
    if kind == "image" and spec.input_kind(job.task) == "count":
        reply["images"] = [encode_png(image) for image in output]
    elif kind == "image":
        reply["image"] = encode_png(output)
    elif kind == "vector":
        reply["vector"] = floats(output.flatten())
    else:
        score = output.reshape(1)
        reply["scalar"] = floats(score)[0]
        threshold = spec.threshold(job.task)
        if threshold is not None:
            reply["anomalous"] = spec.anomalous(float(score[0]), threshold)
            reply["threshold"] = threshold
    if kind == "image":
        reply["content_type"] = "image/png"
    return reply


def wants_png(accept: str | None) -> bool:
    """Whether the client's first choice in ``Accept`` is ``image/png``."""
    first = (accept or "").split(",")[0].split(";")[0].strip().lower()
    return first == "image/png"


def png_reply(spec: ModelSpec, job: Job, output: torch.Tensor) -> Reply:
    images = output if spec.input_kind(job.task) == "count" else output.unsqueeze(0)
    if spec.output_kind(job.task) != "image" or len(images) != 1:
        what = "no image" if spec.output_kind(job.task) != "image" else f"{len(images)} images"
        return error(RequestError(f"Accept: image/png needs a reply of one image, but {job.task!r} gives {what}; "
                                  "accept application/json instead", 406))
    return Reply(200, png_bytes(images[0]), "image/png")


def error(exc: RequestError) -> Reply:
    return Reply(exc.code, dumps({"code": exc.code, "type": exc.phrase, "message": exc.message}))


def floats(t: torch.Tensor) -> list[float | None]:
    """Tensor values as JSON numbers; NaN and infinities become null."""
    return [v if math.isfinite(v) else None for v in t.tolist()]
