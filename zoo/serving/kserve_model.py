"""A zoo model behind KServe's own model server (``kserve.Model``), with the TorchServe handler's wire formats.

The model hands every request to :class:`zoo_handlers.service.ZooService`, the
same code TorchServe runs: v1 ``{"instances": ...}``, v2 and native bodies are
parsed, batched and answered by :mod:`zoo_handlers.protocols`, so both servers
accept and return exactly the same things. KServe parses v2 bodies (REST and
gRPC) into an ``InferRequest`` first; :func:`v2_body` turns that back into the
v2 JSON the protocol reads, and :func:`v2_response` the reply into an
``InferResponse``. Requests arriving together are answered in micro-batches
(:class:`Batcher`), one forward pass per task, like TorchServe's batching.
"""

from __future__ import annotations

import asyncio
import base64
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kserve
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse, to_http_parameters

from zoo_handlers.images import is_image
from zoo_handlers.protocols import Reply, Request
from zoo_handlers.service import ZooService


class RequestRejected(InvalidInput):
    """A request the protocol refused: its own status (400, 413, 415, 406) and ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Batcher:
    """Collects requests for up to ``max_delay`` seconds (or ``max_batch`` of them) and answers them together.

    The service runs in one worker thread, so the event loop keeps accepting requests meanwhile.
    """

    def __init__(self, service: ZooService, max_batch: int = 8, max_delay: float = 0.005):
        self.service = service
        self.max_batch = max_batch
        self.max_delay = max_delay
        self._queue: asyncio.Queue | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zoo-batch")

    async def answer(self, request: Request) -> Reply:
        if self._queue is None:
            self._queue = asyncio.Queue()
            asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((request, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_delay
            while len(batch) < self.max_batch and (left := deadline - loop.time()) > 0:
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:
                    break
            try:
                replies = await loop.run_in_executor(self._executor, self.service.answer, [r for r, _ in batch])
            except Exception as exc:  # the service answers bad input itself; this is a server fault
                replies = [exc] * len(batch)
            for (_, future), reply in zip(batch, replies):
                if not future.done():
                    future.set_exception(reply) if isinstance(reply, Exception) else future.set_result(reply)


class ZooKServeModel(kserve.Model):
    """Serves one zoo model on KServe's model server: protocol v1, v2 (REST and gRPC) and the native bodies."""

    def __init__(self, name: str, service: ZooService, max_batch: int = 8, max_delay: float = 0.005):
        super().__init__(name)
        self.service = service
        self.batcher = Batcher(service, max_batch, max_delay)
        self.ready = True

    def load(self) -> bool:
        self.ready = True
        return self.ready

    async def predict(self, payload: Any, headers: dict[str, str] | None = None, response_headers=None):
        headers = {k.lower(): v for k, v in (headers or {}).items()}
        if isinstance(payload, InferRequest):
            reply = await self.batcher.answer(Request(json.dumps(v2_body(payload)).encode(), "application/json"))
            _raise_for(reply)
            return v2_response(json.loads(reply.body), grpc=payload.from_grpc)
        reply = await self.batcher.answer(Request(payload, headers.get("content-type"), headers.get("accept")))
        _raise_for(reply)
        return json.loads(reply.body) if reply.content_type == "application/json" else reply.body

    # Metadata (GET /v2/models/NAME): one input per input kind, one output per declared task.

    def get_input_types(self) -> list[dict]:
        spec = self.service.spec
        kinds = {spec.input_kind(t) for t in spec.tasks}
        c, h, w = spec.input_shape
        types = {"image": {"name": "image", "datatype": "FP32", "shape": [-1, c, h, w]},
                 "latent": {"name": "latent", "datatype": "FP32", "shape": [-1, spec.latent_dim or 0]},
                 "count": {"name": "n", "datatype": "INT64", "shape": [1]}}
        return [types[k] for k in ("image", "latent", "count") if k in kinds]

    def get_output_types(self) -> list[dict]:
        types = [{"name": task, "datatype": "FP32", "shape": [-1]} for task in self.service.spec.tasks]
        if self.service.calibration is not None:  # anomaly-score replies also carry the verdict
            types.append({"name": "anomalous", "datatype": "BOOL", "shape": [-1]})
        return types


def v2_body(request: InferRequest) -> dict[str, Any]:
    """The v2 JSON of a parsed ``InferRequest`` (REST or gRPC), as :mod:`zoo_handlers.protocols.kserve_v2` reads it."""
    parameters = request.parameters
    if parameters and request.from_grpc:
        parameters = to_http_parameters(parameters)
    body: dict[str, Any] = {"inputs": [{"name": i.name, "shape": list(i.shape), "datatype": i.datatype,
                                        "data": _values(i)} for i in request.inputs]}
    if request.id:
        body["id"] = request.id
    if parameters:
        body["parameters"] = dict(parameters)
    if request.request_outputs:
        body["outputs"] = [{"name": o.name} for o in request.request_outputs]
    return body


def _values(tensor) -> list:
    """A tensor's values as JSON numbers, or for BYTES as base64 strings (gRPC sends the PNG bytes themselves)."""
    values = tensor.as_numpy().flatten().tolist()
    if tensor.datatype != "BYTES":
        return values
    text = []
    for v in values:
        if isinstance(v, bytes):
            v = base64.b64encode(v).decode("ascii") if is_image(v) else v.decode("ascii", "replace")
        text.append(v)
    return text


def v2_response(reply: dict[str, Any], grpc: bool) -> InferResponse:
    """The ``InferResponse`` for a v2 reply; BYTES outputs go out as PNG bytes over gRPC, base64 text over REST."""
    outputs = []
    for out in reply["outputs"]:
        data = out["data"]
        if out["datatype"] == "BYTES" and grpc:
            data = [base64.b64decode(d) for d in data]
        outputs.append(InferOutput(name=out["name"], shape=out["shape"], datatype=out["datatype"], data=data,
                                   parameters=out.get("parameters")))
    return InferResponse(response_id=reply["id"], model_name=reply["model_name"], model_version=reply["model_version"],
                         infer_outputs=outputs, from_grpc=grpc)


def _raise_for(reply: Reply) -> None:
    if reply.status != 200:
        body = json.loads(reply.body)
        raise RequestRejected(reply.status, body.get("error") or body.get("message") or "bad request")
