"""The wire protocols in process: KServe v1/v2 forms, mixed batches, and the handler's limits on hostile input."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pytest
import torch

from tests.handler_fixtures import archive, new_handler, run, run_raw  # noqa: F401  (fixture)
from tests.kserve_forms import assert_same_reply, v1_forms, v2_forms
from tests.serving_fixtures import b64, random_image
from zoo_handlers.images import decode_png


@pytest.fixture(scope="module")
def handler(archive):
    return new_handler(archive[0])


def ask(handler, archive, body, headers=None):
    """(status, decoded JSON reply) for one JSON body sent as TorchServe would hand it over (bytes)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    replies, statuses = run(handler, archive[0], [{"body": raw}], headers=[headers or {}])
    return statuses[0], replies[0]


# --------------------------------------------------------------------------------------------
# KServe v1


def test_every_v1_form_answers_with_one_prediction_per_instance(handler, archive):
    _, model = archive
    for label, body in v1_forms(model):
        status, reply = ask(handler, archive, body)
        assert status == 200, (label, reply)
        assert list(reply) == ["predictions"] and len(reply["predictions"]) == len(body["instances"]), label


def test_v1_predictions_are_the_native_replies(handler, archive):
    _, model = archive
    png, x = random_image(model.input_shape, 5)
    native = [ask(handler, archive, {"task": "reconstruct", "image": b64(png)})[1],
              ask(handler, archive, {"task": "sample", "n": 2, "seed": 9})[1]]
    status, reply = ask(handler, archive, {"instances": [x.tolist(), {"task": "sample", "n": 2, "seed": 9}]})
    assert status == 200
    assert_same_reply(reply["predictions"], native)
    expected = model.reconstruct(x.unsqueeze(0))[0]
    assert (decode_png(reply["predictions"][0]["image"]) - expected).abs().max() <= 1 / 255 + 1e-6


V1_BAD = [
    ({"instances": []}, 400, ["non-empty"]),
    ({"instances": "abc"}, 400, ["non-empty list"]),
    ({"instances": [1]}, 400, ["instances[0]"]),
    ({"instances": [[0.5] * 783]}, 400, ["shape [783]"]),
    ({"instances": [[1.5] * 784]}, 400, ["outside [0, 1]"]),
    ({"instances": [{"data": "!!"}]}, 400, ["base64"]),
    ({"instances": [{"data": "aGk=", "b64": "aGk="}]}, 400, ["'b64'"]),
    ({"instances": [{"task": "levitate"}]}, 400, ["unknown task"]),
    ({"instances": ["aGk="] * 33}, 413, ["limit of 32"]),
    ({"instances": [], "signature": 1}, 400, ["'signature'"]),
]


# --------------------------------------------------------------------------------------------
# KServe v2


def test_every_v2_form_keeps_shapes_and_matches_the_model(handler, archive):
    _, model = archive
    c, h, w = model.input_shape
    for label, body in v2_forms(model):
        status, reply = ask(handler, archive, body)
        assert status == 200, (label, reply)
        task = (body.get("parameters") or {}).get("task", model.tasks[0])
        assert reply["model_name"] == "m" and reply["model_version"] == "1.0" and reply["id"] == body["id"], label
        (output,) = reply["outputs"]
        assert output["name"] == task, label
        tensor = body["inputs"][0] if body["inputs"] else None
        if task == "sample":
            n = (body["parameters"].get("n") or tensor["data"][0])
            expected = model.sample(n, generator=torch.Generator().manual_seed(body["parameters"]["seed"]))
        elif task == "decode":
            expected = model.decode(torch.tensor(tensor["data"]).view(tensor["shape"]))
        else:
            if tensor["datatype"] == "BYTES":
                pngs = [base64.b64decode(d) for d in tensor["data"]]
                x = torch.stack([decode_png(p) for p in pngs])
            else:
                scale = 255.0 if tensor["datatype"] == "UINT8" else 1.0
                x = torch.tensor(tensor["data"], dtype=torch.float32).div(scale).view(-1, c, h, w)
            expected = model.run_task(task, x)
        if output["datatype"] == "BYTES":
            assert tensor["datatype"] == "BYTES" and output["shape"] == [len(expected)], label
            served = torch.stack([decode_png(d) for d in output["data"]])
            assert (served - expected).abs().max() <= 1 / 255 + 1e-6, label
            continue
        expected_shape = list(expected.shape) if expected.dim() > 1 else [len(expected)]
        assert output["datatype"] == "FP32" and output["shape"] == expected_shape, (label, output["shape"])
        served = torch.tensor(output["data"]).view(expected_shape)
        torch.testing.assert_close(served, expected.view(expected_shape).float(), atol=1e-4, rtol=1e-4)


def test_v2_without_an_id_gets_one(handler, archive):
    _, model = archive
    status, reply = ask(handler, archive, {"inputs": [{"name": "x", "shape": [1, 784], "datatype": "FP32",
                                                       "data": [0.5] * 784}]})
    assert status == 200 and len(reply["id"]) == 32 and reply["outputs"][0]["shape"] == [1, *model.input_shape]


V2_BAD = [
    ({"inputs": {}}, 400, ["list"]),
    ({"inputs": [{"name": "x", "shape": [1, 784], "datatype": "FP32", "data": [0.5] * 783}]}, 400, ["does not fit"]),
    ({"inputs": [{"name": "x", "shape": [1, 785], "datatype": "FP32", "data": [0.5] * 785}]}, 400, ["[N, 784]"]),
    ({"inputs": [{"name": "x", "shape": [1, 784], "datatype": "FP32", "data": [2.0] * 784}]}, 400, ["[0, 1]"]),
    ({"inputs": [{"name": "x", "shape": [1, 784], "datatype": "UINT8", "data": [256] * 784}]}, 400, ["0 to 255"]),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "BOOL", "data": [True]}]}, 400, ["datatype"]),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES"}]}, 400, ["missing data"]),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["!!"]}]}, 400, ["base64"]),
    ({"inputs": [], "parameters": {"task": "decode"}}, 400, ["exactly one input"]),
    ({"inputs": [], "parameters": {"task": "sample", "n": 65}}, 413, ["limit of 64"]),
    ({"inputs": [], "parameters": {"task": "sample", "n": 0}}, 400, ['"n"']),
    ({"inputs": [], "parameters": {"task": "encode", "seed": 1}}, 400, ["only to sampling"]),
    ({"inputs": [], "parameters": {"colour": 1}}, 400, ["'colour'"]),
    ({"inputs": [], "parameters": {"task": "sample"}, "outputs": [{"name": "nope"}]}, 400, ["'nope'"]),
    ({"inputs": [{"name": "z", "shape": [1, 31], "datatype": "FP32", "data": [0.0] * 31}],
      "parameters": {"task": "decode"}}, 400, ["[N, 32]"]),
    ({"inputs": [{"name": "z", "shape": [1, 32], "datatype": "FP32", "data": [1e30] * 32}],
      "parameters": {"task": "decode"}}, 400, ["out of range"]),
    ({"inputs": [{"name": "x", "shape": [33, 784], "datatype": "UINT8", "data": [0] * 33 * 784}]}, 413, ["limit"]),
    ({"inputs": [], "id": 5}, 400, ['"id"']),
]


@pytest.mark.parametrize("body, code, words", V1_BAD + V2_BAD)
def test_bad_kserve_requests_get_a_4xx_error_object(handler, archive, body, code, words):
    status, reply = ask(handler, archive, body)
    assert status == code and list(reply) == ["error"], (status, reply)
    for word in words:
        assert word in reply["error"], reply


# --------------------------------------------------------------------------------------------
# Batches across protocols


def test_one_forward_pass_serves_native_v1_and_v2_requests_of_a_batch(archive, monkeypatch):
    model_dir, model = archive
    handler = new_handler(model_dir)
    calls = []
    original = handler.service.model.run_task
    monkeypatch.setattr(handler.service.model, "run_task", lambda task, inputs, generator=None: calls.append(
        (task, getattr(inputs, "shape", inputs))) or original(task, inputs, generator=generator))
    pngs = [random_image(model.input_shape, i)[0] for i in range(4)]
    rows = [
        {"body": pngs[0]},
        {"body": {"instances": [b64(pngs[1]), {"data": b64(pngs[2])}]}},
        {"body": json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [b64(pngs[3])]}]})
         .encode()},
        {"body": {"instances": [{"data": "!!"}]}},
    ]
    replies, statuses = run(handler, model_dir, rows)
    assert statuses == [200, 200, 200, 400]
    assert calls == [("reconstruct", torch.Size([4, *model.input_shape]))]
    alone = [run(handler, model_dir, [{"body": p}])[0][0]["image"] for p in pngs]
    assert replies[0]["image"] == alone[0]
    assert [p["image"] for p in replies[1]["predictions"]] == alone[1:3]
    assert replies[2]["outputs"][0]["data"] == [alone[3]]


# --------------------------------------------------------------------------------------------
# Hostile and awkward input


def _png_with_chunks(png: bytes, count: int) -> bytes:
    """``png`` with ``count`` empty ancillary chunks inserted after IHDR (still a valid PNG)."""
    chunk = struct.pack(">I", 0) + b"zzZz" + struct.pack(">I", zlib.crc32(b"zzZz") & 0xFFFFFFFF)
    return png[:33] + chunk * count + png[33:]


def _jpeg(image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, **save)
    return buffer.getvalue()


def _jpeg_with_comments(jpeg: bytes, count: int) -> bytes:
    return jpeg[:2] + b"\xff\xfe\x00\x02" * count + jpeg[2:]


def test_error_replies_stay_small_and_show_no_object_reprs(handler, archive):
    long_task = "x" * 1_000_000
    many_keys = {f"k{i}": 0 for i in range(100_000)}
    broken = b64(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    for body in ({"task": long_task}, many_keys, {"instances": [{"task": long_task}]},
                 {"inputs": [], "parameters": {long_task: 1}}, {"task": "reconstruct", "image": broken},
                 {"task": "reconstruct", "image": b64(b"GIF89a" + b"\x00" * 50)}):
        status, reply = ask(handler, archive, body)
        text = json.dumps(reply)
        assert 400 <= status < 500 and len(text) < 1000, (status, len(text))
        assert " at 0x" not in text, text


def test_images_that_would_hold_a_worker_are_refused_before_decoding(handler, archive, monkeypatch):
    from PIL import Image

    _, model = archive
    png, _ = random_image(model.input_shape)
    grey = Image.frombytes("L", (28, 28), bytes(range(256)) * 3 + bytes(16))
    jpeg = _jpeg(grey)
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("Pillow was asked to parse the image"))
    cases = [
        (_png_with_chunks(png, 500_000), 413, "bytes"),   # about 6 MB: over the per-model body limit
        (_png_with_chunks(png, 1_000), 400, "chunks"),    # 12 KB, but a thousand chunks to walk
        (_jpeg_with_comments(jpeg, 1_500_000), 413, "bytes"),
        (_jpeg_with_comments(jpeg, 2_000), 400, "segments"),
        (b"\xff\xd8\xff" + b"\x00" * 1000, 400, "broken"),
    ]
    for raw, code, word in cases:  # refused before Pillow parses anything: that parse took seconds before
        replies, statuses = run(handler, archive[0], [{"body": raw}])
        assert statuses == [code] and word in replies[0]["message"], (code, replies[0])


def test_status_codes_follow_the_readme(handler, archive):
    _, model = archive
    png, _ = random_image(model.input_shape)
    cases = [
        (png[:20], 400),                            # truncated header
        (png[:16] + b"\xff" * 17 + png[33:], 400),  # broken IHDR
        (png[: len(png) // 2], 400),                # truncated pixel data
        (b"GIF89a" + b"\x00" * 30, 415),            # a format the model does not take
        (json.dumps({"task": "sample", "n": 65}).encode(), 413),
        (json.dumps({"task": "sample", "n": 0}).encode(), 400),
        (b"\x00" * (handler.service.spec.body_bytes + 1), 413),
    ]
    for raw, code in cases:
        _, statuses = run(handler, archive[0], [{"body": raw}])
        assert statuses == [code], (raw[:40], statuses)


def test_exif_orientation_is_applied(handler, archive):
    from PIL import Image

    _, model = archive
    stored = Image.frombytes("L", (28, 28), bytes((7 * i) % 256 if (i % 28) < 9 else 30 for i in range(784)))
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: display rotated 90 degrees clockwise
    upright, turned = _jpeg(stored), _jpeg(stored, exif=exif.tobytes())
    replies, statuses = run(handler, archive[0], [{"body": {"task": "encode", "image": b64(p)}}
                                                  for p in (upright, turned)])
    assert statuses == [200, 200]
    x_up = torch.frombuffer(bytearray(Image.open(io.BytesIO(upright)).tobytes()), dtype=torch.uint8)
    x_up = x_up.float().div(255).view(1, 1, 28, 28)
    expected = model.encode(torch.rot90(x_up, k=-1, dims=(2, 3)))[0]
    torch.testing.assert_close(torch.tensor(replies[1]["vector"]), expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(torch.tensor(replies[0]["vector"]), expected, atol=1e-3)


def test_line_wrapped_base64_is_accepted(handler, archive):
    _, model = archive
    png, _ = random_image(model.input_shape, 3)
    wrapped = base64.encodebytes(png).decode()  # 76-character lines, as the `base64` tool writes
    assert "\n" in wrapped
    flat = ask(handler, archive, {"task": "encode", "image": b64(png)})
    status, reply = ask(handler, archive, {"task": "encode", "image": wrapped})
    assert status == 200 and reply == flat[1]


def test_accept_image_png_returns_the_png_itself(handler, archive):
    _, model = archive
    png, x = random_image(model.input_shape, 2)
    headers = [{"Accept": "image/png"}] * 3
    rows = [{"body": png}, {"body": {"task": "sample", "n": 1, "seed": 0}}, {"body": {"task": "encode",
                                                                                     "image": b64(png)}}]
    replies, statuses, types = run_raw(handler, archive[0], rows, headers=headers)
    assert statuses == [200, 200, 406] and types[:2] == ["image/png", "image/png"]
    assert isinstance(replies[0], bytes) and replies[0].startswith(b"\x89PNG")
    assert (decode_png(replies[0]) - model.reconstruct(x.unsqueeze(0))[0]).abs().max() <= 1 / 255 + 1e-6
    assert "application/json" in json.loads(replies[2])["message"]
