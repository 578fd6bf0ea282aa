"""The model service behind the TorchServe handler: load, validate requests, batch, encode replies.

Nothing here knows an architecture by name. A request is parsed according to
the *kinds* of the task it asks for (:class:`zoo.tasks.Task`): image-input tasks
take a PNG/JPEG, latent-input tasks a vector of ``model.latent_dim`` numbers,
count-input tasks ``n`` (and an optional ``seed``). Replies are built from the
task's output kind: images become base64 PNGs, vectors lists of floats, scalars
floats.

This module imports only the standard library, torch, Pillow and the zoo core,
so it runs inside a self-contained ``.mar`` on a TorchServe without ae-zoo.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import io
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: Written by ``zoo package`` into the archive: which plugin modules to register.
SERVING_MANIFEST = "zoo-serving.json"

JSON_FIELDS = ("task", "image", "latent", "n", "seed")
IMAGE_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
MAX_SEED = 2**63 - 1


class RequestError(Exception):
    """A client error: becomes this request's own 4xx reply; the rest of the batch proceeds."""

    PHRASES = {400: "Bad Request", 404: "Not Found", 413: "Payload Too Large", 415: "Unsupported Media Type",
               422: "Unprocessable Entity"}

    def __init__(self, message: str, code: int = 400):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def phrase(self) -> str:
        return self.PHRASES.get(self.code, "Bad Request")


@dataclass
class Options:
    """Handler options from the ``handler:`` section of ``model-config.yaml``."""

    half: bool = False            # float16 autocast on CUDA (ignored, with a warning, on CPU)
    compile: bool = False         # torch.compile the task methods; warm-up then compiles at load
    compile_mode: str | None = None
    compile_backend: str = "inductor"
    warmup: bool = True           # run every task once at load so the first request is not slow
    max_n: int = 64               # most images one sample request may ask for
    max_image_side: int = 4096    # header dimensions above this are refused before decoding
    max_image_pixels: int = 16_777_216
    max_abs_latent: float = 1e4   # latent values must be finite and at most this in magnitude
    max_body_bytes: int = 8 << 20

    @classmethod
    def from_yaml(cls, section: dict[str, Any] | None) -> "Options":
        section = dict(section or {})
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(section) - names)
        if unknown:
            raise ValueError(f"model-config.yaml handler: unknown option(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(names))}")
        return cls(**section)


@dataclass
class Prepared:
    """One validated request: its task and its input (a tensor item, a latent vector or a count)."""

    index: int
    task: str
    value: Any
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Loading


def select_device(gpu_id: Any) -> torch.device:
    """``cuda:{gpu_id}`` when CUDA is available and TorchServe assigned a GPU, else CPU."""
    if torch.cuda.is_available() and gpu_id is not None and str(gpu_id) != "" and int(gpu_id) >= 0:
        return torch.device(f"cuda:{int(gpu_id)}")
    return torch.device("cpu")


def build_model(model_dir: Path, plugin_modules: list[str], device: torch.device):
    """Register the listed plugin modules directly (no entry points needed) and load the checkpoint."""
    from zoo.checkpoint import load_checkpoint
    from zoo.plugins import PluginHost

    host = PluginHost(strict=False)
    for name in plugin_modules:
        host.register_module(importlib.import_module(name), name=name)
    host.collect()
    problems = [e for r in host.records.values() for e in r.errors]
    if problems:
        logger.warning("plugin problems while loading: %s", "; ".join(problems))
    return load_checkpoint(model_dir, host.registry.architectures, device)


def read_manifest(model_dir: Path) -> dict[str, Any]:
    path = model_dir / SERVING_MANIFEST
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: package the model with `zoo package`")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------------------------
# The service


class ZooService:
    """A loaded model plus everything needed to answer batches of TorchServe requests."""

    def __init__(self, model, device: torch.device, options: Options | None = None, name: str | None = None):
        from zoo.tasks import TASKS

        self.model = model
        self.device = device
        self.options = options or Options()
        self.name = name or model.architecture
        self.tasks = tuple(model.tasks)
        self.task_kinds = {t: TASKS[t] for t in self.tasks}
        self.all_tasks = tuple(TASKS)
        self.input_shape = tuple(model.input_shape)
        self.latent_dim = model.latent_dim
        self.dtype = torch.float32  # inputs stay float32; half precision runs under autocast
        self.autocast = bool(self.options.half and device.type == "cuda")
        if self.options.half and not self.autocast:
            logger.warning("half precision requested but the device is %s; staying in float32", device)
        self._runners: dict[str, Any] = {t: self._eager_runner(t) for t in self.tasks}
        if self.options.compile:
            self._compile()
        if self.options.warmup:
            self.warmup()

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, gpu_id: Any = None, yaml_config: dict | None = None,
                       name: str | None = None) -> "ZooService":
        model_dir = Path(model_dir)
        manifest = read_manifest(model_dir)
        options = Options.from_yaml((yaml_config or {}).get("handler"))
        device = select_device(gpu_id)
        model = build_model(model_dir, manifest.get("plugins", []), device)
        return cls(model, device, options, name=name or manifest.get("model_name"))

    # Running ------------------------------------------------------------------------------

    def _eager_runner(self, task: str):
        def run(inputs, generator=None):
            return self.model.run_task(task, inputs, generator=generator)
        return run

    def _compile(self) -> None:
        for task, spec in self.task_kinds.items():
            if spec.input == "count":
                continue  # the count is a Python int: nothing for the compiler to gain
            try:
                self._runners[task] = torch.compile(self._eager_runner(task), mode=self.options.compile_mode,
                                                    backend=self.options.compile_backend, dynamic=True)
            except Exception as exc:  # pragma: no cover - depends on the toolchain
                logger.warning("torch.compile failed for %s (%s); using eager mode", task, exc)

    def warmup(self) -> None:
        """Run every declared task once, at batch sizes 1 and 2, so compilation and allocation happen at load."""
        start = time.perf_counter()
        for task in self.tasks:
            try:
                self._warm(task)
            except Exception as exc:
                if not self.options.compile:
                    raise
                logger.warning("warm-up of compiled %s failed (%s); falling back to eager mode", task, exc)
                self._runners[task] = self._eager_runner(task)
                self._warm(task)
        logger.info("warm-up of %s took %.2f s", ", ".join(self.tasks), time.perf_counter() - start)

    def _warm(self, task: str) -> None:
        kind = self.task_kinds[task].input
        for size in (1, 2):
            if kind == "count":
                self._run(task, size, torch.Generator(device=self.device).manual_seed(0))
            elif kind == "latent":
                self._run(task, torch.zeros(size, self.latent_dim, device=self.device, dtype=self.dtype))
            else:
                self._run(task, torch.full((size, *self.input_shape), 0.5, device=self.device, dtype=self.dtype))

    @torch.no_grad()
    def _run(self, task: str, inputs, generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.autocast):
            out = self._runners[task](inputs, generator)
        return out.detach().float().cpu()

    # Batches ------------------------------------------------------------------------------

    def handle(self, data: list[dict[str, Any]], context) -> list[str]:
        """TorchServe entry point: one JSON reply per request; bad requests get their own 4xx status."""
        replies: list[Any] = [None] * len(data)
        prepared: list[Prepared] = []
        for i, row in enumerate(data):
            try:
                prepared.append(self.prepare(i, row, _content_type(context, i, row)))
            except RequestError as exc:
                replies[i] = self._error(context, i, exc.code, exc.phrase, exc.message)
            except Exception as exc:  # anything unexpected while parsing is still the client's input
                logger.exception("unexpected error while parsing request %d", i)
                replies[i] = self._error(context, i, 400, "Bad Request", f"could not parse the request: {exc}")
        for task in dict.fromkeys(p.task for p in prepared):
            group = [p for p in prepared if p.task == task]
            try:
                for p, body in zip(group, self.compute(task, group)):
                    replies[p.index] = _dumps(body)
                    _set_json(context, p.index)
            except RequestError as exc:
                for p in group:
                    replies[p.index] = self._error(context, p.index, exc.code, exc.phrase, exc.message)
            except Exception as exc:
                logger.exception("task %s failed on a batch of %d", task, len(group))
                for p in group:
                    replies[p.index] = self._error(context, p.index, 500, "Internal Server Error",
                                                   f"{task} failed: {type(exc).__name__}: {exc}")
        return replies

    def compute(self, task: str, group: list[Prepared]) -> list[dict[str, Any]]:
        """Answer every request of one task: one forward pass for image and latent inputs."""
        spec = self.task_kinds[task]
        if spec.input == "count":
            return [self._reply(task, self._sample(task, p), many=True) for p in group]
        batch = torch.stack([p.value for p in group]).to(self.device, self.dtype)
        out = self._run(task, batch)
        if out.shape[0] != len(group):
            raise RuntimeError(f"{task} returned {out.shape[0]} results for {len(group)} inputs")
        return [self._reply(task, out[i]) for i in range(len(group))]

    def _sample(self, task: str, p: Prepared) -> torch.Tensor:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(p.seed if p.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
        return self._run(task, p.value, generator)

    def _reply(self, task: str, out: torch.Tensor, many: bool = False) -> dict[str, Any]:
        kind = self.task_kinds[task].output
        reply: dict[str, Any] = {"model": self.name, "task": task}
        if kind == "image" and many:
            reply["images"] = [encode_png(img) for img in out]
        elif kind == "image":
            reply["image"] = encode_png(out)
        elif kind == "vector":
            reply["vector"] = _floats(out.flatten())
        else:
            reply["scalar"] = _floats(out.reshape(1))[0]
        if kind == "image":
            reply["content_type"] = "image/png"
        return reply

    @staticmethod
    def _error(context, idx: int, code: int, phrase: str, message: str) -> str:
        if context is not None:
            context.set_response_status(code, phrase, idx=idx)
        _set_json(context, idx)
        return _dumps({"code": code, "type": phrase, "message": message})

    # Requests -----------------------------------------------------------------------------

    def prepare(self, index: int, row: Any, content_type: str | None) -> Prepared:
        """Validate one request into a :class:`Prepared`, or raise RequestError with a clear message."""
        body = _body(row)
        if isinstance(body, (bytes, bytearray)):
            body = bytes(body)
            if len(body) == 0:
                raise RequestError("empty request body: send a PNG/JPEG image or a JSON object "
                                   f"such as {{\"task\": \"{self.tasks[0]}\", ...}}")
            if len(body) > self.options.max_body_bytes:
                raise RequestError(f"request body of {len(body)} bytes exceeds {self.options.max_body_bytes}", 413)
            if body.startswith(PNG_MAGIC) or body.startswith(JPEG_MAGIC):
                return self._image_request(index, self.model_default_task(), body)
            if (content_type or "").split(";")[0].strip().lower() == "application/json" or body.lstrip()[:1] in (b"{", b"["):
                try:
                    body = json.loads(body.decode("utf-8"))
                except (UnicodeDecodeError, ValueError) as exc:
                    raise RequestError(f"the body is not valid JSON: {exc}") from None
            else:
                raise RequestError(
                    f"unsupported body (Content-Type {content_type or 'unknown'}): send a PNG or JPEG image, "
                    "or a JSON object with Content-Type application/json", 415)
        elif isinstance(body, str):
            try:
                body = json.loads(body)
            except ValueError as exc:
                raise RequestError(f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise RequestError(f"a JSON request must be an object with fields {', '.join(JSON_FIELDS)}; "
                               f"got {type(body).__name__}")
        return self._json_request(index, body)

    def model_default_task(self) -> str:
        task = self.tasks[0]
        if self.task_kinds[task].input != "image":
            raise RequestError(f"the default task {task!r} does not take an image; send JSON with a \"task\" "
                               f"field (tasks: {', '.join(self.tasks)})")
        return task

    def _json_request(self, index: int, body: dict[str, Any]) -> Prepared:
        unknown = sorted(set(body) - set(JSON_FIELDS))
        if unknown:
            raise RequestError(f"unknown field(s) {', '.join(map(repr, unknown))}; "
                               f"allowed fields: {', '.join(JSON_FIELDS)}")
        task = body.get("task", self.tasks[0])
        if not isinstance(task, str):
            raise RequestError(f"\"task\" must be a string naming one of: {', '.join(self.tasks)}")
        if task not in self.tasks:
            known = "unknown task" if task not in self.all_tasks else "this model does not support task"
            raise RequestError(f"{known} {task!r}; model {self.name!r} supports: {', '.join(self.tasks)}")
        kind = self.task_kinds[task].input
        wanted = {"image": {"image"}, "latent": {"latent"}, "count": {"n", "seed"}}[kind]
        extra = sorted(set(body) - wanted - {"task"})
        if extra:
            raise RequestError(f"task {task!r} takes {' and '.join(sorted(wanted))}, "
                               f"not {', '.join(map(repr, extra))}")
        if kind == "image":
            return self._image_request(index, task, _b64(body.get("image"), self.options.max_body_bytes))
        if kind == "latent":
            return Prepared(index, task, self._latent(body.get("latent")))
        n = body.get("n", 1)
        if not _is_int(n) or not 1 <= n <= self.options.max_n:
            raise RequestError(f"\"n\" must be an integer from 1 to {self.options.max_n}, got {_short(n)}")
        seed = body.get("seed")
        if seed is not None and (not _is_int(seed) or not 0 <= seed <= MAX_SEED):
            raise RequestError(f"\"seed\" must be an integer from 0 to 2**63-1, got {_short(seed)}")
        return Prepared(index, task, n, seed=seed)

    def _latent(self, value: Any) -> torch.Tensor:
        if self.latent_dim is None:
            raise RequestError(f"model {self.name!r} has no latent space")
        if not isinstance(value, list):
            raise RequestError(f"\"latent\" must be a list of {self.latent_dim} numbers, got {type(value).__name__}")
        if len(value) != self.latent_dim:
            raise RequestError(f"\"latent\" must have length {self.latent_dim} (the model's latent_dim), "
                               f"got {len(value)}")
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise RequestError(f"\"latent\"[{i}] must be a number, got {_short(v)}")
            if not math.isfinite(v):
                raise RequestError(f"\"latent\"[{i}] is {v}: NaN and infinite values are not allowed")
            if abs(v) > self.options.max_abs_latent:
                raise RequestError(f"\"latent\"[{i}] = {v} is out of range (|value| <= {self.options.max_abs_latent:g})")
        return torch.tensor(value, dtype=torch.float32)

    def _image_request(self, index: int, task: str, raw: bytes) -> Prepared:
        return Prepared(index, task, decode_image(raw, self.input_shape, self.options))


# --------------------------------------------------------------------------------------------
# Images


def decode_image(raw: bytes, shape: tuple[int, int, int], options: Options) -> torch.Tensor:
    """PNG/JPEG bytes -> float (C, H, W) in [0, 1], checking format and size from the header before decoding."""
    from PIL import Image, UnidentifiedImageError

    channels, height, width = shape
    try:
        with warnings.catch_warnings():  # our own limits below are stricter than PIL's bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=list(IMAGE_FORMATS))  # lazy: reads the header only
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise RequestError(f"the image is not a readable PNG or JPEG: {exc}", 415) from None
    except Image.DecompressionBombError as exc:
        raise RequestError(f"image refused: {exc}", 413) from None
    w, h = image.size
    if w > options.max_image_side or h > options.max_image_side or w * h > options.max_image_pixels:
        raise RequestError(f"image of {w}x{h} pixels exceeds the limit ({options.max_image_side} per side, "
                           f"{options.max_image_pixels} in all); this model takes {width}x{height}", 413)
    if (w, h) != (width, height):
        raise RequestError(f"image is {w}x{h} but this model takes {width}x{height} images")
    mode = image.mode
    if channels == 1:
        accepted = {"L": "L", "1": "L", "P": None}
    else:
        accepted = {"RGB": "RGB", "YCbCr": "RGB", "P": None}
    if mode not in accepted:
        raise RequestError(f"image has mode {mode} ({len(image.getbands())} channel(s)) but this model takes "
                           f"{'1-channel greyscale (L)' if channels == 1 else f'{channels}-channel RGB'} images")
    try:
        image.load()
        if mode == "P":  # palette: accept only if it expands to the right number of channels
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            if image.mode == "RGBA" or (channels == 1 and not _is_grey(image)):
                raise RequestError(f"palette image expands to {image.mode} but this model takes "
                                   f"{'greyscale' if channels == 1 else 'RGB'} images")
            if channels == 1:
                image = image.convert("L")
        else:
            image = image.convert(accepted[mode])
        data = image.tobytes()
    except RequestError:
        raise
    except Exception as exc:  # truncated or corrupt pixel data
        raise RequestError(f"the image data is truncated or corrupt: {exc}") from None
    if len(data) != channels * height * width:
        raise RequestError("decoded image has an unexpected size")
    tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(height, width, channels)
    return tensor.permute(2, 0, 1).float().div_(255.0)


def _is_grey(image) -> bool:
    r, g, b = image.split()
    return r.tobytes() == g.tobytes() == b.tobytes()


def encode_png(image: torch.Tensor) -> str:
    """Float (C, H, W) in [0, 1] -> base64 PNG (L for 1 channel, RGB for 3)."""
    from PIL import Image

    image = image.float().nan_to_num(0.0).clamp(0, 1).mul(255).round().to(torch.uint8)
    c, h, w = image.shape
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[c]
    pixels = image.permute(1, 2, 0).contiguous().flatten().tolist()  # no numpy needed in the archive
    pil = Image.frombytes(mode, (w, h), bytes(pixels))
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png(data: str) -> torch.Tensor:
    """Inverse of :func:`encode_png`: base64 PNG -> float (C, H, W) in [0, 1] (used by clients and tests)."""
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    c = len(image.getbands())
    w, h = image.size
    t = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(h, w, c)
    return t.permute(2, 0, 1).float() / 255.0


# --------------------------------------------------------------------------------------------
# Small helpers


def _body(row: Any) -> Any:
    if not isinstance(row, dict):
        return row
    for key in ("body", "data"):
        if key in row and row[key] is not None:
            return row[key]
    values = [v for v in row.values() if v is not None]
    if not values:
        return b""
    return values[0]


def _content_type(context, idx: int, row: Any) -> str | None:
    if context is None:
        return None
    try:
        for key in ("body", "data"):
            header = context.get_request_header(idx, key)
            if isinstance(header, dict) and header.get("content-type"):
                return header["content-type"]
        for key in ("Content-Type", "content-type"):
            value = context.get_request_header(idx, key)
            if value:
                return value
    except Exception:
        return None
    return None


def _set_json(context, idx: int) -> None:
    if context is not None:
        try:
            context.set_response_content_type(idx, "application/json")
        except Exception:
            pass


def _b64(value: Any, limit: int) -> bytes:
    if not isinstance(value, str):
        raise RequestError(f"\"image\" must be a base64-encoded PNG or JPEG string, got {type(value).__name__}")
    if len(value) > limit * 4 // 3 + 4:
        raise RequestError(f"\"image\" is longer than {limit} bytes", 413)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(f"\"image\" is not valid base64: {exc}") from None
    if not raw:
        raise RequestError("\"image\" is empty")
    return raw


def _dumps(reply: dict[str, Any]) -> str:
    return json.dumps(reply, separators=(",", ":"), allow_nan=False)


def _floats(t: torch.Tensor) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in t.tolist()]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
