"""The serving handler on CPU vs CUDA (fp32 and half), in process, from a self-contained .mar.

Unpacks the archive, puts it first on ``sys.path`` the way a TorchServe worker
does, and initialises the archive's ``ZooHandler`` three times with TorchServe's
own ``Context``: on the CPU (the reference), on ``cuda:0``, and on ``cuda:0``
with ``half: true``. It checks that the CUDA replies match the CPU replies
(PNG outputs within a few 8-bit levels) and prints the images/s of ``handle()``
for the model's default task at several batch sizes, with the ratio to the CPU
measured in the same run. Needs torch, Pillow, pluggy, safetensors and
TorchServe's ``ts`` package; ae-zoo itself need not be installed.

    python benchmarks/handler_devices.py build/conv-vae-mnist.mar [--batch-sizes 8 64] [--seconds 3]
"""

import argparse
import base64
import io
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch
from PIL import Image


def unpack(mar: Path) -> Path:
    target = Path(tempfile.mkdtemp(prefix="zoo-handler-devices-"))
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(target)
    sys.path.insert(0, str(target))
    return target


def make_handler(model_dir: Path, gpu_id, options: dict):
    from ts.context import Context
    from zoo_handler import ZooHandler

    handler = ZooHandler()
    handler.initialize(Context("m", str(model_dir), {}, 64, gpu_id, "0.12.0", model_yaml_config={"handler": options}))
    return handler


def handle(handler, model_dir: Path, rows: list[dict]) -> list[dict]:
    from ts.context import Context, RequestProcessor

    context = Context("m", str(model_dir), {}, len(rows), None, "0.12.0")
    context.request_processor = [RequestProcessor({}) for _ in rows]
    replies = handler.handle(rows, context)
    statuses = [context.get_response_status(i)[0] for i in range(len(rows))]
    if any(s != 200 for s in statuses):
        raise SystemExit(f"non-200 replies: {statuses}: {replies[:1]}")
    return [json.loads(r) for r in replies]


def request_rows(shape: tuple[int, int, int], n: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        pixels = (torch.rand(shape, generator=g) * 255).to(torch.uint8)
        mode = "L" if shape[0] == 1 else "RGB"
        image = Image.fromarray(pixels.permute(1, 2, 0).squeeze(-1).numpy(), mode)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        rows.append({"body": buffer.getvalue()})
    return rows


def pixels(reply: dict) -> torch.Tensor:
    encoded = reply.get("image") or reply["images"][0]
    import numpy as np

    return torch.from_numpy(np.array(Image.open(io.BytesIO(base64.b64decode(encoded))))).float()


def throughput(handler, model_dir: Path, rows: list[dict], seconds: float) -> float:
    for _ in range(5):
        handle(handler, model_dir, rows)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        handle(handler, model_dir, rows)
        done += len(rows)
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mar", type=Path)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("CUDA is not available on this machine")
    model_dir = unpack(args.mar)
    variants = {"cpu": (None, {}), "cuda": (0, {}), "cuda-half": (0, {"half": True})}
    handlers = {name: make_handler(model_dir, gpu, options) for name, (gpu, options) in variants.items()}
    import zoo

    service = handlers["cpu"].service
    print(f"{args.mar.name}: zoo core from {Path(zoo.__file__).parent}; task {service.model.default_task}; "
          f"devices {[str(h.service.device) for h in handlers.values()]}; torch {torch.__version__}; "
          f"{torch.cuda.get_device_name(0)}; cpu threads {torch.get_num_threads()}")
    rows = request_rows(service.model.input_shape, max(args.batch_sizes))
    reference = [pixels(r) for r in handle(handlers["cpu"], model_dir, rows)]
    for name in ("cuda", "cuda-half"):
        served = [pixels(r) for r in handle(handlers[name], model_dir, rows)]
        worst = max((a - b).abs().max().item() for a, b in zip(reference, served))
        print(f"{name}: largest difference from the CPU reply {worst:.0f}/255 over {len(rows)} images")
    for batch in args.batch_sizes:
        rates = {name: throughput(h, model_dir, rows[:batch], args.seconds) for name, h in handlers.items()}
        ratios = ", ".join(f"{name} {rate:.0f} img/s ({rate / rates['cpu']:.2f}x cpu)" for name, rate in rates.items())
        print(f"batch {batch}: {ratios}")


if __name__ == "__main__":
    main()
