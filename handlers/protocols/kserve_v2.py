"""KServe's open inference protocol v2 (REST/JSON): ``{"inputs": [...]}`` -> ``{"outputs": [...]}``.

The task and, for sampling, ``seed`` and ``n`` come from the request's ``parameters``; without a
task the model's default task runs. One input carries the values, by the task's input kind:

- images: ``BYTES`` base64 PNG/JPEG strings shaped ``[N]`` (or ``[-1]``), or ``FP32``/``FP64``/``FP16``
  values in [0, 1] or ``UINT8`` values shaped ``[N, C, H, W]``, ``[N, H, W]`` (one channel) or
  ``[N, C*H*W]``;
- latents: floats shaped ``[N, D]`` (or ``[D]``);
- counts: an integer tensor ``[1]`` holding ``n``, or no input at all and ``parameters.n``.

The one output is named after the task and keeps shapes: images ``FP32 [N, C, H, W]`` (``BYTES [N]``
PNGs when they came as BYTES), vectors ``FP32 [N, D]``, scalars ``FP32 [N]``. A scalar task with a
calibrated threshold (``anomaly.json`` in the archive) adds a second output, ``anomalous``: ``BOOL [N]``
verdicts (score above the threshold, or not finite), with ``parameters: {"threshold": t}``; a request's
``outputs`` may ask for either or both. Errors:
``{"error": message}`` with the request's 4xx.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import torch

from zoo_handlers.errors import RequestError, names, short
from zoo_handlers.images import encode_png
from zoo_handlers.inputs import Job, ModelSpec, flatten, is_int
from zoo_handlers.protocols import Parsed, Reply, Request, dumps, native

FIELDS = ("id", "parameters", "inputs", "outputs")
PARAMETERS = ("task", "seed", "n")
INPUT_FIELDS = ("name", "shape", "datatype", "data", "parameters")
FLOAT_TYPES = ("FP32", "FP64", "FP16")
INT_TYPES = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
MAX_ID = 256
#: The extra output of a scalar task with a calibrated threshold (``anomaly.json``): one verdict per item.
VERDICT_OUTPUT = "anomalous"


def parse(body: dict, request: Request, spec: ModelSpec) -> Parsed:
    unknown = [k for k in body if k not in FIELDS]
    if unknown:
        raise RequestError(f"unknown field(s) {names(unknown)} in a v2 request; allowed: {', '.join(FIELDS)}")
    request_id = body.get("id")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > MAX_ID):
        raise RequestError(f"\"id\" must be a string of at most {MAX_ID} characters")
    parameters = _parameters(body.get("parameters"))
    task = spec.task(parameters.get("task"))
    kind = spec.input_kind(task)
    if kind != "count" and ({"seed", "n"} & set(parameters)):
        raise RequestError(f"parameters {names(sorted({'seed', 'n'} & set(parameters)))} apply only to sampling, "
                           f"not to {task!r}")
    inputs = body["inputs"]
    if not isinstance(inputs, list):
        raise RequestError("\"inputs\" must be a list of tensors")
    if kind == "count":
        jobs, as_bytes = [Job(task, _count(inputs, parameters, spec), seed=spec.seed(parameters.get("seed"),
                                                                                      'parameters "seed"'))], False
    else:
        if len(inputs) != 1:
            raise RequestError(f"task {task!r} takes exactly one input tensor, got {len(inputs)}")
        tensor = _tensor(inputs[0])
        if kind == "image":
            values, as_bytes = _images(tensor, spec), tensor["datatype"] == "BYTES"
        else:
            values, as_bytes = _latents(tensor, spec), False
        jobs = [Job(task, value) for value in values]
    wanted = _check_requested_outputs(body.get("outputs"), task, spec)
    reply_id = request_id if request_id is not None else uuid.uuid4().hex

    def render(outputs: list[torch.Tensor]) -> Reply:
        batch = outputs[0] if kind == "count" else torch.stack(outputs)
        tensors = [_output(task, spec.output_kind(task), batch, as_bytes)]
        threshold = spec.threshold(task)
        if threshold is not None:
            tensors.append(_verdicts(batch, threshold, spec))
        if wanted is not None:
            tensors = [t for t in tensors if t["name"] in wanted]
        return Reply(200, dumps({"model_name": spec.name, "model_version": spec.version, "id": reply_id,
                                 "outputs": tensors}))

    return Parsed(jobs, render)


def error(exc: RequestError) -> Reply:
    return Reply(exc.code, dumps({"error": exc.message}))


# Requests ---------------------------------------------------------------------------------------


def _parameters(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError("\"parameters\" must be an object")
    unknown = [k for k in value if k not in PARAMETERS]
    if unknown:
        raise RequestError(f"unknown parameter(s) {names(unknown)}; allowed: {', '.join(PARAMETERS)}")
    return value


def _tensor(value: Any) -> dict[str, Any]:
    """One input tensor, checked: name, a shape of non-negative ints (one -1 allowed), datatype, data."""
    if not isinstance(value, dict):
        raise RequestError("each input must be an object with name, shape, datatype and data")
    unknown = [k for k in value if k not in INPUT_FIELDS]
    missing = [k for k in ("name", "shape", "datatype", "data") if k not in value]
    if unknown or missing:
        raise RequestError("input tensor: " + (f"unknown field(s) {names(unknown)} " if unknown else "")
                           + (f"missing {', '.join(missing)}" if missing else ""))
    shape, datatype = value["shape"], value["datatype"]
    if not isinstance(value["name"], str):
        raise RequestError("input \"name\" must be a string")
    if not isinstance(shape, list) or not shape or not all(is_int(d) and d >= -1 for d in shape) \
            or shape.count(-1) > 1:
        raise RequestError(f"input \"shape\" must be a non-empty list of sizes (at most one -1), got {short(shape)}")
    if datatype not in ("BYTES", *FLOAT_TYPES, *INT_TYPES):
        raise RequestError(f"input datatype {short(datatype)} is not supported; use BYTES, FP32, FP64, FP16 or "
                           "UINT8 (integers for a count)")
    if value.get("parameters") is not None and not isinstance(value["parameters"], dict):
        raise RequestError("input \"parameters\" must be an object")
    flat, _ = flatten(value["data"], "input \"data\"") if value["data"] != [] else ([], [0])
    known = math.prod(d for d in shape if d != -1)
    if (-1 in shape and (known == 0 or len(flat) % known)) or (-1 not in shape and len(flat) != known):
        raise RequestError(f"input shape {shape} does not fit its {len(flat)} data value(s)")
    if -1 in shape:
        shape = [len(flat) // known if d == -1 else d for d in shape]
    return {**value, "shape": shape, "data": flat}


def _images(tensor: dict[str, Any], spec: ModelSpec) -> list[torch.Tensor]:
    shape, datatype, data = tensor["shape"], tensor["datatype"], tensor["data"]
    n = shape[0]
    _check_count(n, spec)
    if datatype == "BYTES":
        if len(shape) != 1:
            raise RequestError(f"BYTES images must be shaped [N], got {shape}")
        return [spec.image_base64(item, f"input data[{i}]") for i, item in enumerate(data)]
    c, h, w = spec.input_shape
    forms = [[n, c, h, w], [n, c * h * w]] + ([[n, h, w]] if c == 1 else [])
    if shape not in forms:
        raise RequestError(f"image tensor shape {shape} does not fit this model; use one of "
                           + ", ".join(str(f).replace(str(n), "N", 1) for f in forms))
    if datatype == "UINT8":
        if any(not is_int(v) or not 0 <= v <= 255 for v in data):
            raise RequestError("UINT8 image data must be integers from 0 to 255")
        values = torch.tensor(data, dtype=torch.float32) / 255.0
    elif datatype in FLOAT_TYPES:
        values = spec.unit_values(data, "input data")
    else:
        raise RequestError(f"images come as BYTES, FP32, FP64, FP16 or UINT8, not {datatype}")
    return list(values.view(n, c, h, w))


def _latents(tensor: dict[str, Any], spec: ModelSpec) -> list[torch.Tensor]:
    shape, datatype, data = tensor["shape"], tensor["datatype"], tensor["data"]
    d = spec.latent_dim
    if d is None:
        raise RequestError(f"model {spec.name!r} has no latent space")
    if datatype not in FLOAT_TYPES:
        raise RequestError(f"latents come as FP32, FP64 or FP16, not {datatype}")
    if shape == [d]:
        shape = [1, d]
    if len(shape) != 2 or shape[1] != d:
        raise RequestError(f"latent tensor shape {shape} does not fit this model; use [N, {d}]")
    _check_count(shape[0], spec)
    return list(spec.latent_values(data, "input data").view(shape[0], d))


def _count(inputs: list, parameters: dict[str, Any], spec: ModelSpec) -> int:
    if not inputs:
        return spec.count(parameters.get("n", 1), 'parameters "n"')
    if len(inputs) != 1 or "n" in parameters:
        raise RequestError("give the sample count once: as parameters \"n\" or as one integer input of shape [1]")
    tensor = _tensor(inputs[0])
    if tensor["datatype"] not in INT_TYPES or tensor["shape"] != [1]:
        raise RequestError(f"the sample count must be an integer tensor of shape [1], got {tensor['datatype']} "
                           f"{tensor['shape']}")
    return spec.count(tensor["data"][0], "the sample count")


def _check_count(n: int, spec: ModelSpec) -> None:
    if n < 1:
        raise RequestError("the input tensor holds no items")
    if n > spec.options.max_items:
        raise RequestError(f"{n} items are more than this model's limit of {spec.options.max_items} per request", 413)


def _check_requested_outputs(value: Any, task: str, spec: ModelSpec) -> set[str] | None:
    """The names of the outputs the request asks for (None: all of them), each one the task has."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in value):
        raise RequestError("\"outputs\" must be a list of objects with a \"name\"")
    available = [task] + ([VERDICT_OUTPUT] if spec.threshold(task) is not None else [])
    wrong = [o["name"] for o in value if o["name"] not in available]
    if wrong:
        has = f"one output, {task!r}" if len(available) == 1 else f"the outputs {names(available)}"
        raise RequestError(f"unknown output(s) {names(wrong)}; task {task!r} has {has}")
    return {o["name"] for o in value} if value else None


# Replies ----------------------------------------------------------------------------------------


def _verdicts(batch: torch.Tensor, threshold: float, spec: ModelSpec) -> dict[str, Any]:
    """The BOOL output of a calibrated scalar task: each score above the threshold (or not finite)."""
    scores = batch.reshape(len(batch)).tolist()
    return {"name": VERDICT_OUTPUT, "shape": [len(scores)], "datatype": "BOOL",
            "data": [spec.anomalous(s, threshold) for s in scores], "parameters": {"threshold": threshold}}


def _output(task: str, kind: str, batch: torch.Tensor, as_bytes: bool) -> dict[str, Any]:
    if kind == "image" and as_bytes:
        return {"name": task, "shape": [len(batch)], "datatype": "BYTES", "data": [encode_png(i) for i in batch]}
    if kind == "vector":
        batch = batch.reshape(len(batch), -1)
    elif kind == "scalar":
        batch = batch.reshape(len(batch))
    return {"name": task, "shape": list(batch.shape), "datatype": "FP32", "data": native.floats(batch.flatten())}
