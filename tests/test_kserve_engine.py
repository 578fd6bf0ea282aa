"""KServe's own model server (`zoo serve --engine kserve`) on 127.0.0.1, answering like the TorchServe handler.

The server is started by the real command from a `.mar`, and every reply is compared with the
same archive's service in this process: v1 in every instance form, v2 REST (BYTES, FP32, UINT8,
latents, counts), one v2 gRPC inference through KServe's own client, and concurrent traffic.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from tests.kserve_forms import answer_locally, assert_same_reply, reference_service, v1_forms, v2_forms
from tests.serving_fixtures import b64, listening, post, random_image, refused_while_sending, with_example_plugin
import zoo
from zoo.serving import PackageOptions, ServingError, package, server

MODEL = "conv-vae-mnist"
REPO = Path(__file__).resolve().parents[1]
V1 = f"/v1/models/{MODEL}:predict"
V2 = f"/v2/models/{MODEL}/infer"


@pytest.fixture(scope="module")
def mar(tmp_path_factory) -> Path:
    return package(MODEL, tmp_path_factory.mktemp("kserve-engine-mar"), PackageOptions())


@pytest.fixture(scope="module")
def reference(mar, tmp_path_factory):
    return reference_service(mar, tmp_path_factory.mktemp("kserve-engine-unpacked"))


@contextmanager
def serve_with_kserve(target: str, directory: Path):
    """`zoo serve TARGET --engine kserve`, as a user runs it, until `zoo serve --stop` when the block ends."""
    cli = [sys.executable, "-m", "zoo.cli"]
    result = subprocess.run([*cli, "serve", target, "--engine", "kserve", "--dir", str(directory)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    try:
        yield server.ServerState.read(directory)
    finally:
        subprocess.run([*cli, "serve", "--stop", "--dir", str(directory)], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def engine(mar, tmp_path_factory):
    with serve_with_kserve(str(mar), tmp_path_factory.mktemp("kserve-engine") / "run") as state:
        yield state


def send(state, path: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return post(state.inference_url + path, data, "application/json")


def without_nulls(value):
    """KServe's response models add ``"parameters": null``; the handler leaves absent fields out."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def test_listens_on_loopback_only_and_is_ready(engine):
    sockets = listening(engine.pid)
    assert len({c.laddr.port for c in sockets}) == 2  # REST and gRPC
    assert all(c.laddr.ip.removeprefix("::ffff:") == "127.0.0.1" for c in sockets), sockets
    for path in ("/v2/health/ready", "/v2/health/live", f"/v2/models/{MODEL}/ready"):
        with urllib.request.urlopen(engine.inference_url + path, timeout=10) as response:
            assert response.status == 200, path


def test_no_client_can_unload_the_model(engine):
    """KServe's model-repository API needs no authorization; a zoo server refuses it over REST and gRPC."""
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    for action in ("unload", "load"):
        status, reply = post(f"{engine.inference_url}/v2/repository/models/{MODEL}/{action}", b"", "application/json")
        assert status == 403 and "disabled" in reply["error"], (action, status, reply)
    with grpc.insecure_channel(f"127.0.0.1:{engine.grpc_inference_port}") as channel:
        with pytest.raises(grpc.RpcError) as refused:
            pb_grpc.GRPCInferenceServiceStub(channel).RepositoryModelUnload(
                pb.RepositoryModelUnloadRequest(model_name=MODEL), timeout=10)
    assert "disabled" in refused.value.details()
    with urllib.request.urlopen(f"{engine.inference_url}/v2/models/{MODEL}/ready", timeout=10) as response:
        assert response.status == 200


def test_metadata_lists_the_declared_tasks(engine, reference):
    with urllib.request.urlopen(f"{engine.inference_url}/v2/models/{MODEL}", timeout=10) as response:
        metadata = json.loads(response.read())
    assert metadata["name"] == MODEL
    assert [o["name"] for o in metadata["outputs"]] == list(reference.tasks)
    assert {i["name"] for i in metadata["inputs"]} == {"image", "latent", "n"}


@pytest.mark.parametrize("forms, path", [(v1_forms, V1), (v2_forms, V2)], ids=["v1", "v2-rest"])
def test_every_form_is_answered_like_the_handler_in_process(engine, reference, forms, path):
    for label, body in forms(reference.model):
        expected_status, expected = answer_locally(reference, body)
        assert expected_status == 200, (label, expected)
        status, reply = send(engine, path, body)
        assert status == 200, (label, status, reply)
        assert_same_reply(without_nulls(reply), expected, label)


@pytest.mark.parametrize("name", [n for n in zoo.list_models() if n != MODEL])
def test_every_other_bundled_model_answers_v1_and_v2_like_in_process(name, tmp_path):
    mar = package(name, tmp_path / "mar", PackageOptions())
    reference = reference_service(mar, tmp_path / "unpacked")
    with serve_with_kserve(name, tmp_path / "run") as state:
        for path, forms in ((V1.replace(MODEL, mar.stem), v1_forms), (V2.replace(MODEL, mar.stem), v2_forms)):
            for label, body in forms(reference.model):
                expected_status, expected = answer_locally(reference, body)
                assert expected_status == 200, (name, label, expected)
                status, reply = send(state, path, body)
                assert status == 200, (name, label, status, reply)
                assert_same_reply(without_nulls(reply), expected, f"{name} {label}")


def test_a_third_party_plugin_archive_serves_where_the_plugin_is_not_installed(tmp_path):
    """The example plugin is discoverable only in this process; the server finds it inside the .mar."""
    import torch

    from zoo.serving import kserve_engine

    undo = with_example_plugin(tmp_path)
    try:
        torch.manual_seed(0)
        folder = zoo.create("beta-vae").eval().save_pretrained(tmp_path / "beta")
        mar = package(folder, tmp_path / "mar", PackageOptions())
        reference = reference_service(mar, tmp_path / "unpacked")
    finally:
        undo()
    state = kserve_engine.start(mar, tmp_path / "run")
    try:
        for label, body in v1_forms(reference.model):
            status, reply = send(state, f"/v1/models/{mar.stem}:predict", body)
            assert status == 200, (label, reply)
            assert_same_reply(without_nulls(reply), answer_locally(reference, body)[1], label)
    finally:
        server.stop(tmp_path / "run")


def test_a_v2_grpc_inference_through_kserves_client(engine, reference):
    import numpy as np
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    _, body = next((label, b) for label, b in v2_forms(reference.model) if "FP32 [N,C,H,W]" in label)
    tensor = body["inputs"][0]
    infer_input = InferInput(name=tensor["name"], shape=tensor["shape"], datatype="FP32")
    infer_input.set_data_from_numpy(np.array(tensor["data"], dtype=np.float32).reshape(tensor["shape"]))

    async def infer():
        client = InferenceGRPCClient(url=f"127.0.0.1:{engine.grpc_inference_port}")
        try:
            return await client.infer(InferRequest(model_name=MODEL, infer_inputs=[infer_input],
                                                   request_id=body["id"], parameters=body["parameters"]))
        finally:
            await client.close()

    response = asyncio.run(infer())
    _, expected = answer_locally(reference, body)
    (output,) = response.outputs
    (want,) = expected["outputs"]
    assert response.id == body["id"] and output.name == want["name"] and list(output.shape) == want["shape"]
    got = output.as_numpy().flatten()
    assert float(np.abs(got - np.array(want["data"], dtype=np.float32)).max()) <= 1e-4


def test_bad_requests_get_a_short_4xx_and_the_server_keeps_serving(engine, reference):
    png, _ = random_image(reference.model.input_shape)
    bad = [(V1, {"instances": [{"data": "!!"}]}, 400), (V1, {"instances": [{"task": "x" * 100_000}]}, 400),
           (V1, {"instances": [{"task": "sample", "n": 1000}]}, 413),
           (V2, {"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [0.1] * 5}]}, 400),
           (V2, {"inputs": [{"name": "x", "shape": [1, 784], "datatype": "FP32", "data": [9.0] * 784}]}, 400),
           (V2, {"inputs": "x" * 100_000}, 422),  # KServe's own schema check: a short message, no echo
           (V2, b'{"inputs": [', 422)]
    for path, body, code in bad:
        status, reply = send(engine, path, body)
        assert status == code and len(reply.get("error", "")) <= 300 and reply["error"], (path, status, reply)
        status, _ = send(engine, V1, {"instances": [b64(png)]})
        assert status == 200


def test_bodies_over_the_models_limit_are_refused_before_parsing(engine, reference):
    limit = reference.spec.body_bytes
    status, reply = refused_while_sending(send, engine, V1, b'{"instances": ["' + b"A" * limit + b'"]}')
    assert status == 413 and str(limit) in reply["error"], (status, reply)
    status, _ = send(engine, V1, {"instances": [{"task": "sample", "n": 1}]})
    assert status == 200


def test_concurrent_requests_are_all_answered_correctly(engine, reference):
    jobs = []
    for i in range(24):
        png, x = random_image(reference.model.input_shape, 200 + i)
        if i % 3 == 0:
            jobs.append((V1, {"instances": [b64(png), x.tolist()]}))
        elif i % 3 == 1:
            jobs.append((V2, {"id": f"c{i}", "inputs": [{"name": "x", "shape": [1], "datatype": "BYTES",
                                                         "data": [b64(png)]}]}))
        else:
            jobs.append((V1, {"task": "encode", "image": b64(png)}))
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda job: send(engine, *job), jobs))
    for (path, body), (status, reply) in zip(jobs, results):
        expected_status, expected = answer_locally(reference, body)
        assert status == expected_status == 200, (path, status, reply)
        assert_same_reply(without_nulls(reply), expected)


def test_zoo_predict_talks_to_the_kserve_engine(engine, tmp_path):
    png, _ = random_image((1, 28, 28), 5)
    (tmp_path / "digit.png").write_bytes(png)
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "predict", MODEL, str(tmp_path / "digit.png"),
                             "--out", str(tmp_path / "out.png"), "--dir", engine.directory],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.png").read_bytes().startswith(b"\x89PNG")


def test_stop_leaves_no_process(mar, tmp_path):
    from zoo.serving import kserve_engine

    state = kserve_engine.start(mar, tmp_path / "run")
    pids = server.group_pids(state.pgid)
    assert server.stop(tmp_path / "run")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                                              for p in pids):
        time.sleep(0.2)
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]


def test_the_dockerfile_command_serves_a_checkpoint_folder(tmp_path):
    """The image's ENTRYPOINT + CMD, with /mnt/models, the ports and (for the test) the host made local."""
    import shutil

    import zoo
    from zoo.plugins import get_host
    from zoo.resolve import resolve_pretrained

    dockerfile = (REPO / "examples" / "kserve-engine" / "Dockerfile").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    mount = tmp_path / "mnt" / "models"
    shutil.copytree(resolve_pretrained(get_host().registry.model(MODEL)), mount)
    http, grpc = server.free_port(), server.free_port()
    local = {"/mnt/models": str(mount), "8080": str(http), "8081": str(grpc), "python": sys.executable}
    command = [local.get(part, part) for part in entrypoint + cmd] + ["--model_name", MODEL, "--host", "127.0.0.1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, shlex.join(command)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/{MODEL}/ready", timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        model = zoo.load(MODEL)
        status, reply = post(f"http://127.0.0.1:{http}{V1}", json.dumps({"instances": [{"task": "sample", "n": 1,
                                                                                        "seed": 0}]}).encode(),
                             "application/json")
        assert status == 200 and reply["predictions"][0]["task"] == "sample" and model.tasks[0] == "reconstruct"
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)


def test_without_the_extra_the_error_gives_the_install_line(monkeypatch):
    import importlib.util

    from zoo.serving import kserve_engine

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ServingError, match=re.escape("pip install 'ae-zoo[kserve]'")):
        kserve_engine.require_kserve()
