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
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from zoo.errors import ZooError

#: What a TorchServe environment needs to serve a zoo archive (and what the README names).
RUNTIME_REQUIREMENTS = ("torch", "torchserve", "pluggy", "safetensors", "pillow", "pyyaml")
MAR_VERSION = "1.0"
HANDLER_FILE = "zoo_handler.py"
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
        from zoo_handlers.service import Options

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
    }
    (extra / "zoo-serving.json").write_text(json.dumps(manifest, indent=2) + "\n")
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
    source = resolve_source(target, name)
    out = Path(out).resolve()
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


def write_kserve(mars: list[Path], directory: str | Path, options: PackageOptions) -> Path:
    """KServe's TorchServe layout: ``config/config.properties`` and ``model-store/*.mar`` under ``directory``.

    The config follows KServe's TorchServe runtime (port 8085 behind KServe's
    model server, metrics on 8082 in Prometheus format, ``model_store`` at
    ``/mnt/models/model-store`` where the storage initializer puts the
    storageUri, and a ``model_snapshot`` naming every archive).
    """
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
        "inference_address=http://0.0.0.0:8085",
        "management_address=http://0.0.0.0:8085",
        "metrics_address=http://0.0.0.0:8082",
        "grpc_inference_port=7070",
        "grpc_management_port=7071",
        "enable_metrics_api=true",
        "metrics_format=prometheus",
        "number_of_netty_threads=4",
        "job_queue_size=10",
        "enable_envvars_config=true",
        "install_py_dep_per_model=false",
        "model_store=/mnt/models/model-store",
        # Models come only from the store; registering over the API is off.
        "enable_model_api=false",
        "allowed_urls=file:///mnt/models/model-store/.*",
        # KServe's model server in front of TorchServe does not send TorchServe tokens;
        # access control belongs to the InferenceService (ingress, authz policy).
        "disable_token_authorization=true",
        "model_snapshot=" + json.dumps(snapshot, separators=(",", ":")),
    ]
    path = directory / "config" / "config.properties"
    path.write_text("\n".join(lines) + "\n")
    return path


