"""Fuzz: hypothesis-generated malformed requests against a served model; count 4xx, 5xx and worker restarts.

Requests are drawn from five families: random bytes; a valid 28x28 PNG that is
truncated, bit-flipped, spliced or given a forged (CRC-correct) header size; JSON
objects mixing the real fields (task, image, latent, n, seed) with wrong types,
NaN/inf, huge or negative numbers, wrong lengths and unknown keys; JSON that is
not an object; and broken JSON text. Each goes with one of the content types a
client may send (image/png, image/jpeg, application/json,
application/octet-stream, text/plain, form-urlencoded, multipart). A 5xx is
attributed to the handler or to TorchServe's Java frontend (which, e.g., answers
500 ErrorDataDecoderException to binary bodies sent as form-urlencoded before
any handler runs). Goal: no 5xx and no worker restarts; a
request that happens to be valid may get 200 and is counted as such.

    python benchmarks/serve_fuzz.py [--examples 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import struct
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from serve_common import MODEL, benchmark_model, digit_png, dump, start_server, temp_dir, worker_pids, worker_status
from zoo.serving import server
from zoo.tasks import TASKS

VALID_PNG = digit_png()
CONTENT_TYPES = ["image/png", "image/jpeg", "application/json", "application/octet-stream", "text/plain",
                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=zoo"]


def _forge_png_size(width: int, height: int) -> bytes:
    """The valid PNG with its IHDR width/height replaced (CRC recomputed), pixel data unchanged."""
    ihdr = bytearray(VALID_PNG[8:33])  # length(4) type(4) data(13) crc(4)
    ihdr[8:16] = struct.pack(">II", width, height)
    ihdr[21:25] = struct.pack(">I", zlib.crc32(bytes(ihdr[4:21])) & 0xFFFFFFFF)
    return VALID_PNG[:8] + bytes(ihdr) + VALID_PNG[33:]


@st.composite
def mutated_png(draw) -> bytes:
    data = bytearray(VALID_PNG)
    kind = draw(st.sampled_from(["truncate", "flip", "splice", "forge"]))
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if kind == "splice":
        i = draw(st.integers(0, len(data)))
        return bytes(data[:i]) + draw(st.binary(min_size=1, max_size=64)) + bytes(data[i:])
    return _forge_png_size(draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 2**31 - 1)))


json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=16))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c,
                                                                                               max_size=4),
                           max_leaves=12)
latents = (st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=40)
           | st.lists(st.integers(-(2**70), 2**70), min_size=32, max_size=32) | json_values)
images = (st.builds(lambda b: base64.b64encode(b).decode(), mutated_png() | st.binary(max_size=256))
          | st.text(max_size=40) | json_values)
tasks = st.sampled_from(list(TASKS)) | st.text(max_size=12) | json_values


@st.composite
def json_object(draw) -> bytes:
    obj = {}
    if draw(st.booleans()):
        obj["task"] = draw(tasks)
    for key, strategy in (("image", images), ("latent", latents), ("n", st.integers(-(2**40), 2**40) | json_values),
                          ("seed", st.integers(-(2**70), 2**70) | json_values)):
        if draw(st.integers(0, 3)) == 0:
            obj[key] = draw(strategy)
    obj.update(draw(st.dictionaries(st.text(max_size=6), json_values, max_size=2)))
    return json.dumps(obj, allow_nan=True).encode()


requests = st.tuples(
    st.one_of(
        st.binary(max_size=2048),
        mutated_png(),
        json_object(),
        st.builds(lambda v: json.dumps(v, allow_nan=True).encode(), json_values),
        st.text(max_size=200).map(lambda t: ("{" + t).encode("utf-8", "surrogatepass")),
    ),
    st.sampled_from(CONTENT_TYPES),
)


def send(url: str, body: bytes, content_type: str, headers: dict) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type, **headers}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read(300).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(300).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        return -1, str(exc)


HANDLER_TYPES = {"Bad Request", "Not Found", "Payload Too Large", "Unsupported Media Type", "Unprocessable Entity",
                 "Internal Server Error"}


def origin(text: str) -> str:
    """'handler' for replies our handler wrote, else 'frontend' (TorchServe's Java side, e.g. its form decoder)."""
    try:
        kind = json.loads(text).get("type")
    except ValueError:
        return "frontend"
    return "handler" if kind in HANDLER_TYPES else "frontend"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    tmp = temp_dir("zoo-bench-fuzz-")
    source, _, description = benchmark_model(tmp)
    state, _ = start_server(source, tmp, batch_size=8)
    counts = {"2xx": 0, "4xx": 0, "5xx": 0, "transport": 0}
    by_status: dict[int, int] = {}
    five_xx: list[dict] = []
    try:
        url = f"{state.inference_url}/predictions/{MODEL}"
        headers = state.headers()
        before = worker_pids(state)

        @seed(args.seed)
        @settings(max_examples=args.examples, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(requests)
        def fuzz(request):
            body, content_type = request
            status, text = send(url, body, content_type, headers)
            by_status[status] = by_status.get(status, 0) + 1
            key = "transport" if status < 0 else f"{status // 100}xx"
            counts[key] = counts.get(key, 0) + 1
            if status >= 500 or status < 0:
                five_xx.append({"status": status, "content_type": content_type, "body": body[:80].hex(),
                                "reply": text[:200], "origin": origin(text)})

        fuzz()
        valid = send(url, VALID_PNG, "image/png", headers)[0]
        after = worker_pids(state)
        statuses = worker_status(state)
        log = (Path(state.directory) / "logs" / "model_log.log").read_text(errors="replace")
    finally:
        server.stop(state.directory)
        shutil.rmtree(tmp, ignore_errors=True)
    report = {
        "model": description, "examples": sum(counts.values()), "counts": counts,
        "by_status": {str(k): v for k, v in sorted(by_status.items())},
        "worker_restarts": len(set(after) - set(before)), "worker_pids_before": before, "worker_pids_after": after,
        "worker_status_after": statuses, "valid_request_after_fuzz": valid,
        "worker_died_in_log": log.count("Worker died") + log.count("Backend worker process died"),
        "five_xx_from_handler": sum(1 for e in five_xx if e["origin"] == "handler" and e["status"] >= 500),
        "five_xx_from_frontend": sum(1 for e in five_xx if e["origin"] == "frontend" and e["status"] >= 500),
        "five_xx_examples": five_xx[:10],
    }
    print(f"{report['examples']} malformed requests: {counts} (5xx from the handler: "
          f"{report['five_xx_from_handler']}, from TorchServe's frontend before the handler: "
          f"{report['five_xx_from_frontend']}); worker restarts {report['worker_restarts']}; "
          f"valid request afterwards -> {valid}", flush=True)
    print(dump(report))
    return report


if __name__ == "__main__":
    result = main()
    sys.exit(0 if result["five_xx_from_handler"] == 0 and result["worker_restarts"] == 0 else 1)
