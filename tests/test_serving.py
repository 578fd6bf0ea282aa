"""Serving against a real TorchServe on 127.0.0.1: round trips, batches, bad input, auth, isolation, lifecycle.

One session-scoped server serves every model (each pretrained model plus a fresh
model per architecture, including the third-party example plugin); a second one
runs in an environment without ae-zoo. Tolerances for "served == in-process":

- images: at most 1/255 per pixel (PNG is 8-bit: the served value is the in-process
  value rounded to a multiple of 1/255, plus float noise at rounding edges);
- vectors and scalars: |served - local| <= 1e-4 + 1e-4 * |local| (float32 JSON round trip).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import torch

from tests.serving_fixtures import (  # noqa: F401  (fixtures)
    BATCH_SIZE,
    Served,
    b64,
    huge_png,
    listening,
    post,
    post_json,
    python_can_import,
    random_image,
    runtime_python,
    served,
    served_isolated,
    zoo_models,
)
from zoo.serving import server
from zoo.tasks import TASKS
from zoo_handlers.images import decode_png


IMAGE_ATOL = 1.0 / 255 + 1e-6
SEED = 1234


# --------------------------------------------------------------------------------------------
# Helpers


def request_for(m, task: str, seed: int = 0):
    """(JSON request, local input) for ``task`` on model ``m``, built from the task's input kind."""
    kind = TASKS[task].input
    if kind == "image":
        png, x = random_image(m.model.input_shape, seed)
        return {"task": task, "image": b64(png)}, x.unsqueeze(0)
    if kind == "latent":
        z = torch.randn(m.model.latent_dim, generator=torch.Generator().manual_seed(seed))
        return {"task": task, "latent": z.tolist()}, z.unsqueeze(0)
    return {"task": task, "n": 3, "seed": SEED + seed}, 3


def expected_output(m, task: str, request: dict, local) -> torch.Tensor:
    """The in-process result for the same input: (1, ...) for image/latent inputs, (n, ...) for counts."""
    if TASKS[task].input == "count":
        return m.model.run_task(task, request["n"], generator=torch.Generator().manual_seed(request["seed"]))
    return m.model.run_task(task, local)


def check_reply(m, task: str, reply: dict, expected: torch.Tensor) -> None:
    output = TASKS[task].output
    assert reply["task"] == task
    if output == "image":
        images = reply["images"] if TASKS[task].input == "count" else [reply["image"]]
        served_images = torch.stack([decode_png(i) for i in images])
        assert served_images.shape == expected.shape, (served_images.shape, expected.shape)
        diff = (served_images - expected.clamp(0, 1)).abs().max().item()
        assert diff <= IMAGE_ATOL, f"{m.name} {task}: max pixel difference {diff:.5f} > 1/255"
    elif output == "vector":
        served_vector = torch.tensor(reply["vector"])
        torch.testing.assert_close(served_vector, expected.flatten().float(), atol=1e-4, rtol=1e-4)
    else:
        assert math.isclose(reply["scalar"], expected.item(), rel_tol=1e-4, abs_tol=1e-4), (reply, expected)


# --------------------------------------------------------------------------------------------
# Round trips


def test_server_serves_every_model_and_pretrained_ones(served: Served):
    import zoo

    names = set(served.models)
    assert set(zoo.list_models()) <= names
    architectures = {m.model.architecture for m in served.models.values()}
    assert {"dense-vae", "conv-vae", "denoising-ae", "colorization-ae"} <= architectures
    listed = server.get_json(f"{served.state.management_url}/models", served.headers("management"))
    assert {m["modelName"] for m in listed["models"]} == names


def test_every_task_of_every_model_round_trips(served: Served):
    checked = 0
    for name, m in served.models.items():
        for task in m.tasks:
            request, local = request_for(m, task, seed=checked)
            status, reply = post_json(served, name, request)
            assert status == 200, (name, task, reply)
            check_reply(m, task, reply, expected_output(m, task, request, local))
            checked += 1
    assert checked == sum(len(m.tasks) for m in served.models.values())


def test_raw_image_bytes_run_the_default_task(served: Served):
    for name, m in served.models.items():
        if TASKS[m.model.default_task].input != "image":
            continue
        png, x = random_image(m.model.input_shape, seed=7)
        status, reply = post(served.url(name), png, "image/png", served.headers())
        assert status == 200, (name, reply)
        check_reply(m, m.model.default_task, reply, m.model.run_task(m.model.default_task, x.unsqueeze(0)))


def test_sampling_with_a_seed_is_reproducible(served: Served):
    name = next(n for n, m in served.models.items() if "sample" in m.tasks)
    first = post_json(served, name, {"task": "sample", "n": 2, "seed": 5})
    second = post_json(served, name, {"task": "sample", "n": 2, "seed": 5})
    assert first[0] == second[0] == 200 and first[1]["images"] == second[1]["images"]


# --------------------------------------------------------------------------------------------
# Bad input


def _target(served: Served):
    """A fresh 1-channel model with image, latent and count tasks (a VAE), built-in if possible."""
    if "conv-vae-fresh" in served.models:
        return "conv-vae-fresh"
    return next(n for n, m in served.models.items()
                if not m.pretrained and m.model.input_shape[0] == 1 and {"decode", "sample"} <= set(m.tasks))


def bad_requests(m):
    """(label, body, content type, expected status, words the message must contain)."""
    c, h, w = m.model.input_shape
    good_png, _ = random_image(m.model.input_shape)
    rgb_png, _ = random_image((3, h, w))
    latent = [0.0] * m.model.latent_dim
    nan_body = json.dumps({"task": "decode", "latent": latent}).replace("0.0", "NaN", 1).encode()
    lacking = next(t for t in TASKS if t not in m.tasks)
    return [
        ("empty body", b"", "image/png", 400, ["empty"]),
        # Seeded, and with no leading image magic or JSON opener, so the expected status never varies.
        ("random bytes", random.Random(0).randbytes(512).lstrip(b" \t\r\n{[\x89\xff"), "application/octet-stream",
         415, ["PNG"]),
        ("truncated PNG", good_png[: len(good_png) // 2], "image/png", 400, ["truncated"]),
        ("5000x5000 PNG", huge_png(5000, 5000), "image/png", 413, ["5000x5000"]),
        ("3-channel image", rgb_png, "image/png", 400, ["channel"]),
        ("wrong schema: unknown field", json.dumps({"task": "decode", "latnt": latent}).encode(), "application/json",
         400, ["latnt"]),
        ("wrong schema: image is a number", json.dumps({"task": "reconstruct", "image": 5}).encode(),
         "application/json", 400, ["base64"]),
        ("wrong schema: a JSON list", b"[1, 2, 3]", "application/json", 400, ["object"]),
        ("wrong schema: invalid JSON", b"{\"task\": ", "application/json", 400, ["JSON"]),
        ("NaN in a latent", nan_body, "application/json", 400, ["NaN"]),
        ("wrong latent length", json.dumps({"task": "decode", "latent": latent + [0.0]}).encode(),
         "application/json", 400, [f"length {m.model.latent_dim}"]),
        ("n = 10**6", json.dumps({"task": "sample", "n": 10**6}).encode(), "application/json", 413, ["\"n\""]),
        ("unknown task", json.dumps({"task": "levitate"}).encode(), "application/json", 400,
         ["unknown task", *m.tasks]),
        ("task the model lacks", json.dumps({"task": lacking}).encode(), "application/json", 400,
         ["does not support", *m.tasks]),
    ]


def test_each_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(served: Served):
    name = _target(served)
    m = served.models[name]
    good_png, _ = random_image(m.model.input_shape)
    for label, body, content_type, code, words in bad_requests(m):
        status, reply = post(served.url(name), body, content_type, served.headers())
        assert status == code, (label, status, reply)
        message = reply.get("message", "")
        for word in words:
            assert word in message, (label, word, message)
        status, reply = post(served.url(name), good_png, "image/png", served.headers())
        assert status == 200, (f"valid request after {label}", reply)


def test_huge_error_causes_get_a_short_reply_not_a_connection_reset(served: Served):
    """TorchServe closes error replies with SO_LINGER=0: a long one used to reach the client as a reset."""
    name = _target(served)
    for body in ({"task": "x" * 1_000_000}, {f"k{i}": 0 for i in range(100_000)}):
        status, reply = post_json(served, name, body)
        assert status == 400 and len(reply["message"]) <= 300, (status, str(reply)[:200])


def test_bodies_over_the_models_limit_get_413_and_max_request_size_fits_the_models(served: Served):
    import re

    from zoo.serving.package import read_manifest

    name = _target(served)
    limit = read_manifest(served.mars[name])["max_body_bytes"]
    properties = (Path(served.state.directory) / "config.properties").read_text()
    assert int(re.search(r"max_request_size=(\d+)", properties).group(1)) == max(
        read_manifest(mar)["max_body_bytes"] for mar in served.mars.values())
    status, _ = post_json(served, name, b'{"task": "' + b"x" * (limit + 1) + b'"}')
    assert status == 413


def test_accept_image_png_gets_the_png_itself_through_torchserve(served: Served):
    import urllib.request

    name = _target(served)
    m = served.models[name]
    png, x = random_image(m.model.input_shape, seed=11)
    request = urllib.request.Request(served.url(name), data=png, method="POST",
                                     headers={"Content-Type": "image/png", "Accept": "image/png", **served.headers()})
    with urllib.request.urlopen(request, timeout=60) as response:
        body, content_type = response.read(), response.headers.get("Content-Type")
    assert content_type == "image/png" and body.startswith(b"\x89PNG")
    expected = m.model.run_task(m.model.default_task, x.unsqueeze(0))[0]
    assert (decode_png(body) - expected.clamp(0, 1)).abs().max() <= IMAGE_ATOL


def test_mixed_good_and_bad_requests_in_concurrent_batches(served: Served):
    name = _target(served)
    m = served.models[name]
    good = [("good", *request_for(m, task, seed=i)[:1], 200) for i, task in enumerate(m.tasks * 3)]
    bad = [(label, body, ct, code) for label, body, ct, code, _ in bad_requests(m) if label != "5000x5000 PNG"]
    jobs = []
    for i in range(max(len(good), len(bad))):
        if i < len(good):
            jobs.append((good[i][0], json.dumps(good[i][1]).encode(), "application/json", 200))
        if i < len(bad):
            jobs.append(bad[i])
    jobs = jobs * 2

    def send(job):
        label, body, content_type, code = job
        return label, code, *post(served.url(name), body, content_type, served.headers())

    with ThreadPoolExecutor(2 * BATCH_SIZE) as pool:
        results = list(pool.map(send, jobs))
    wrong = [(label, code, status, reply.get("message")) for label, code, status, reply in results if status != code]
    assert not wrong, wrong
    assert sum(1 for r in results if r[2] == 200) == 2 * len(good)


# --------------------------------------------------------------------------------------------
# Security defaults


def test_auth_is_on_no_token_is_rejected_and_the_token_works(served: Served):
    name = next(iter(served.models))
    m = served.models[name]
    request, _ = request_for(m, m.tasks[0])
    status, reply = post_json(served, name, request, headers={})
    assert status in (400, 401, 403) and "Token" in reply.get("message", ""), (status, reply)
    status, reply = post_json(served, name, request, headers={"Authorization": "Bearer wrong"})
    assert status in (400, 401, 403), (status, reply)
    status, reply = post_json(served, name, request)
    assert status == 200, reply


def test_listens_only_on_loopback_and_the_model_api_is_off(served: Served):
    pids = server.group_pids(served.state.pgid)
    sockets = []
    for pid in pids:
        try:
            sockets += listening(pid)
        except psutil.NoSuchProcess:
            continue
    assert len({c.laddr.port for c in sockets}) >= 5
    # The JVM reports IPv4 sockets as IPv4-mapped IPv6 addresses.
    assert all(c.laddr.ip.removeprefix("::ffff:") == "127.0.0.1" for c in sockets), sockets
    status, reply = post(f"{served.state.management_url}/models?url=http://example.com/x.mar", b"", None,
                         served.headers("management"))
    assert status == 405, (status, reply)
    if (os.cpu_count() or 1) <= 4:  # workers inherit OMP_NUM_THREADS=1 on small machines
        workers = [p for p in pids if "model_service_worker" in " ".join(psutil.Process(p).cmdline())]
        assert len(workers) == len(served.models)
        assert all(psutil.Process(p).environ().get("OMP_NUM_THREADS") == "1" for p in workers)
    properties = (Path(served.state.directory) / "config.properties").read_text()
    assert "enable_model_api=false" in properties
    assert "allowed_urls=file://" in properties and "model-store" in properties


# --------------------------------------------------------------------------------------------
# Self-contained archives


def test_runtime_env_has_torchserve_but_not_ae_zoo(runtime_python):
    assert python_can_import(runtime_python, "torch") and python_can_import(runtime_python, "ts")
    for module in ("zoo", "zoo_plugins", "zoo_handlers", "zoo_beta_vae", "zoo_vq_ae", "click", "huggingface_hub",
                   "tqdm"):
        assert not python_can_import(runtime_python, module), module


def test_archives_serve_from_an_environment_without_ae_zoo(served_isolated: Served):
    assert served_isolated.models, "expected archives to serve"
    for name, m in served_isolated.models.items():
        for task in m.tasks:
            request, local = request_for(m, task, seed=3)
            status, reply = post_json(served_isolated, name, request)
            assert status == 200, (name, task, reply)
            check_reply(m, task, reply, expected_output(m, task, request, local))
    log = (Path(served_isolated.state.directory) / "logs" / "model_log.log").read_text()
    origins = [line.split("zoo core from ")[1].strip() for line in log.splitlines() if "zoo core from" in line]
    assert len(origins) == len(served_isolated.models)
    assert all(o.startswith(str(Path(served_isolated.state.directory) / "tmp")) for o in origins), origins
    third_party = {type(m.model).__module__ for m in served_isolated.models.values()}
    assert {"zoo_beta_vae", "zoo_vq_ae"} <= third_party, "both example plugins should be among the isolated archives"


# --------------------------------------------------------------------------------------------
# Lifecycle through the CLI


def test_zoo_serve_and_stop_leave_no_processes(zoo_models, tmp_path):
    m = next(m for m in zoo_models.values() if not m.pretrained and m.model.architecture == "dense-vae")
    env = {**os.environ, "ZOO_SERVE_DIR": str(tmp_path / "run")}
    zoo_cli = [sys.executable, "-m", "zoo.cli"]
    result = subprocess.run([*zoo_cli, "serve", str(m.mar), "--max-batch-delay", "1"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "key file" in result.stdout and "127.0.0.1" in result.stdout
    state = server.ServerState.read(tmp_path / "run")
    pids = server.group_pids(state.pgid)
    assert len(pids) >= 3  # launcher, JVM, worker
    png, _ = random_image(m.model.input_shape)
    (tmp_path / "in.png").write_bytes(png)
    result = subprocess.run([*zoo_cli, "predict", m.mar.stem, str(tmp_path / "in.png"), "--out",
                             str(tmp_path / "out.png")], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert decode_png(__import__("base64").b64encode((tmp_path / "out.png").read_bytes())).shape[1:] == \
        m.model.input_shape[1:]
    result = subprocess.run([*zoo_cli, "serve", "--stop"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "stopped" in result.stdout, result.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                                              for p in pids):
        time.sleep(0.2)
    survivors = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not survivors, survivors
    leftovers = [p.pid for p in psutil.process_iter(["cmdline"])
                 if any(str(tmp_path) in part for part in (p.info["cmdline"] or []))]
    assert not leftovers, leftovers
    assert server.ServerState.read(tmp_path / "run") is None
    result = subprocess.run([*zoo_cli, "serve", "--stop"], env=env, capture_output=True, text=True, timeout=60)
    assert "no server" in result.stdout


def test_package_writes_a_kserve_layout(zoo_models, tmp_path):
    m = zoo_models["conv-vae-fresh"]
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "package", str(m.folder), "--out", str(tmp_path / "out"),
                             "--batch-size", "4", "--kserve", str(tmp_path / "kserve")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    properties = (tmp_path / "kserve" / "config" / "config.properties").read_text()
    mars = list((tmp_path / "kserve" / "model-store").glob("*.mar"))
    assert [p.name for p in mars] == [f"{m.folder.name}.mar"]
    snapshot = json.loads(next(line for line in properties.splitlines() if line.startswith("model_snapshot="))
                          .split("=", 1)[1])
    entry = snapshot["models"][m.folder.name]["1.0"]
    assert entry["marName"] == mars[0].name and entry["batchSize"] == 4
    assert "model_store=/mnt/models/model-store" in properties and "enable_model_api=false" in properties


def test_zoo_serve_reuses_an_archive_until_something_in_it_changes(zoo_models, tmp_path):
    from zoo.serving.package import package_cached

    m = zoo_models["dense-vae-fresh"]
    folder = tmp_path / "model"
    shutil.copytree(m.folder, folder)
    first = package_cached(folder, tmp_path / "build")
    built = first.stat().st_mtime_ns
    assert package_cached(folder, tmp_path / "build").stat().st_mtime_ns == built
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config, indent=1))  # same model, different bytes
    assert package_cached(folder, tmp_path / "build").stat().st_mtime_ns != built
    assert len(list((tmp_path / "build").glob("*.stamp"))) == 1


def test_a_key_file_still_being_written_reads_as_no_keys_yet(tmp_path):
    key_file = tmp_path / "key_file.json"
    state = server.ServerState(pid=1, pgid=1, directory=str(tmp_path), inference_url="", management_url="",
                               metrics_url="", grpc_inference_port=0, grpc_management_port=0, models=[],
                               auth=True, key_file=str(key_file), started=0.0)
    key_file.write_text("")  # TorchServe creates the file before it writes the keys
    assert state.keys() == {} and state.headers() == {}
    key_file.write_text('{"inference": {"key": "abc"}, "management": {"key": "def"}}')
    assert state.headers() == {"Authorization": "Bearer abc"}
