"""Shared pieces of the serving benchmarks: the model, a server, an asyncio load generator, worker RSS.

The load generator is aiohttp (``pip install aiohttp``): one ClientSession with
a keep-alive connection pool of ``concurrency`` connections and ``concurrency``
coroutines, each sending its next request as soon as the previous reply has
been read, so exactly ``concurrency`` requests are in flight (a closed loop).
Latency is measured per request with ``time.perf_counter`` around send + read.
"""

from __future__ import annotations

import asyncio
import io
import json
import statistics
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch

import zoo
from zoo.serving import PackageOptions, package, server

MODEL = "conv-vae-mnist"


def benchmark_model(tmp: Path) -> tuple[str, Path, str]:
    """(source for `zoo package`, folder, description): the trained conv-vae-mnist if registered, else untrained."""
    if MODEL in zoo.list_models():
        from zoo.plugins import get_host
        from zoo.resolve import resolve_pretrained

        return MODEL, resolve_pretrained(get_host().registry.model(MODEL)), f"{MODEL} (pretrained)"
    torch.manual_seed(0)
    model = zoo.create("conv-vae", preset="mnist")
    folder = model.save_pretrained(tmp / MODEL)
    return str(folder), folder, f"{MODEL} (untrained conv-vae, mnist preset: not registered yet)"


def digit_png(seed: int = 0) -> bytes:
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (28, 28), generator=g, dtype=torch.uint8)
    image = Image.frombytes("L", (28, 28), bytes(pixels.flatten().tolist()))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def start_server(source: str, tmp: Path, batch_size: int, max_batch_delay: int = 5, workers: int = 1,
                 engine: str = "torchserve"):
    """(state, mar): TorchServe, or KServe's model server (``engine="kserve"``, one worker), on ``source``."""
    options = PackageOptions(batch_size=batch_size, max_batch_delay=max_batch_delay, workers=workers)
    mar = package(source, tmp / f"mars-{batch_size}", options, name=MODEL)
    directory = tmp / f"run-{batch_size}-{time.monotonic_ns()}"
    if engine == "kserve":
        from zoo.serving import kserve_engine

        return kserve_engine.start(mar, directory, batch_size=batch_size, max_batch_delay=max_batch_delay), mar
    state = server.start([mar], directory, batch_size=batch_size, max_batch_delay=max_batch_delay, workers=workers)
    return state, mar


def worker_pids(state) -> list[int]:
    info = server.get_json(f"{state.management_url}/models/{MODEL}", state.headers("management"))
    return [int(w["pid"]) for w in info[0]["workers"] if w.get("pid") not in (None, -1)]


def worker_status(state) -> list[str]:
    info = server.get_json(f"{state.management_url}/models/{MODEL}", state.headers("management"))
    return [w.get("status") for w in info[0]["workers"]]


def rss_mb(pids: list[int]) -> list[float]:
    return [round(psutil.Process(p).memory_info().rss / 2**20, 1) for p in pids]


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0  # transport errors (connection reset, timeout)
    seconds: float = 0.0
    timeline: list[tuple[float, float, int]] = field(default_factory=list)  # (start, end, status) if recorded

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000

    def summary(self) -> dict:
        return {
            "requests": self.count, "ok": self.ok, "non_200": self.count - self.ok - self.errors,
            "transport_errors": self.errors, "seconds": round(self.seconds, 2),
            "req_per_s": round(self.count / self.seconds, 1) if self.seconds else None,
            "p50_ms": round(self.percentile(50), 2), "p99_ms": round(self.percentile(99), 2),
            "mean_ms": round(statistics.fmean(self.latencies) * 1000, 2) if self.latencies else None,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
        }


async def _load(url: str, body: bytes, content_type: str, headers: dict, concurrency: int, total: int | None,
                duration: float | None, record: bool, timeout: float, on_progress=None) -> LoadResult:
    import aiohttp

    result = LoadResult()
    sent = 0
    start = time.perf_counter()
    stop_at = start + duration if duration else None
    all_headers = {"Content-Type": content_type, **headers}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    client_timeout = aiohttp.ClientTimeout(total=timeout)

    async def one(session):
        nonlocal sent
        while True:
            if total is not None and sent >= total:
                return
            if stop_at is not None and time.perf_counter() >= stop_at:
                return
            sent += 1
            t0 = time.perf_counter()
            status = -1
            try:
                async with session.post(url, data=body, headers=all_headers) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, asyncio.TimeoutError):
                result.errors += 1
            t1 = time.perf_counter()
            result.latencies.append(t1 - t0)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if record:
                result.timeline.append((t0 - start, t1 - start, status))
            if on_progress is not None:
                on_progress(result)

    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        await asyncio.gather(*(one(session) for _ in range(concurrency)))
    result.seconds = time.perf_counter() - start
    return result


def load(url: str, body: bytes, content_type: str = "image/png", headers: dict | None = None, concurrency: int = 8,
         total: int | None = None, duration: float | None = None, record: bool = False, timeout: float = 60,
         on_progress=None) -> LoadResult:
    """Closed-loop load: ``concurrency`` requests in flight until ``total`` are sent or ``duration`` s pass."""
    return asyncio.run(_load(url, body, content_type, headers or {}, concurrency, total, duration, record, timeout,
                             on_progress))


def in_process_handler(mar: Path, tmp: Path, batch_size: int, headers: dict | None = None):
    """The archive's handler, initialised in this process with TorchServe's own Context classes.

    ``headers`` are the HTTP headers every request carries (e.g. ``Accept``).
    """
    from ts.context import Context, RequestProcessor

    from zoo_handlers.zoo_handler import ZooHandler

    unpacked = tmp / f"unpacked-{batch_size}-{time.monotonic_ns()}"
    with zipfile.ZipFile(mar) as z:
        z.extractall(unpacked)
    context = Context(MODEL, str(unpacked), {}, batch_size, None, "0.12.0", model_yaml_config={"handler": {}})
    handler = ZooHandler()
    handler.initialize(context)

    def handle(rows):
        context.request_processor = [RequestProcessor(dict(headers or {})) for _ in rows]
        replies = handler.handle(rows, context)
        assert all(context.get_response_status(i)[0] == 200 for i in range(len(rows)))
        return replies

    return handle


def in_process_throughput(handle, body: bytes, batch_size: int, seconds: float = 5.0) -> float:
    """Images per second through ``handle()`` on batches of ``batch_size`` copies of ``body``."""
    rows = [{"body": body} for _ in range(batch_size)]
    for _ in range(20):
        handle(rows)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        handle(rows)
        done += batch_size
    return done / (time.perf_counter() - start)


def temp_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def dump(data) -> str:
    return json.dumps(data, indent=2)
