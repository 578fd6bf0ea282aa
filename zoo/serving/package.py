"""``zoo package``: a self-contained TorchServe ``.mar`` for any zoo model.

The archive holds, at its root (which TorchServe puts on ``sys.path``):

- ``model.safetensors`` and ``config.json``: the checkpoint;
- ``zoo_handler.py``: the handler (one class) and ``zoo_handlers/``: its helpers;
- ``zoo/``: the zoo core source (without the CLI);
- the top-level package of every plugin module that provides the architecture,
  found from the registered class's module and from the plugin registered for
  it, so a third-party plugin is packaged exactly like a built-in one;
- ``zoo-serving.json``: which plugin modules the handler registers (directly,
  with :meth:`zoo.plugins.PluginHost.register_module`; entry points are not
  needed);
- ``MAR-INF/`` and ``model-config.yaml``: batch size, delay, workers, handler options.

So the TorchServe environment needs only torch, torchserve and the runtime
libraries in :data:`RUNTIME_REQUIREMENTS`, not ae-zoo.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from zoo.errors import ZooError
from zoo_handlers import SERVING_MANIFEST

#: What a TorchServe environment needs to serve a zoo archive (and what the README names).
RUNTIME_REQUIREMENTS = ("torch", "torchserve", "pluggy", "safetensors", "pillow", "pyyaml")
MAR_VERSION = "1.0"
HANDLER_FILE = "zoo_handler.py"
STAMP_SUFFIX = ".stamp"
#: Where KServe's storage initializer puts the storageUri's model-store/, and the runtime's ports.
KSERVE_STORE = "/mnt/models/model-store"
KSERVE_PORTS = {"inference": 8085, "management": 8081, "metrics": 8082, "grpc_inference": 7070,
                "grpc_management": 7071}
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".*", "*.egg-info")


class ServingError(ZooError):
    """Packaging or serving failed; the message says why."""


@dataclass
class PackageOptions:
    """What goes into ``model-config.yaml``: TorchServe's batching and workers, and the handler's options."""

    batch_size: int = 8
    max_batch_delay: int = 5
    workers: int = 1
    response_timeout: int = 120
    handler: dict[str, Any] = field(default_factory=lambda: {"warmup": True, "half": False, "compile": False})

    def validate(self) -> None:
        if self.batch_size < 1 or self.workers < 1 or self.max_batch_delay < 0 or self.response_timeout < 1:
            raise ServingError("batch size and workers must be >= 1, max batch delay >= 0")
        from zoo_handlers.options import Options

        try:
            Options.from_yaml(self.handler)
        except (TypeError, ValueError) as exc:
            raise ServingError(str(exc)) from None

    def model_config(self) -> dict[str, Any]:
        return {
            "minWorkers": self.workers,
            "maxWorkers": self.workers,
            "batchSize": self.batch_size,
            "maxBatchDelay": self.max_batch_delay,
            "responseTimeout": self.response_timeout,
            "handler": dict(self.handler),
        }


@dataclass
class Source:
    """A model to package: its TorchServe name, checkpoint folder, architecture and plugin modules."""

    name: str
    folder: Path
    architecture: str
    plugin_modules: list[str]
    packages: list[tuple[str, Path]]  # (import name, file or folder) of each top-level package to ship


def model_name_for(target: str) -> str:
    """A TorchServe-safe model name from a registered name or a folder path."""
    path = Path(target)
    base = path.parent.name if path.name == "model.safetensors" else path.name
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "-", base).strip("-.") or "model"
    return name if MODEL_NAME_PATTERN.match(name) else f"m-{name}"


def resolve_source(target: str | Path, name: str | None = None) -> Source:
    """Find the checkpoint folder and the plugin code of ``target`` (a registered name, folder or hf:// id)."""
    from zoo import api
    from zoo.checkpoint import read_config
    from zoo.plugins import get_host

    host = get_host()
    registry = host.registry
    text = str(target)
    folder = api.checkpoint_folder(text)
    if text.startswith(api.HUB_PREFIX):
        default_name = text[len(api.HUB_PREFIX):].split("@")[0].split("/")[-1]
    else:
        default_name = folder.name if Path(text).exists() else text
    architecture, _ = read_config(Path(folder))
    cls = registry.architecture(architecture)
    plugin_name = registry.owners[("architecture", architecture)]
    plugin = host.manager.get_plugin(plugin_name)
    modules = [m for m in (getattr(plugin, "__name__", None), cls.__module__) if m]
    plugin_module = modules[0]
    packages = []
    for module_name in dict.fromkeys(modules):
        top = module_name.split(".")[0]
        if top in {"zoo", "zoo_handlers"}:
            continue  # the core and the handler ship anyway
        entry = (top, _top_level_source(top))
        if entry not in packages:
            packages.append(entry)
    name = name or model_name_for(default_name)
    if not MODEL_NAME_PATTERN.match(name):
        raise ServingError(f"model name {name!r} must match {MODEL_NAME_PATTERN.pattern}")
    return Source(name, Path(folder), architecture, [plugin_module], packages)


def _top_level_source(top: str) -> Path:
    """The file or folder of the top-level module or package ``top``."""
    module: ModuleType = sys.modules.get(top) or __import__(top)
    if getattr(module, "__file__", None):
        path = Path(module.__file__)
        return path.parent if path.name == "__init__.py" else path
    paths = list(getattr(module, "__path__", []))
    if len(paths) != 1:
        raise ServingError(f"cannot locate the source of plugin package {top!r} to put it in the archive")
    return Path(paths[0])


def body_limit(source: Source, options: PackageOptions) -> int:
    """The largest request body the packaged model accepts (its handler's ``max_body_bytes``)."""
    from zoo.checkpoint import read_config
    from zoo.plugins import get_host
    from zoo_handlers.options import Options

    _, config = read_config(source.folder)
    cls = get_host().registry.architecture(source.architecture)
    model = cls(cls.config_class.from_dict(config))
    return Options.from_yaml(options.handler).body_bytes(tuple(model.input_shape), model.latent_dim)


def stage(source: Source, options: PackageOptions, directory: Path) -> dict[str, Path]:
    """Lay out the archive's files under ``directory``; return the paths for torch-model-archiver."""
    import yaml

    import zoo
    import zoo_handlers

    extra = directory / "extra"
    extra.mkdir(parents=True)
    core = Path(zoo.__file__).parent
    shutil.copytree(core, extra / "zoo", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "cli", ".*"))
    handlers_dir = Path(zoo_handlers.__file__).parent
    shutil.copytree(handlers_dir, extra / "zoo_handlers", ignore=_IGNORE)
    shipped = []
    for top, path in source.packages:
        if path.is_dir():  # installed names can differ from folder names: plugins/ is zoo_plugins
            shutil.copytree(path, extra / top, ignore=_IGNORE)
        else:
            shutil.copy2(path, extra / f"{top}.py")
        shipped.append(top)
    shutil.copy2(source.folder / "config.json", extra / "config.json")
    manifest = {
        "model_name": source.name,
        "architecture": source.architecture,
        "plugins": source.plugin_modules,
        "packages": shipped,
        "zoo_version": zoo.__version__,
        "runtime_requirements": list(RUNTIME_REQUIREMENTS),
        "max_body_bytes": body_limit(source, options),
    }
    (extra / SERVING_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    config = directory / "model-config.yaml"
    config.write_text("# Written by `zoo package`.\n" + yaml.safe_dump(options.model_config(), sort_keys=False))
    handler = directory / HANDLER_FILE
    shutil.copy2(handlers_dir / HANDLER_FILE, handler)
    return {"extra": extra, "config": config, "handler": handler, "weights": source.folder / "model.safetensors"}


def package(target: str | Path, out: str | Path = ".", options: PackageOptions | None = None,
            name: str | None = None) -> Path:
    """Build ``<out>/<name>.mar`` with torch-model-archiver and return its path."""
    options = options or PackageOptions()
    options.validate()
    return build(resolve_source(target, name), Path(out).resolve(), options)


def build(source: Source, out: Path, options: PackageOptions) -> Path:
    """Build ``<out>/<source.name>.mar`` from a resolved source with validated options."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="zoo-package-") as tmp:
        files = stage(source, options, Path(tmp) / "stage")
        archiver_tmp = Path(tmp) / "archiver"  # the archiver stages under $TMPDIR/<name>: keep it private
        archiver_tmp.mkdir()
        command = [
            sys.executable, "-c", "from model_archiver.model_packaging import generate_model_archive as g; g()",
            "--model-name", source.name, "--version", MAR_VERSION,
            "--serialized-file", str(files["weights"]), "--handler", str(files["handler"]),
            "--extra-files", str(files["extra"]), "--config-file", str(files["config"]),
            "--export-path", str(out), "--force",
        ]
        env = {**os.environ, "TMPDIR": str(archiver_tmp), "TEMP": str(archiver_tmp), "TMP": str(archiver_tmp)}
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise ServingError(f"torch-model-archiver failed for {source.name}:\n{result.stderr.strip()[-2000:]}")
    mar = out / f"{source.name}.mar"
    if not mar.is_file():
        raise ServingError(f"torch-model-archiver did not write {mar}")
    return mar


def package_cached(target: str | Path, out: str | Path, options: PackageOptions | None = None,
                   name: str | None = None) -> Path:
    """Like :func:`package`, but reuse the archive in ``out`` while nothing that went into it has changed.

    A stamp beside the archive records the request (target, name, options) and the
    size and modification time of every file the archive was built from: the
    checkpoint, the zoo core, the handler and the plugin sources. While they all
    still match, the archive is reused without resolving the model (or importing torch).
    """
    options = options or PackageOptions()
    options.validate()
    out = Path(out).resolve()
    request = {"target": os.path.abspath(target) if Path(target).exists() else str(target), "name": name,
               "options": options.model_config(), "zoo_version": _zoo_version()}
    for stamp in sorted(out.glob(f"*{STAMP_SUFFIX}")):
        mar = _reusable(stamp, request)
        if mar is not None:
            return mar
    source = resolve_source(target, name)
    stamp = out / f"{source.name}.mar{STAMP_SUFFIX}"
    stamp.unlink(missing_ok=True)
    mar = build(source, out, options)
    files = [[str(path), *_signature(path)] for path in _source_files(source)]
    stamp.write_text(json.dumps({"request": request, "archive": mar.name, "files": files}))
    return mar


def _reusable(stamp: Path, request: dict[str, Any]) -> Path | None:
    try:
        recorded = json.loads(stamp.read_text())
        if recorded["request"] != request:
            return None
        mar = stamp.parent / recorded["archive"]
        unchanged = all(_signature(Path(path)) == [size, mtime] for path, size, mtime in recorded["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return mar if unchanged and mar.is_file() else None


def _signature(path: Path) -> list[int]:
    info = path.stat()
    return [info.st_size, info.st_mtime_ns]


def _source_files(source: Source) -> list[Path]:
    """Every file :func:`stage` builds the archive from."""
    import zoo
    import zoo_handlers

    files = [source.folder / "config.json", source.folder / "model.safetensors"]
    roots = [Path(zoo.__file__).parent, Path(zoo_handlers.__file__).parent] + [path for _, path in source.packages]
    for root in roots:
        found = sorted(root.rglob("*")) if root.is_dir() else [root]
        files += [p for p in found if p.is_file() and "__pycache__" not in p.parts]
    return files


def _zoo_version() -> str:
    import zoo

    return zoo.__version__


def read_manifest(mar: Path) -> dict[str, Any]:
    """The ``zoo-serving.json`` manifest inside a ``.mar``."""
    try:
        with zipfile.ZipFile(mar) as archive:
            return json.loads(archive.read(SERVING_MANIFEST))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ServingError(f"{mar}: not a zoo archive ({exc}); build it with `zoo package`") from None


def max_request_size(mars: list[Path]) -> int:
    """TorchServe's ``max_request_size`` for these archives: the largest body any of their models accepts."""
    sizes = []
    for mar in mars:
        size = read_manifest(mar).get("max_body_bytes")
        if not isinstance(size, int) or size < 1:
            raise ServingError(f"{mar}: the archive does not record its request size limit; rebuild it with "
                               "`zoo package`")
        sizes.append(size)
    return max(sizes)


def write_kserve(mars: list[Path], directory: str | Path, options: PackageOptions) -> Path:
    """KServe's TorchServe layout: ``config/config.properties`` and ``model-store/*.mar`` under ``directory``.

    KServe starts TorchServe on this config with ``model-store/`` at ``/mnt/models/model-store``
    and runs its own model server (port 8080) in the same container, forwarding to TorchServe's
    inference address. So TorchServe's inference, management and gRPC addresses stay on
    127.0.0.1; only the Prometheus metrics (port 8082, which KServe scrapes) listen on every
    interface. ``enable_envvars_config=false`` keeps KServe's ``TS_SERVICE_ENVELOPE`` from
    wrapping the handler: the handler reads KServe v1/v2 bodies itself, with batching on.
    """
    from zoo.serving.properties import allowed_urls, escape

    directory = Path(directory)
    store = directory / "model-store"
    (directory / "config").mkdir(parents=True, exist_ok=True)
    store.mkdir(parents=True, exist_ok=True)
    models = {}
    for mar in mars:
        shutil.copy2(mar, store / mar.name)
        models[mar.stem] = {MAR_VERSION: {
            "defaultVersion": True, "marName": mar.name, "minWorkers": options.workers,
            "maxWorkers": options.workers, "batchSize": options.batch_size,
            "maxBatchDelay": options.max_batch_delay, "responseTimeout": options.response_timeout,
        }}
    snapshot = {"name": "startup.cfg", "modelCount": len(models), "models": models}
    lines = [
        "# KServe TorchServe runtime config, written by `zoo package --kserve`.",
        f"inference_address=http://127.0.0.1:{KSERVE_PORTS['inference']}",
        f"management_address=http://127.0.0.1:{KSERVE_PORTS['management']}",
        f"metrics_address=http://0.0.0.0:{KSERVE_PORTS['metrics']}",
        "grpc_inference_address=127.0.0.1",
        "grpc_management_address=127.0.0.1",
        f"grpc_inference_port={KSERVE_PORTS['grpc_inference']}",
        f"grpc_management_port={KSERVE_PORTS['grpc_management']}",
        "enable_metrics_api=true",
        "metrics_mode=prometheus",
        "number_of_netty_threads=4",
        "job_queue_size=100",
        # The handler speaks KServe v1/v2 itself; TorchServe's envelopes would break batching.
        "enable_envvars_config=false",
        "install_py_dep_per_model=false",
        f"model_store={KSERVE_STORE}",
        f"max_request_size={max_request_size(mars)}",
        # The handler gets the raw body and checks its model's size limit before parsing any JSON.
        "decode_input_request=false",
        # Models come only from the store; registering over the API is off, and no URL can leave the store.
        "enable_model_api=false",
        "allowed_urls=" + escape(allowed_urls(Path(KSERVE_STORE))),
        # KServe's model server in front of TorchServe sends no TorchServe token; TorchServe listens
        # on loopback only, and access control belongs to the InferenceService.
        "disable_token_authorization=true",
        "model_snapshot=" + json.dumps(snapshot, separators=(",", ":")),
    ]
    path = directory / "config" / "config.properties"
    path.write_text("\n".join(lines) + "\n")
    return path
