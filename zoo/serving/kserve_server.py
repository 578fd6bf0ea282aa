"""Entry point of the KServe model server for a zoo model: ``python -m zoo.serving.kserve_server``.

It takes KServe's own arguments (``--model_name``, ``--http_port``, ``--grpc_port``,
``--enable_grpc``, ...) plus ``--model_dir`` (a registered name, checkpoint
folder, ``hf://`` id or ``.mar`` archive; in a cluster, the storageUri mounted
at ``/mnt/models``), ``--host`` and the batching options. ``zoo serve --engine
kserve`` runs this module on 127.0.0.1; a container runs it on 0.0.0.0.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import zipfile
from pathlib import Path

import grpc
import kserve
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve import model_server
from kserve.errors import InvalidInput
from kserve.protocol.model_repository_extension import ModelRepositoryExtension

from zoo.serving.kserve_model import RequestRejected, ZooKServeModel
from zoo_handlers.errors import clean

logger = logging.getLogger(__name__)


def load_service(model_dir: str, name: str):
    """A :class:`ZooService` for a registered name, a checkpoint folder, an ``hf://`` id or a ``.mar``.

    A folder that holds no checkpoint but exactly one ``.mar`` (a storageUri with an archive) serves that archive.
    """
    from zoo_handlers.service import ZooService, select_device

    folder = Path(model_dir)
    archives = sorted(folder.glob("*.mar")) if folder.is_dir() and not (folder / "config.json").exists() else []
    if len(archives) == 1:
        model_dir = str(archives[0])
    if str(model_dir).endswith(".mar") and Path(model_dir).is_file():
        unpacked = Path(tempfile.mkdtemp(prefix="zoo-kserve-"))
        with zipfile.ZipFile(model_dir) as archive:
            archive.extractall(unpacked)
        # Last on the path: installed packages win, and a plugin that is only in the archive is still found.
        sys.path.append(str(unpacked))
        return ZooService.from_model_dir(unpacked, gpu_id=0, name=name)
    import zoo
    from zoo.anomaly import load_calibration
    from zoo.api import checkpoint_folder

    device = select_device(0)
    folder = checkpoint_folder(model_dir)
    return ZooService(zoo.load(folder, device=device), device, name=name, calibration=load_calibration(folder))


def bind_to(host: str) -> None:
    """Make KServe 0.21 listen on ``host``: it binds REST to 0.0.0.0 and gRPC to [::] unconditionally."""
    rest_server = model_server.RESTServer

    class HostRESTServer(rest_server):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.config.host = host

    model_server.RESTServer = HostRESTServer
    make_server = grpc.aio.server

    def server_on_host(*args, **kwargs):
        server = make_server(*args, **kwargs)
        add_port = server.add_insecure_port
        server.add_insecure_port = lambda address: add_port(address.replace("[::]", host, 1))
        return server

    grpc.aio.server = server_on_host


async def _rejected(_, exc: RequestRejected) -> JSONResponse:
    return JSONResponse(status_code=exc.status, content={"error": exc.message})


async def _invalid(_, exc: RequestValidationError) -> JSONResponse:
    """KServe's v2 schema errors, as a short ``{"error": ...}`` that does not echo the client's values."""
    problems = [f"{'.'.join(str(p) for p in e.get('loc', ())[2:]) or 'body'}: {e.get('msg')}" for e in exc.errors()[:3]]
    return JSONResponse(status_code=422, content={"error": clean("invalid v2 request: " + "; ".join(problems))})


class RepositoryDisabled(InvalidInput):
    """Loading or unloading through the model-repository API, which a zoo server refuses (REST 403)."""


class FixedModelRepository(ModelRepositoryExtension):
    """The repository API of a server that serves one fixed model: it lists the model, never (un)loads it.

    KServe's server has no authorization, so otherwise any client that reaches it could unload
    the model over REST (``/v2/repository/models/NAME/unload``) or gRPC.
    """

    async def load(self, model_name: str):
        raise RepositoryDisabled("the model repository API is disabled: this server serves one fixed model")

    async def unload(self, model_name: str):
        raise RepositoryDisabled("the model repository API is disabled: this server serves one fixed model")


async def _disabled(_, exc: RepositoryDisabled) -> JSONResponse:
    return JSONResponse(status_code=403, content={"error": str(exc)})


def limit_bodies(limit: int) -> None:
    """Refuse REST bodies over ``limit`` bytes (413) before KServe reads or parses them, and gRPC messages too.

    KServe's server has no size limit of its own: without this a huge JSON body would be parsed whole.
    """
    @model_server.app.middleware("http")
    async def check_length(request, call_next):
        if request.method in ("POST", "PUT"):
            length = request.headers.get("content-length")
            if length is None:
                return JSONResponse(status_code=411, content={"error": "send a Content-Length header"})
            if not length.isdigit() or int(length) > limit:
                return JSONResponse(status_code=413, content={
                    "error": f"request body of {length[:20]} bytes exceeds this model's limit of {limit}"})
        return await call_next(request)

    model_server.args.grpc_max_receive_message_length = limit


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(parents=[model_server.parser], description=__doc__.split("\n\n")[0])
    p.add_argument("--model_dir", required=True, help="registered name, checkpoint folder, hf:// id or .mar")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (zoo serve uses 127.0.0.1)")
    p.add_argument("--max_batch_size", type=int, default=8, help="requests answered in one batch at most")
    p.add_argument("--max_batch_delay_ms", type=float, default=5.0, help="how long a batch waits to fill")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    name = args.model_name or Path(str(args.model_dir)).stem
    service = load_service(args.model_dir, name)
    bind_to(args.host)
    limit_bodies(service.spec.body_bytes)
    model_server.app.add_exception_handler(RequestRejected, _rejected)
    model_server.app.add_exception_handler(RequestValidationError, _invalid)
    model_server.app.add_exception_handler(RepositoryDisabled, _disabled)
    model = ZooKServeModel(name, service, args.max_batch_size, args.max_batch_delay_ms / 1000)
    logger.info("zoo model %s (%s) ready on %s", name, ", ".join(service.tasks), service.device)
    server = kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, enable_grpc=args.enable_grpc,
                                workers=1)
    server.model_repository_extension = FixedModelRepository(model_registry=server.registered_models)
    server.start([model])


if __name__ == "__main__":
    main()
