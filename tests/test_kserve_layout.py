"""TorchServe started from `zoo package --kserve` exactly as KServe starts it, answering KServe v1 and v2.

KServe mounts the storageUri at /mnt/models, sets TS_SERVICE_ENVELOPE (unset, ``kserve`` for v1,
``kservev2`` for v2) and runs ``torchserve --start --model-store=/mnt/models/model-store
--ts-config=/mnt/models/config/config.properties``. Here the layout is copied to a temporary folder
that stands in for /mnt/models, and only its paths and port numbers are rewritten, so that parallel
runs do not collide; every other property is served as written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import zoo
from tests.kserve_forms import answer_locally, assert_same_reply, reference_service, v1_forms, v2_forms
from tests.serving_fixtures import b64, post, random_image, refused_while_sending
from zoo.serving import server
from zoo.serving.package import KSERVE_PORTS, KSERVE_STORE

MODEL = "conv-vae-mnist"  # the model the protocol details are tested on
MODELS = zoo.list_models()  # the layout holds every bundled model, and each answers every form
BATCH_SIZE = 8


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    """The KServe layout and archive `zoo package` writes, built by the real command."""
    out = tmp_path_factory.mktemp("kserve-layout")
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "package", *MODELS, "--out", str(out / "mars"),
                             "--batch-size", str(BATCH_SIZE), "--max-batch-delay", "20", "--kserve", str(out / "layout")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return out / "layout"


@pytest.fixture(scope="module")
def references(layout, tmp_path_factory) -> dict:
    """Each archive's service in process: what the served replies are compared against."""
    return {name: reference_service(layout / "model-store" / f"{name}.mar", tmp_path_factory.mktemp("unpacked"))
            for name in MODELS}


@pytest.fixture(scope="module")
def reference(references):
    return references[MODEL]


class KServeTorchServe:
    """A TorchServe started from a copy of the layout, the way KServe's runtime starts it."""

    def __init__(self, layout: Path, mount: Path, envelope: str | None):
        shutil.copytree(layout, mount)
        self.mount = mount
        self.ports = {name: server.free_port() for name in KSERVE_PORTS}
        config = mount / "config" / "config.properties"
        text = config.read_text().replace(KSERVE_STORE, str(mount / "model-store"))
        for name, port in KSERVE_PORTS.items():
            text = re.sub(rf"(:|_port=){port}\b", rf"\g<1>{self.ports[name]}", text)
        config.write_text(text)
        self.properties = text
        env = {**os.environ, "TEMP": str(mount / "tmp"), "LOG_LOCATION": str(mount / "logs"),
               "METRICS_LOCATION": str(mount / "logs"), "OMP_NUM_THREADS": "1"}
        env.pop("TS_SERVICE_ENVELOPE", None)
        if envelope is not None:
            env["TS_SERVICE_ENVELOPE"] = envelope
        (mount / "tmp").mkdir()
        (mount / "logs").mkdir()
        command = server.torchserve_command() + ["--start", "--foreground", "--ncs",
                                                  f"--model-store={mount / 'model-store'}", f"--ts-config={config}"]
        log = open(mount / "logs" / "launcher.log", "ab")
        self.process = subprocess.Popen(command, cwd=mount, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.state = server.ServerState(
            pid=self.process.pid, pgid=os.getpgid(self.process.pid), directory=str(mount),
            inference_url=f"http://127.0.0.1:{self.ports['inference']}",
            management_url=f"http://127.0.0.1:{self.ports['management']}",
            metrics_url=f"http://127.0.0.1:{self.ports['metrics']}",
            grpc_inference_port=self.ports["grpc_inference"], grpc_management_port=self.ports["grpc_management"],
            models=list(MODELS), auth=False, key_file=None, started=time.time())
        self.state.write()
        try:
            server.wait_ready(self.state, timeout=300, process=self.process)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        server.stop(self.mount)

    def post(self, path: str, body) -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return post(self.state.inference_url + path, data, "application/json")


@pytest.fixture(scope="module", params=[None, "kserve", "kservev2"], ids=["no-envelope", "kserve", "kservev2"])
def kserve(request, layout, tmp_path_factory):
    served = KServeTorchServe(layout, tmp_path_factory.mktemp("mnt") / "models", request.param)
    yield served
    served.stop()


V1_PATHS = (f"/v1/models/{MODEL}:predict", f"/predictions/{MODEL}")
V2_PATHS = (f"/v2/models/{MODEL}/infer", f"/predictions/{MODEL}")


def test_the_layout_is_what_kserve_needs(kserve):
    properties = kserve.properties
    assert "enable_envvars_config=false" in properties and "metrics_mode=prometheus" in properties
    assert f"inference_address=http://127.0.0.1:{kserve.ports['inference']}" in properties
    snapshot = json.loads(properties.split("model_snapshot=", 1)[1].splitlines()[0])
    assert snapshot["models"][MODEL]["1.0"]["batchSize"] == BATCH_SIZE


@pytest.mark.parametrize("forms, paths", [(v1_forms, V1_PATHS), (v2_forms, V2_PATHS)], ids=["v1", "v2"])
def test_every_kserve_form_is_answered_like_the_handler_in_process(kserve, references, forms, paths):
    for name, reference in references.items():
        for label, body in forms(reference.model):
            expected_status, expected = answer_locally(reference, body)
            assert expected_status == 200, (name, label, expected)
            for path in (p.replace(MODEL, name) for p in paths):
                status, reply = kserve.post(path, body)
                assert status == 200, (name, label, path, status, reply)
                assert_same_reply(reply, expected, f"{name} {label}")


def test_bad_kserve_requests_get_their_4xx_with_an_error(kserve):
    bad = [({"instances": [{"data": "!!"}]}, 400), ({"instances": [[2.0] * 784]}, 400),
           ({"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [0.1] * 5}]}, 400),
           ({"inputs": [], "parameters": {"task": "sample", "n": 1000}}, 413)]
    for body, code in bad:
        path = V1_PATHS[0] if "instances" in body else V2_PATHS[0]
        status, reply = kserve.post(path, body)
        assert status == code and list(reply) == ["error"], (body, status, reply)


def test_concurrent_v1_v2_and_native_traffic_is_batched_and_every_reply_is_right(kserve, reference):
    model = reference.model
    jobs = []
    for i in range(24):
        png, x = random_image(model.input_shape, 100 + i)
        if i % 3 == 0:
            jobs.append((V1_PATHS[0], {"instances": [b64(png), x.tolist()]}))
        elif i % 3 == 1:
            jobs.append((V2_PATHS[0], {"id": f"c{i}", "inputs": [{"name": "x", "shape": [1], "datatype": "BYTES",
                                                                  "data": [b64(png)]}]}))
        else:
            jobs.append((f"/predictions/{MODEL}", {"task": "encode", "image": b64(png)}))
        if i % 8 == 7:  # a bad request among good ones: only it fails, whichever batch it lands in
            jobs.append((V1_PATHS[0], {"instances": [{"data": "!!"}]}))

    def send(job):
        return kserve.post(*job)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, jobs))
    for (path, body), (status, reply) in zip(jobs, results):
        expected_status, expected = answer_locally(reference, body)
        assert status == expected_status, (path, status, reply)
        assert_same_reply(reply, expected)


def test_metrics_are_served_in_prometheus_format(kserve):
    kserve.post(V1_PATHS[0], {"instances": [{"task": "sample", "n": 1, "seed": 0}]})
    with urllib.request.urlopen(f"{kserve.state.metrics_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert response.status == 200 and "ts_inference_requests_total" in text, text[:500]


def test_bodies_over_a_models_limit_get_413(kserve, references):
    """Over every model's limit the front end refuses (max_request_size); over this model's, the handler does."""
    limit = int(re.search(r"max_request_size=(\d+)", kserve.properties).group(1))
    assert limit == max(r.spec.body_bytes for r in references.values())
    for size in (references[MODEL].spec.body_bytes, limit):
        status, reply = refused_while_sending(kserve.post, V1_PATHS[0], b'{"instances": ["' + b"A" * size + b'"]}')
        assert status == 413, (size, status, reply)


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_the_example_inference_services_name_the_torchserve_runtime_and_protocol(protocol):
    import yaml

    path = Path(__file__).resolve().parents[1] / "examples" / "kserve" / f"inferenceservice-{protocol}.yaml"
    service = yaml.safe_load(path.read_text())
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    model = service["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "pytorch" and model["protocolVersion"] == protocol
    assert model["storageUri"].endswith("-kserve")
