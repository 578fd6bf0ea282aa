"""The TorchServe handler in process, with TorchServe's own Context: archive layout, batches, limits, options."""

from __future__ import annotations

import importlib.util
import json
import logging

import pytest
import torch

from tests.handler_fixtures import archive, new_handler, run  # noqa: F401  (fixture)
from tests.serving_fixtures import b64, huge_png, random_image
from zoo.tasks import TASKS



def test_archive_is_self_contained_and_the_handler_file_has_one_class(archive):
    model_dir, _ = archive
    for path in ("zoo/__init__.py", "zoo/model.py", "zoo_plugins/conv_vae.py", "zoo_handlers/service.py",
                 "zoo_handler.py", "config.json", "model.safetensors", "zoo-serving.json", "model-config.yaml"):
        assert (model_dir / path).is_file(), path
    assert not (model_dir / "zoo" / "cli").exists()
    assert not list(model_dir.rglob("*.pyc"))
    manifest = json.loads((model_dir / "zoo-serving.json").read_text())
    assert manifest["plugins"] == ["zoo_plugins.conv_vae"]
    from ts.utils.util import list_classes_from_module

    spec = importlib.util.spec_from_file_location("zoo_handler_under_test", model_dir / "zoo_handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert [c.__name__ for c in list_classes_from_module(module)] == ["ZooHandler"]
    import yaml

    config = yaml.safe_load((model_dir / "model-config.yaml").read_text())
    assert config["batchSize"] == 8 and config["maxBatchDelay"] == 5 and config["handler"]["warmup"] is True


def test_a_mixed_batch_gets_per_request_statuses_and_matches_single_requests(archive):
    model_dir, model = archive
    handler = new_handler(model_dir)
    png, x = random_image(model.input_shape, 1)
    rgb, _ = random_image((3, 28, 28), 2)
    latent = torch.randn(model.latent_dim, generator=torch.Generator().manual_seed(0)).tolist()
    rows = [
        {"body": png},
        {"body": json.dumps({"task": "decode", "latent": [float("nan")] * model.latent_dim}).encode()},
        {"body": {"task": "decode", "latent": latent}},
        {"body": {"task": "levitate"}},
        {"data": json.dumps({"task": "encode", "image": b64(png)})},
        {"body": b""},
        {"body": {"task": "sample", "n": 2, "seed": 3}},
        {"body": rgb},
        {"body": {"task": "anomaly-score", "image": b64(png)}},
    ]
    replies, statuses = run(handler, model_dir, rows)
    assert statuses == [200, 400, 200, 400, 200, 400, 200, 400, 200], replies
    assert "NaN" in replies[1]["message"] and "levitate" in replies[3]["message"]
    for i in (0, 2, 4, 6, 8):
        single, status = run(handler, model_dir, [rows[i]])
        assert status == [200] and single[0] == replies[i]
    assert torch.allclose(torch.tensor(replies[4]["vector"]), model.encode(x.unsqueeze(0))[0], atol=1e-5)
    expected = model.sample(2, generator=torch.Generator().manual_seed(3))
    from zoo_handlers.images import decode_png

    served = torch.stack([decode_png(i) for i in replies[6]["images"]])
    assert (served - expected).abs().max() <= 1 / 255 + 1e-6


def test_good_requests_of_a_task_share_one_forward_pass(archive, monkeypatch):
    model_dir, model = archive
    handler = new_handler(model_dir)
    calls = []
    original = handler.service.model.run_task
    monkeypatch.setattr(handler.service.model, "run_task",
                        lambda task, inputs, generator=None: calls.append((task, getattr(inputs, "shape", inputs)))
                        or original(task, inputs, generator=generator))
    rows = [{"body": random_image(model.input_shape, i)[0]} for i in range(6)] + [{"body": b"junk"}]
    rows += [{"body": {"task": "decode", "latent": [0.0] * model.latent_dim}} for _ in range(3)]
    _, statuses = run(handler, model_dir, rows)
    assert statuses == [200] * 6 + [415] + [200] * 3
    assert calls == [("reconstruct", torch.Size([6, 1, 28, 28])), ("decode", torch.Size([3, model.latent_dim]))]


def test_image_size_is_checked_from_the_header_before_decoding(archive, monkeypatch):
    from PIL import ImageFile

    model_dir, _ = archive
    handler = new_handler(model_dir)

    def never(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", never)
    bomb = huge_png(5000, 5000)  # 25 megapixels in about 25 KB: under the byte limit, over the pixel limit
    replies, statuses = run(handler, model_dir, [{"body": bomb}, {"body": huge_png(64, 64)}])
    assert statuses == [413, 400]
    assert "5000x5000" in replies[0]["message"] and "28x28" in replies[1]["message"]


@pytest.mark.parametrize("body, words", [
    ({"task": "sample", "n": 0}, ['"n"']),
    ({"task": "sample", "n": True}, ['"n"']),
    ({"task": "sample", "n": 2, "seed": -1}, ['"seed"']),
    ({"task": "decode", "latent": "zeros"}, ["list"]),
    ({"task": "decode", "latent": [1e300] * 32}, ["out of range"]),
    ({"task": "decode", "latent": [None] * 32}, ["number"]),
    ({"task": "reconstruct", "image": "not base64!"}, ["base64"]),
    ({"task": "reconstruct", "image": b64(b"GIF89a....")}, ["PNG or JPEG"]),
    ({"task": "reconstruct", "latent": [0.0] * 32}, ["takes image"]),
    ({"task": 3}, ["string"]),
    ({"image": 1, "extra": 2}, ["extra"]),
])
def test_more_bad_json_requests(archive, body, words):
    model_dir, _ = archive
    handler = new_handler(model_dir)
    replies, statuses = run(handler, model_dir, [{"body": json.dumps(body).encode()}])
    assert 400 <= statuses[0] < 500
    for word in words:
        assert word in replies[0]["message"], replies[0]


def test_infinite_latent_values_are_rejected(archive):
    model_dir, model = archive
    handler = new_handler(model_dir)
    for value in ("Infinity", "-Infinity", "NaN"):
        body = '{"task": "decode", "latent": [%s%s]}' % (value, ", 0" * (model.latent_dim - 1))
        replies, statuses = run(handler, model_dir, [{"body": body.encode()}])
        assert statuses == [400] and "not allowed" in replies[0]["message"]


def test_options_half_on_cpu_and_compile_with_warmup(archive, caplog):
    model_dir, model = archive
    with caplog.at_level(logging.WARNING):
        handler = new_handler(model_dir, half=True)
    assert handler.service.autocast is False and "half precision" in caplog.text
    compiled = new_handler(model_dir, compile=True, compile_backend="eager", warmup=True)
    png, x = random_image(model.input_shape, 4)
    replies, statuses = run(compiled, model_dir, [{"body": {"task": "encode", "image": b64(png)}}])
    assert statuses == [200]
    assert torch.allclose(torch.tensor(replies[0]["vector"]), model.encode(x.unsqueeze(0))[0], atol=1e-5)
    with pytest.raises(ValueError, match="unknown option"):
        new_handler(model_dir, halfp=True)


def test_device_is_cuda_gpu_id_when_available(monkeypatch):
    from zoo_handlers.service import select_device

    assert select_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device(1) == torch.device("cuda:1")
    assert select_device(None) == torch.device("cpu")


def test_every_task_kind_is_handled():
    """Guard: the handler knows every input and output kind a task can declare."""
    assert {t.input for t in TASKS.values()} <= {"image", "latent", "count"}
    assert {t.output for t in TASKS.values()} <= {"image", "vector", "scalar"}


def test_generated_malformed_batches_never_crash_the_handler(archive):
    """Hypothesis: any batch of junk gets one reply per request, each a 200 or a 4xx with a message."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    model_dir, model = archive
    handler = new_handler(model_dir, warmup=False)
    png, _ = random_image(model.input_shape)
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
    values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                                         max_size=3), max_leaves=8)
    objects = st.fixed_dictionaries({}, optional={
        "task": st.sampled_from(list(TASKS)) | values, "image": st.just(b64(png)) | values,
        "latent": st.lists(st.floats(), max_size=40) | values, "n": st.integers() | values, "seed": values})
    bodies = st.one_of(
        st.binary(max_size=300),
        st.integers(0, len(png)).map(lambda i: png[:i]),
        objects.map(lambda o: json.dumps(o).encode()),
        objects,
        values.map(lambda v: json.dumps(v).encode()),
        st.text(max_size=50),
    )

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(bodies, min_size=1, max_size=8))
    def check(batch):
        replies, statuses = run(handler, model_dir, [{"body": b} for b in batch])
        assert len(replies) == len(batch)
        for reply, status in zip(replies, statuses):
            assert status == 200 or (400 <= status < 500 and reply["message"]), (status, reply)

    check()
