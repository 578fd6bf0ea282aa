"""Fixtures for the serving tests: models, archives, a real TorchServe, and an environment without ae-zoo.

Import what a test module needs from here (``from tests.serving_fixtures import served``);
pytest then finds the fixtures in that module.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import subprocess
import sys
import sysconfig
import zlib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
import torch

import zoo
import zoo.plugins
from zoo.serving import PackageOptions, client, package, server
from zoo.serving.package import RUNTIME_REQUIREMENTS

REPO = Path(__file__).resolve().parents[1]
#: The example third-party plugins: distribution -> (module, entry point); each lives in examples/<module minus zoo_>.
EXAMPLE_PLUGINS = {"zoo-beta-vae": ("zoo_beta_vae", "beta-vae"), "zoo-vq-ae": ("zoo_vq_ae", "vq-ae")}
BATCH_SIZE = 8
BATCH_DELAY_MS = 20


# --------------------------------------------------------------------------------------------
# An environment with torch and torchserve but without ae-zoo


def _distribution_closure(names) -> list[metadata.Distribution]:
    """The installed distributions ``names`` and, recursively, everything they require (markers honoured)."""
    from packaging.requirements import Requirement

    seen: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional platform dependency that is not installed here (e.g. CUDA wheels)
        seen[key] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(seen.values())


def build_runtime_env(target: Path) -> Path:
    """A fresh venv (no system site-packages) holding exactly TorchServe's runtime, not ae-zoo.

    ``python -m venv --without-pip`` makes the interpreter; its site-packages
    then gets symlinks to the installed files of :data:`RUNTIME_REQUIREMENTS`
    and their transitive requirements, taken from each distribution's RECORD.
    ae-zoo is not among them, nor its editable finder or any ``.pth`` file, so
    ``import zoo`` fails there: whatever zoo code a worker runs comes from the
    ``.mar``. Symlinks make this take about a second instead of a reinstall of torch.
    Returns the venv's python.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True)
    python = target / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    here = Path(sysconfig.get_paths()["purelib"]).resolve()
    for dist in _distribution_closure([*RUNTIME_REQUIREMENTS, "packaging"]):
        if dist.metadata["Name"].lower() in {"ae-zoo"}:
            continue
        tops = set()
        for file in dist.files or []:
            parts = Path(str(file)).parts
            if not parts or parts[0] in {"..", "__pycache__"} or parts[0].endswith(".pth"):
                continue
            tops.add(parts[0])
        for top in tops:
            source = here / top
            dest = purelib / top
            if source.exists() and not dest.exists():
                dest.symlink_to(source)
    return python


def python_can_import(python: Path, module: str) -> bool:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, cwd="/", env=env)
    return result.returncode == 0


# --------------------------------------------------------------------------------------------
# Images


def png_bytes(pixels: torch.Tensor) -> bytes:
    """uint8 (C, H, W) -> PNG bytes (L or RGB)."""
    from PIL import Image

    c, h, w = pixels.shape
    mode = {1: "L", 3: "RGB"}[c]
    image = Image.frombytes(mode, (w, h), bytes(pixels.permute(1, 2, 0).contiguous().flatten().tolist()))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def random_image(shape, seed: int = 0) -> tuple[bytes, torch.Tensor]:
    """A random PNG of ``shape`` (C, H, W) and the float tensor in [0, 1] that the server decodes it to."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, tuple(shape), generator=g, dtype=torch.uint8)
    return png_bytes(pixels), pixels.float() / 255.0


def huge_png(width: int, height: int) -> bytes:
    """A valid greyscale PNG of width x height, all black, compressed to ~100 KB (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    parts = [compressor.compress(row) for _ in range(height)]
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --------------------------------------------------------------------------------------------
# Models, archives and servers


@dataclass
class ModelUnderTest:
    name: str
    folder: Path
    model: torch.nn.Module
    pretrained: bool

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.model.tasks)


@dataclass
class Served:
    state: server.ServerState
    models: dict[str, ModelUnderTest]
    mars: dict[str, Path] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"{self.state.inference_url}/predictions/{name}"

    def headers(self, api: str = "inference") -> dict[str, str]:
        return self.state.headers(api)


def with_example_plugin(tmp: Path):
    """Make the example third-party plugins discoverable through real entry points (until undone)."""
    site = tmp / "third-party-site"
    site.mkdir()
    for distribution, (module, entry_point) in EXAMPLE_PLUGINS.items():
        (site / module).symlink_to(REPO / "examples" / module.removeprefix("zoo_") / module)
        info = site / f"{module}-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1.0\n")
        (info / "entry_points.txt").write_text(f"[zoo]\n{entry_point} = {module}\n")
    sys.path.insert(0, str(site))
    zoo.plugins._host = None

    def undo():
        if str(site) in sys.path:
            sys.path.remove(str(site))
        for module, _ in EXAMPLE_PLUGINS.values():
            sys.modules.pop(module, None)
        zoo.plugins._host = None

    return undo


@pytest.fixture(scope="session")
def zoo_models(tmp_path_factory) -> dict[str, ModelUnderTest]:
    """Every pretrained model, plus one freshly created model per architecture (incl. a third-party one)."""
    tmp = tmp_path_factory.mktemp("zoo-models")
    undo = with_example_plugin(tmp)
    models: dict[str, ModelUnderTest] = {}
    try:
        for name in zoo.list_models():
            model = zoo.load(name)
            from zoo.resolve import resolve_pretrained
            from zoo.plugins import get_host

            folder = resolve_pretrained(get_host().registry.model(name))
            models[name] = ModelUnderTest(name, Path(folder), model, True)
        for architecture in zoo.list_architectures():
            torch.manual_seed(0)
            model = zoo.create(architecture).eval()
            name = f"{architecture}-fresh"
            folder = model.save_pretrained(tmp / name)
            models[name] = ModelUnderTest(name, folder, zoo.load(folder), False)
        store = tmp / "mars"
        options = PackageOptions(batch_size=BATCH_SIZE, max_batch_delay=BATCH_DELAY_MS, workers=1)
        for name, m in models.items():
            m.mar = package(m.name if m.pretrained else m.folder, store, options)  # type: ignore[attr-defined]
    finally:
        undo()
    return models


def _start(models, directory: Path, **kwargs) -> server.ServerState:
    return server.start([m.mar for m in models], directory, batch_size=BATCH_SIZE, max_batch_delay=BATCH_DELAY_MS,
                        workers=1, timeout=300, **kwargs)


@pytest.fixture(scope="session")
def served(zoo_models, tmp_path_factory):
    """One real TorchServe on 127.0.0.1 (auth on) serving every model of ``zoo_models``."""
    directory = tmp_path_factory.mktemp("serve")
    state = _start(zoo_models.values(), directory)
    try:
        yield Served(state, zoo_models, {n: m.mar for n, m in zoo_models.items()})
    finally:
        server.stop(directory)


@pytest.fixture(scope="session")
def runtime_python(tmp_path_factory) -> Path:
    return build_runtime_env(tmp_path_factory.mktemp("runtime") / "venv")


@pytest.fixture(scope="session")
def served_isolated(zoo_models, runtime_python, tmp_path_factory):
    """A second TorchServe run by ``runtime_python`` (no ae-zoo): a built-in and the third-party models' archives."""
    chosen = {n: m for n, m in zoo_models.items() if not m.pretrained and n.split("-fresh")[0] in {"conv-vae", "beta-vae", "vq-ae"}}
    directory = tmp_path_factory.mktemp("serve-isolated")
    env = {"PYTHONPATH": "", "PYTHONNOUSERSITE": "1"}
    state = _start(chosen.values(), directory, python=str(runtime_python), env=env)
    try:
        yield Served(state, chosen)
    finally:
        server.stop(directory)


def refused_while_sending(send, *args, attempts: int = 8):
    """``send(*args)`` for a body the server refuses before reading all of it.

    The server may answer and close while the client is still writing the body; the client then
    sees a broken pipe or a reset instead of the reply, which says nothing about the server's
    status. Such a send is repeated (the server keeps serving) so the reply itself can be checked.
    """
    import urllib.error

    for attempt in range(attempts):
        try:
            return send(*args)
        except (ConnectionError, urllib.error.URLError) as exc:
            if attempt == attempts - 1 or isinstance(exc, urllib.error.HTTPError):
                raise


def post(url: str, body: bytes, content_type: str | None, headers: dict[str, str] | None = None, timeout: float = 60):
    """(status, JSON body or {"raw": text}) for any status, through the zoo's own client."""
    reply = client.post(url, body, content_type, headers, timeout)
    return reply.status, reply.body


def post_json(served: Served, name: str, data, headers=None):
    body = data if isinstance(data, (bytes, str)) else json.dumps(data)
    body = body.encode() if isinstance(body, str) else body
    return post(served.url(name), body, "application/json", served.headers() if headers is None else headers)


def listening(pid: int) -> list:
    """The TCP sockets process ``pid`` listens on (psutil 5.9, which KServe pins, and psutil 6+)."""
    import psutil

    process = psutil.Process(pid)
    connections = getattr(process, "net_connections", None) or process.connections
    return [c for c in connections("inet") if c.status == psutil.CONN_LISTEN]
