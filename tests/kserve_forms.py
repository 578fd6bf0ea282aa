"""KServe v1 and v2 request bodies of every accepted form, and a comparison of replies within tolerances.

Used by the in-process protocol tests and by the tests against TorchServe started from the KServe layout.
"""

from __future__ import annotations

import base64
import math

import torch

from tests.serving_fixtures import b64, random_image

IMAGE_ATOL = 1.0 / 255 + 1e-6
VALUE_TOL = 1e-4


def v1_forms(model, seed: int = 0) -> list[tuple[str, dict]]:
    """(label, body) for each v1 instance form a model with an image default task accepts."""
    c, h, w = model.input_shape
    png, x = random_image(model.input_shape, seed)
    pixels = x.tolist()
    forms = [
        ("v1 {data: b64}", {"instances": [{"data": b64(png)}]}),
        ("v1 bare b64", {"instances": [b64(png)]}),
        ("v1 {b64: b64}", {"instances": [{"b64": b64(png)}]}),
        ("v1 line-wrapped b64", {"instances": [base64.encodebytes(png).decode()]}),
        ("v1 pixels CHW", {"instances": [pixels]}),
        ("v1 pixels flat", {"instances": [x.flatten().tolist()]}),
        ("v1 several instances", {"instances": [b64(png), {"data": b64(random_image(model.input_shape, seed + 1)[0])},
                                                pixels]}),
    ]
    if c == 1:
        forms.append(("v1 pixels HW", {"instances": [pixels[0]]}))
    for task in model.tasks:
        kind = _kind(task)
        if kind == "image":
            forms.append((f"v1 native {task}", {"instances": [{"task": task, "image": b64(png)}]}))
        elif kind == "latent":
            z = torch.randn(model.latent_dim, generator=torch.Generator().manual_seed(seed)).tolist()
            forms.append((f"v1 native {task}", {"instances": [{"task": task, "latent": z}]}))
        else:
            forms.append((f"v1 native {task}", {"instances": [{"task": task, "n": 2, "seed": 3 + seed}]}))
    return forms


def v2_forms(model, seed: int = 0) -> list[tuple[str, dict]]:
    """(label, body) for each v2 input form, every task the model declares."""
    c, h, w = model.input_shape
    pngs = [random_image(model.input_shape, seed + i)[0] for i in range(2)]
    xs = torch.stack([random_image(model.input_shape, seed + i)[1] for i in range(2)])
    forms = []
    for task in model.tasks:
        kind = _kind(task)
        params = {"task": task}
        if kind == "image":
            forms += [
                (f"v2 {task} BYTES [1]", _v2(params, "BYTES", [1], [b64(pngs[0])])),
                (f"v2 {task} BYTES [-1]", _v2(params, "BYTES", [-1], [b64(p) for p in pngs])),
                (f"v2 {task} FP32 [N,C,H,W]", _v2(params, "FP32", [2, c, h, w], xs.flatten().tolist())),
                (f"v2 {task} FP32 [N,C*H*W]", _v2(params, "FP32", [2, c * h * w], xs.flatten().tolist())),
                (f"v2 {task} UINT8 [N,C,H,W]", _v2(params, "UINT8", [2, c, h, w],
                                                   xs.mul(255).round().int().flatten().tolist())),
            ]
            if c == 1:
                forms.append((f"v2 {task} FP32 [N,H,W]", _v2(params, "FP32", [2, h, w], xs.flatten().tolist())))
        elif kind == "latent":
            z = torch.randn(2, model.latent_dim, generator=torch.Generator().manual_seed(seed))
            forms.append((f"v2 {task} FP32 [N,D]", _v2(params, "FP32", [2, model.latent_dim], z.flatten().tolist())))
        else:
            forms += [
                (f"v2 {task} parameters n", {"id": "s1", "parameters": {**params, "n": 2, "seed": 7 + seed},
                                             "inputs": []}),
                (f"v2 {task} INT32 [1]", _v2({**params, "seed": 8 + seed}, "INT32", [1], [3])),
            ]
    default = model.tasks[0]
    if _kind(default) == "image":
        forms.append(("v2 default task, no parameters", {"id": "d", "inputs": [
            {"name": "input-0", "shape": [1], "datatype": "BYTES", "data": [b64(pngs[0])]}]}))
    return forms


def _v2(parameters: dict, datatype: str, shape: list[int], data: list) -> dict:
    return {"id": f"req-{datatype}-{'x'.join(map(str, shape))}", "parameters": parameters,
            "inputs": [{"name": "input-0", "shape": shape, "datatype": datatype, "data": data}]}


def _kind(task: str) -> str:
    from zoo.tasks import TASKS

    return TASKS[task].input


def answer_locally(service, body: dict) -> tuple[int, dict]:
    """(status, decoded reply) of the zoo service in this process for one JSON body."""
    import json

    from zoo_handlers.protocols import Request

    (reply,) = service.answer([Request(json.dumps(body).encode(), "application/json")])
    return reply.status, json.loads(reply.body)


def reference_service(mar, folder):
    """The service of archive ``mar`` unpacked into ``folder``: what a server's replies are compared against."""
    import zipfile

    from zoo_handlers.service import ZooService

    with zipfile.ZipFile(mar) as archive:
        archive.extractall(folder)
    return ZooService.from_model_dir(folder, name=mar.stem)


def assert_same_reply(served, local, path: str = "reply") -> None:
    """Replies agree: same structure, PNGs within 1/255 per pixel, numbers within 1e-4."""
    from zoo_handlers.images import decode_png

    if isinstance(local, dict):
        assert isinstance(served, dict) and served.keys() == local.keys(), (path, served, local)
        for key in local:
            assert_same_reply(served[key], local[key], f"{path}.{key}")
    elif isinstance(local, list):
        assert isinstance(served, list) and len(served) == len(local), (path, len(served), len(local))
        for i, (a, b) in enumerate(zip(served, local)):
            assert_same_reply(a, b, f"{path}[{i}]")
    elif isinstance(local, str) and local.startswith("iVBOR"):  # a base64 PNG
        diff = (decode_png(served) - decode_png(local)).abs().max().item()
        assert diff <= IMAGE_ATOL, (path, diff)
    elif isinstance(local, float):
        assert math.isclose(served, local, rel_tol=VALUE_TOL, abs_tol=VALUE_TOL), (path, served, local)
    else:
        assert served == local, (path, served, local)
