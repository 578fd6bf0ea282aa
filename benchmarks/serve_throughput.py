"""Throughput and latency of a served conv-vae-mnist (reconstruct, 28x28 PNG) at concurrency 8.

For batch sizes 1 and 8 it starts a real TorchServe (1 worker, OMP_NUM_THREADS=1,
max_batch_delay 5 ms, token auth on), warms it up, then runs a closed-loop
aiohttp load (see serve_common) and reports requests/s, p50 and p99, once for
each reply format (``Accept: application/json``: base64 PNG in JSON, and
``Accept: image/png``: the PNG itself). In the same run it measures the same
archive's handler ``handle()`` in this process (torch limited to 1 thread like
the worker) on batches of the same size with the same headers, and prints the
ratio HTTP req/s : in-process images/s. With ``--engine torchserve kserve`` it
does the same against KServe's own model server (``zoo serve --engine kserve``)
in the same run. Last, it times ``zoo serve`` from the command to READY, twice
(the second reuses the archive it built).

    python benchmarks/serve_throughput.py [--requests 4000] [--concurrency 8] [--engine torchserve kserve]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

import torch

from serve_common import MODEL, benchmark_model, digit_png, dump, in_process_handler, in_process_throughput, load, \
    start_server, temp_dir
from zoo.serving import server


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--accept", nargs="+", default=["application/json", "image/png"])
    parser.add_argument("--engine", nargs="+", choices=["torchserve", "kserve"], default=["torchserve"])
    parser.add_argument("--in-process-seconds", type=float, default=5.0)
    args = parser.parse_args(argv)

    tmp = temp_dir("zoo-bench-throughput-")
    source, _, description = benchmark_model(tmp)
    body = digit_png()
    print(f"model: {description}; request: reconstruct, 28x28 PNG ({len(body)} bytes) as image/png", flush=True)
    results = {"model": description, "concurrency": args.concurrency, "runs": []}
    try:
        for engine in args.engine:
            for batch_size in args.batch_sizes:
                for accept in args.accept:
                    results["runs"].append(measure(source, tmp, body, batch_size, accept, engine, args))
        results["zoo_serve_to_ready_s"] = time_zoo_serve(source, tmp)
        print(f"zoo serve to READY: {results['zoo_serve_to_ready_s']} s (first: builds the archive; "
              "second: reuses it)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(dump(results))
    return results


def measure(source, tmp, body: bytes, batch_size: int, accept: str, engine: str, args) -> dict:
    state, mar = start_server(source, tmp, batch_size, engine=engine)
    headers = {"Accept": accept}
    try:
        url = state.predict_url(MODEL)
        load(url, body, headers={**state.headers(), **headers}, concurrency=args.concurrency, total=args.warmup)
        http = load(url, body, headers={**state.headers(), **headers}, concurrency=args.concurrency,
                    total=args.requests)
    finally:
        server.stop(state.directory)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like the worker (OMP_NUM_THREADS=1)
    try:
        handle = in_process_handler(mar, tmp, batch_size, headers)
        local = in_process_throughput(handle, body, batch_size, args.in_process_seconds)
    finally:
        torch.set_num_threads(threads)
    summary = http.summary()
    run = {"engine": engine, "batch_size": batch_size, "accept": accept, "http": summary,
           "in_process_img_per_s": round(local, 1), "http_to_in_process": round(summary["req_per_s"] / local, 3)}
    print(f"{engine}, batch {batch_size}, Accept {accept}: {summary['req_per_s']} req/s, p50 {summary['p50_ms']} ms, "
          f"p99 {summary['p99_ms']} ms, statuses {summary['statuses']}; in-process handle() "
          f"{local:.0f} img/s; HTTP/in-process = {run['http_to_in_process']:.2f}", flush=True)
    return run


def time_zoo_serve(source: str, tmp) -> list[float]:
    """Seconds from running `zoo serve MODEL` to its return (every worker READY), twice in one run directory."""
    env = {**os.environ, "ZOO_SERVE_DIR": str(tmp / "zoo-serve")}
    zoo_cli = [sys.executable, "-m", "zoo.cli"]
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run([*zoo_cli, "serve", source], env=env, check=True, capture_output=True)
        seconds.append(round(time.perf_counter() - start, 2))
        subprocess.run([*zoo_cli, "serve", "--stop"], env=env, check=True, capture_output=True)
    return seconds


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
