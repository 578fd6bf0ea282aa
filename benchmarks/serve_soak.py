"""Soak: 20,000 reconstruct requests at concurrency 16 against one worker; errors and worker RSS over time.

    python benchmarks/serve_soak.py [--requests 20000] [--concurrency 16] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time

from serve_common import MODEL, benchmark_model, digit_png, dump, load, rss_mb, start_server, temp_dir, worker_pids
from zoo.serving import server


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)

    tmp = temp_dir("zoo-bench-soak-")
    source, _, description = benchmark_model(tmp)
    body = digit_png()
    print(f"model: {description}; {args.requests} requests at concurrency {args.concurrency}, "
          f"batch size {args.batch_size}", flush=True)
    state, _ = start_server(source, tmp, args.batch_size)
    try:
        url = f"{state.inference_url}/predictions/{MODEL}"
        pids = worker_pids(state)
        load(url, body, headers=state.headers(), concurrency=args.concurrency, total=200)  # warm
        rss_start = rss_mb(pids)
        samples = []
        stop = threading.Event()

        def sample():
            t0 = time.monotonic()
            while not stop.wait(5.0):
                try:
                    samples.append((round(time.monotonic() - t0, 1), rss_mb(pids)))
                except Exception:
                    samples.append((round(time.monotonic() - t0, 1), None))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        result = load(url, body, headers=state.headers(), concurrency=args.concurrency, total=args.requests)
        stop.set()
        sampler.join()
        rss_end = rss_mb(pids)
        pids_end = worker_pids(state)
    finally:
        server.stop(state.directory)
        shutil.rmtree(tmp, ignore_errors=True)
    summary = result.summary()
    report = {
        "model": description, "concurrency": args.concurrency, "batch_size": args.batch_size, "http": summary,
        "errors": summary["requests"] - summary["ok"], "worker_pids_start": pids, "worker_pids_end": pids_end,
        "worker_restarts": int(pids != pids_end), "worker_rss_mb_start": rss_start, "worker_rss_mb_end": rss_end,
        "worker_rss_mb_samples_every_5s": samples,
    }
    print(f"{summary['requests']} requests in {summary['seconds']} s ({summary['req_per_s']} req/s), "
          f"errors {report['errors']}, p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms; worker RSS "
          f"{rss_start} MB -> {rss_end} MB; restarts {report['worker_restarts']}", flush=True)
    print(dump(report))
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["errors"] == 0 else 1)
