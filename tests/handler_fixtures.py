"""The handler in process, with TorchServe's own Context: a packaged, unpacked conv-vae and helpers to call it."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

import zoo
from zoo.serving import PackageOptions, package


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A packaged and unpacked fresh conv-vae (1x28x28): the directory TorchServe would hand the handler."""
    tmp = tmp_path_factory.mktemp("handler")
    torch.manual_seed(0)
    model = zoo.create("conv-vae", preset="mnist").eval()
    folder = model.save_pretrained(tmp / "vae")
    mar = package(folder, tmp / "store", PackageOptions(batch_size=8, max_batch_delay=5))
    unpacked = tmp / "unpacked"
    with zipfile.ZipFile(mar) as z:
        z.extractall(unpacked)
    return unpacked, zoo.load(folder)


def make_context(model_dir: Path, n: int, handler_options: dict | None = None, gpu=None, headers=None):
    from ts.context import Context, RequestProcessor

    yaml_config = {"batchSize": 8, "handler": handler_options or {}}
    context = Context("m", str(model_dir), {}, 8, gpu, "0.12.0", model_yaml_config=yaml_config)
    context.request_processor = [RequestProcessor(dict((headers or [{}] * n)[i])) for i in range(n)]
    return context


def new_handler(model_dir, **options):
    from zoo_handlers.zoo_handler import ZooHandler

    handler = ZooHandler()
    handler.initialize(make_context(model_dir, 1, options))
    return handler


def run(handler, model_dir, rows, headers=None):
    """(decoded JSON replies, statuses) for TorchServe rows; ``headers`` are each request's HTTP headers."""
    replies, statuses, _ = run_raw(handler, model_dir, rows, headers)
    return [json.loads(r) for r in replies], statuses


def run_raw(handler, model_dir, rows, headers=None):
    """(reply bodies as returned, statuses, content types) for TorchServe rows."""
    context = make_context(model_dir, len(rows), headers=headers)
    replies = handler.handle(rows, context)
    statuses = [context.get_response_status(i)[0] for i in range(len(rows))]
    types = [context.get_response_content_type(i) for i in range(len(rows))]
    return replies, statuses, types
