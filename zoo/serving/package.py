"""``zoo package``: a self-contained TorchServe ``.mar`` for any zoo model.

The archive holds, at its root (which TorchServe puts on ``sys.path``):

- ``model.safetensors`` and ``config.json``: the checkpoint, and its ``anomaly.json`` when it has
  been calibrated with ``zoo anomaly fit`` (the handler then adds verdicts to anomaly-score replies);
- ``zoo_handler.py``: the handler (one class) and ``zoo_handlers/``: its helpers;
- ``zoo/``: the zoo core source (without the CLI and the plugin-author tools);
- the top-level package of every plugin module that provides the architecture,
  found from the registered class's module and from the plugin registered for
  it, so a third-party plugin is packaged exactly like a built-in one;
- ``zoo-serving.json``: which plugin modules the handler registers (directly,
  with :meth:`zoo.plugins.PluginHost.register_module`; entry points are not
  needed);
- ``MAR-INF/`` and ``model-config.yaml``: batch size, delay, workers, handler options.

So the TorchServe environment needs only torch, torchserve and the runtime
libraries in :data:`RUNTIME_REQUIREMENTS`, not ae-zoo. A plugin may declare
dependencies of its own (``Requires-Dist`` in its distribution's metadata);
:func:`plan_dependencies` finds those that neither ae-zoo nor the runtime
provides, the manifest lists them, and :data:`DEPENDENCY_MODES` say what the
archive does about them: ``check`` (the handler checks at load that they are
installed), ``bundle`` (their pure-Python files go into the archive) or
``requirements`` (a ``requirements.txt`` for TorchServe's
``install_py_dep_per_model``).
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
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from zoo.errors import ZooError
from zoo_handlers import SERVING_MANIFEST

#: The anomaly calibration file (:mod:`zoo.anomaly`) that goes into the archive beside config.json.
CALIBRATION_NAME = "anomaly.json"

#: What a TorchServe environment needs to serve a zoo archive (and what the README names).
RUNTIME_REQUIREMENTS = ("torch", "torchserve", "pluggy", "safetensors", "pillow", "pyyaml")
MAR_VERSION = "1.0"
#: What ``zoo package --deps`` may do with a plugin's own dependencies; the first is the default.
DEPENDENCY_MODES = ("check", "bundle", "requirements")
#: Files that make a distribution impossible to bundle: compiled extensions are built for one platform.
COMPILED_SUFFIXES = (".so", ".pyd", ".dylib")
REQUIREMENTS_FILE = "requirements.txt"
CORE_DISTRIBUTION = "ae-zoo"
HANDLER_FILE = "zoo_handler.py"
STAMP_SUFFIX = ".stamp"
#: Where KServe's storage initializer puts the storageUri's model-store/, and the runtime's ports.
KSERVE_STORE = "/mnt/models/model-store"
KSERVE_PORTS = {"inference": 8085, "management": 8081, "metrics": 8082, "grpc_inference": 7070,
                "grpc_management": 7071}
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
#: The zoo core ships without what only a command line or a plugin author uses.
CORE_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "cli", "testing", "scaffold.py", ".*")
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
    #: What to do with the plugin's own dependencies: one of :data:`DEPENDENCY_MODES` (not in model-config.yaml).
    deps: str = DEPENDENCY_MODES[0]

    def validate(self) -> None:
        if self.batch_size < 1 or self.workers < 1 or self.max_batch_delay < 0 or self.response_timeout < 1:
            raise ServingError("batch size and workers must be >= 1, max batch delay >= 0")
        if self.deps not in DEPENDENCY_MODES:
            raise ServingError(f"unknown dependency mode {self.deps!r}: choose one of {', '.join(DEPENDENCY_MODES)}")
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
    distributions: list[str] = field(default_factory=list)  # the installed distributions those packages come from


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
    record = host.records.get(plugin_name)
    distributions = plugin_distributions(record.distribution if record else None, plugin_module.split(".")[0],
                                         [top for top, _ in packages])
    return Source(name, Path(folder), architecture, [plugin_module], packages, distributions)


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


# --------------------------------------------------------------------------------------------
# A plugin's own dependencies


@dataclass
class Dependency:
    """A requirement of a plugin distribution that neither ae-zoo nor the TorchServe runtime provides."""

    name: str
    specifier: str = ""  # e.g. ">=1.0"; "" accepts any version
    required_by: list[str] = field(default_factory=list)  # the distributions that declare it
    extras: list[str] = field(default_factory=list)
    url: str | None = None  # a direct reference (``name @ url``), kept for requirements.txt
    bundled: bool = False
    version: str | None = None  # the bundled copy's version
    files: list[tuple[str, Path]] = field(default_factory=list, repr=False)  # (path in the archive, source)
    metadata_text: str | None = field(default=None, repr=False)  # METADATA to write when ``files`` lacks one

    def manifest(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "specifier": self.specifier, "bundled": self.bundled,
                                 "required_by": sorted(self.required_by)}
        if self.bundled:
            entry["version"] = self.version
        return entry

    def requirement(self) -> str:
        """The line for requirements.txt (markers were evaluated where the archive was built)."""
        extras = f"[{','.join(sorted(self.extras))}]" if self.extras else ""
        if self.url:
            return f"{self.name}{extras} @ {self.url}"
        return f"{self.name}{extras}{self.specifier}"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _packaging():
    try:
        from packaging.requirements import InvalidRequirement, Requirement
        from packaging.specifiers import SpecifierSet
    except ImportError:  # pragma: no cover - torchserve itself requires packaging
        raise ServingError("reading a plugin's dependencies needs the `packaging` library: pip install packaging") \
            from None
    return Requirement, InvalidRequirement, SpecifierSet


def provided_by_runtime(name: str) -> bool:
    """Whether the serving environment has ``name`` anyway: ae-zoo (shipped in the archive) or a runtime library."""
    return _canonical(name) in {_canonical(n) for n in (CORE_DISTRIBUTION, *RUNTIME_REQUIREMENTS)}


def plugin_distributions(recorded: str | None, plugin_top: str, tops: list[str]) -> list[str]:
    """The installed distributions that provide the plugin (ae-zoo itself left out).

    ``recorded`` is the distribution the plugin was discovered from, which owns
    the plugin module's top-level package ``plugin_top``; the owners of the other
    shipped top-level packages ``tops`` (or of all, without ``recorded``) are
    looked up in the installed distributions' file lists.
    """
    names = [recorded] if recorded else []
    unknown = [top for top in tops if not (recorded and top == plugin_top)]
    if unknown:
        try:
            owners = metadata.packages_distributions()
        except Exception:  # pragma: no cover - a broken installed distribution must not stop packaging
            owners = {}
        for top in unknown:
            names += owners.get(top, [])
    unique: dict[str, str] = {}
    for name in names:
        if not provided_by_runtime(name):
            unique.setdefault(_canonical(name), name)
    return list(unique.values())


def _declared(distribution: str, extras: set[str]) -> list:
    """The requirements ``distribution`` declares that apply here: markers evaluated for this Python, with
    ``extras`` as the only extras requested (a plugin's own extras-only requirements are left out)."""
    Requirement, InvalidRequirement, _ = _packaging()
    try:
        texts = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:
        return []
    found = []
    for text in texts:
        try:
            requirement = Requirement(text)
        except InvalidRequirement as exc:
            raise ServingError(f"distribution {distribution} declares an invalid requirement {text!r}: {exc}") \
                from None
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": extra}) for extra in {"", *extras}):
            found.append(requirement)
    return found


def plan_dependencies(distributions: list[str], mode: str = DEPENDENCY_MODES[0]) -> list[Dependency]:
    """The dependencies of the plugin ``distributions`` that the archive must account for.

    Requirements on ae-zoo, on :data:`RUNTIME_REQUIREMENTS` and on the plugin
    distributions themselves (shipped as source) are left out; names are compared
    canonicalized. For ``check`` and ``requirements`` these are the plugin's direct
    requirements: pip brings their own. For ``bundle`` they are, recursively, the
    requirements of those as well, each checked to be installed here in a version
    that satisfies every specifier, and to be pure Python (see :func:`_bundle_files`).
    """
    if mode not in DEPENDENCY_MODES:
        raise ServingError(f"unknown dependency mode {mode!r}: choose one of {', '.join(DEPENDENCY_MODES)}")
    _, _, SpecifierSet = _packaging()
    distributions = [d for d in distributions if not provided_by_runtime(d)]  # ae-zoo's needs are the runtime's
    shipped = {_canonical(d) for d in distributions}
    found: dict[str, Dependency] = {}
    todo: list[str] = []
    done: set[str] = set()

    def add(requirement, required_by: str) -> None:
        key = _canonical(requirement.name)
        if key in shipped or provided_by_runtime(requirement.name):
            return
        entry = found.get(key)
        if entry is None:
            entry = found[key] = Dependency(requirement.name)
        grew = not set(requirement.extras) <= set(entry.extras)
        entry.specifier = str(SpecifierSet(entry.specifier) & requirement.specifier)
        entry.extras = sorted(set(entry.extras) | set(requirement.extras))
        entry.url = entry.url or requirement.url
        if required_by not in entry.required_by:
            entry.required_by.append(required_by)
        if key not in done or grew:
            todo.append(key)

    for distribution in distributions:
        for requirement in _declared(distribution, set()):
            add(requirement, distribution)
    if mode != "bundle":
        return list(found.values())
    while todo:
        key = todo.pop(0)
        done.add(key)
        entry = found[key]
        dist = _installed(entry)
        entry.bundled, entry.version = True, dist.version
        for requirement in _declared(entry.name, set(entry.extras)):
            add(requirement, dist.metadata["Name"] or entry.name)
    for entry in found.values():
        dist = _installed(entry)
        entry.files = _bundle_files(dist, entry)
        if not any(path.endswith(".dist-info/METADATA") for path, _ in entry.files):
            entry.metadata_text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or \
                f"Metadata-Version: 2.1\nName: {entry.name}\nVersion: {dist.version}\n"
    return list(found.values())


def _who(entry: Dependency) -> str:
    return f"{entry.name}{entry.specifier} (required by {', '.join(entry.required_by)})"


def _installed(entry: Dependency) -> metadata.Distribution:
    """The installed distribution to bundle for ``entry``, in a version its specifier admits."""
    _, _, SpecifierSet = _packaging()
    try:
        dist = metadata.distribution(entry.name)
    except metadata.PackageNotFoundError:
        raise ServingError(f"cannot bundle {_who(entry)}: it is not installed here. Install it where you run "
                           "`zoo package`, or package with `--deps check` and install it in the TorchServe "
                           "environment") from None
    if entry.specifier and not SpecifierSet(entry.specifier).contains(dist.version, prereleases=True):
        raise ServingError(f"cannot bundle {_who(entry)}: version {dist.version} is installed here. Install a "
                           "matching version where you run `zoo package`")
    return dist


#: Files of a distribution's metadata folder that describe one installation, not the distribution.
_INSTALL_ONLY = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


def _bundle_files(dist: metadata.Distribution, entry: Dependency) -> list[tuple[str, Path]]:
    """(path in the archive, installed file) for every file of ``dist`` under site-packages, from its RECORD.

    Refuses, naming the distribution, one without a RECORD, one installed in
    editable mode, one whose installed files are incomplete, and one with a
    compiled extension (``.so``/``.pyd``/``.dylib``): that must be installed in
    the serving environment instead. Scripts and data installed outside
    site-packages, bytecode caches and per-installation records are left out.
    The metadata folder comes along (METADATA, licenses), so that the handler can
    check the bundled version at load.
    """
    files = dist.files
    if files is None:
        raise ServingError(f"cannot bundle {_who(entry)}: its installation has no RECORD listing its files. "
                           "Reinstall it with pip, or package with `--deps check` and install it in the TorchServe "
                           "environment")
    chosen: list[tuple[str, Path]] = []
    compiled = []
    for file in files:
        parts = file.parts
        if not parts or file.is_absolute() or ".." in parts:
            continue  # console scripts and data files live outside site-packages
        if parts[0].endswith(".pth") or parts[0].startswith("__editable__"):
            raise ServingError(f"cannot bundle {_who(entry)}: it is installed in editable mode ({parts[0]}), so "
                               "its files are not in site-packages. Install it normally (pip install "
                               f"{entry.name}) before packaging")
        if "__pycache__" in parts or file.suffix in {".pyc", ".pyo"}:
            continue
        if parts[0].endswith(".dist-info") and (file.name in _INSTALL_ONLY or
                                                 (len(parts) > 2 and parts[1] not in {"licenses", "LICENSES"})):
            continue
        if file.suffix in COMPILED_SUFFIXES or any(f"{s}." in file.name for s in COMPILED_SUFFIXES):
            compiled.append(str(file))
            continue
        source = Path(dist.locate_file(file))
        if not source.is_file():
            raise ServingError(f"cannot bundle {_who(entry)}: its installed file {source} is missing. "
                               f"Reinstall {entry.name}")
        chosen.append((file.as_posix(), source))
    if compiled:
        shown = ", ".join(compiled[:3]) + (f" and {len(compiled) - 3} more" if len(compiled) > 3 else "")
        raise ServingError(f"cannot bundle {_who(entry)}: it contains compiled extensions ({shown}), which only "
                           f"run on the platform they were built for. Install {entry.name} in the TorchServe "
                           "environment instead and package with `--deps check`")
    return chosen


def body_limit(source: Source, options: PackageOptions) -> int:
    """The largest request body the packaged model accepts (its handler's ``max_body_bytes``)."""
    from zoo.checkpoint import read_config
    from zoo.plugins import get_host
    from zoo_handlers.options import Options

    _, config = read_config(source.folder)
    cls = get_host().registry.architecture(source.architecture)
    model = cls(cls.config_class.from_dict(config))
    return Options.from_yaml(options.handler).body_bytes(tuple(model.input_shape), model.latent_dim)


def stage(source: Source, options: PackageOptions, directory: Path,
          dependencies: list[Dependency] | None = None) -> dict[str, Path]:
    """Lay out the archive's files under ``directory``; return the paths for torch-model-archiver.

    ``dependencies`` defaults to :func:`plan_dependencies` for ``options.deps``.
    """
    import yaml

    import zoo
    import zoo_handlers

    extra = directory / "extra"
    extra.mkdir(parents=True)
    core = Path(zoo.__file__).parent
    shutil.copytree(core, extra / "zoo", ignore=CORE_IGNORE)
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
    calibration = _calibration(source)
    if calibration is not None:
        shutil.copy2(source.folder / CALIBRATION_NAME, extra / CALIBRATION_NAME)
    if dependencies is None:
        dependencies = plan_dependencies(source.distributions, options.deps)
    _copy_bundled(dependencies, extra)
    manifest = {
        "model_name": source.name,
        "architecture": source.architecture,
        "plugins": source.plugin_modules,
        "packages": shipped,
        "zoo_version": zoo.__version__,
        "runtime_requirements": list(RUNTIME_REQUIREMENTS),
        "max_body_bytes": body_limit(source, options),
        "dependency_mode": options.deps,
        "dependencies": [d.manifest() for d in dependencies],
        "anomaly_calibration": CALIBRATION_NAME if calibration is not None else None,
    }
    (extra / SERVING_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    config = directory / "model-config.yaml"
    config.write_text("# Written by `zoo package`.\n" + yaml.safe_dump(options.model_config(), sort_keys=False))
    handler = directory / HANDLER_FILE
    shutil.copy2(handlers_dir / HANDLER_FILE, handler)
    files = {"extra": extra, "config": config, "handler": handler, "weights": source.folder / "model.safetensors"}
    unbundled = [d for d in dependencies if not d.bundled]
    if options.deps == "requirements" and unbundled:
        files["requirements"] = directory / REQUIREMENTS_FILE
        files["requirements"].write_text("# Written by `zoo package --deps requirements`: the plugin's own "
                                         "dependencies.\n" + "".join(f"{d.requirement()}\n" for d in unbundled))
    return files


def _calibration(source: Source):
    """The checkpoint's anomaly calibration (checked to belong to its weights and model), or None."""
    from zoo.anomaly import CalibrationError, check_model, load_calibration

    try:
        calibration = load_calibration(source.folder)
        if calibration is not None:
            from zoo.checkpoint import read_config
            from zoo.plugins import get_host

            _, config = read_config(source.folder)
            cls = get_host().registry.architecture(source.architecture)
            check_model(calibration, cls(cls.config_class.from_dict(config)), str(source.folder / CALIBRATION_NAME))
    except CalibrationError as exc:
        raise ServingError(f"cannot package {source.name} with its anomaly calibration: {exc}") from None
    return calibration


#: Names at the archive's root besides the staged extra files; a bundled file may not take one.
_ARCHIVE_ROOT = {"model.safetensors", HANDLER_FILE, "MAR-INF", "model-config.yaml", REQUIREMENTS_FILE}


def _copy_bundled(dependencies: list[Dependency], extra: Path) -> None:
    """Copy the bundled dependencies' files to the archive root, refusing any that would replace another file."""
    taken = {p.name for p in extra.iterdir()} | _ARCHIVE_ROOT
    for entry in dependencies:
        if not entry.bundled:
            continue
        clashes = sorted({path.split("/")[0] for path, _ in entry.files} & taken)
        if clashes:
            raise ServingError(f"cannot bundle {_who(entry)}: its {', '.join(clashes)} would replace the archive's "
                               "own file of that name. Install it in the TorchServe environment instead and "
                               "package with `--deps check`")
        for path, source in entry.files:
            dest = extra / path
            if dest.exists() and dest.read_bytes() != source.read_bytes():
                raise ServingError(f"cannot bundle {_who(entry)}: its file {path} differs from the one another "
                                   "bundled dependency brings")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)
        if entry.metadata_text is not None:
            info = extra / f"{_canonical(entry.name).replace('-', '_')}-{entry.version}.dist-info"
            info.mkdir(exist_ok=True)
            (info / "METADATA").write_text(entry.metadata_text)


def package(target: str | Path, out: str | Path = ".", options: PackageOptions | None = None,
            name: str | None = None) -> Path:
    """Build ``<out>/<name>.mar`` with torch-model-archiver and return its path."""
    options = options or PackageOptions()
    options.validate()
    return build(resolve_source(target, name), Path(out).resolve(), options)


def build(source: Source, out: Path, options: PackageOptions,
          dependencies: list[Dependency] | None = None) -> Path:
    """Build ``<out>/<source.name>.mar`` from a resolved source with validated options."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="zoo-package-") as tmp:
        files = stage(source, options, Path(tmp) / "stage", dependencies)
        archiver_tmp = Path(tmp) / "archiver"  # the archiver stages under $TMPDIR/<name>: keep it private
        archiver_tmp.mkdir()
        command = [
            sys.executable, "-c", "from model_archiver.model_packaging import generate_model_archive as g; g()",
            "--model-name", source.name, "--version", MAR_VERSION,
            "--serialized-file", str(files["weights"]), "--handler", str(files["handler"]),
            "--extra-files", str(files["extra"]), "--config-file", str(files["config"]),
            "--export-path", str(out), "--force",
        ]
        if "requirements" in files:
            command += ["--requirements-file", str(files["requirements"])]
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
               "options": options.model_config(), "deps": options.deps, "zoo_version": _zoo_version()}
    for stamp in sorted(out.glob(f"*{STAMP_SUFFIX}")):
        mar = _reusable(stamp, request)
        if mar is not None:
            return mar
    source = resolve_source(target, name)
    stamp = out / f"{source.name}.mar{STAMP_SUFFIX}"
    stamp.unlink(missing_ok=True)
    dependencies = plan_dependencies(source.distributions, options.deps)
    mar = build(source, out, options, dependencies)
    files = [[str(path), *_signature(path)] for path in _source_files(source, dependencies)]
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


def _source_files(source: Source, dependencies: list[Dependency] = ()) -> list[Path]:
    """Every file :func:`stage` builds the archive from, and the metadata that lists the plugin's dependencies."""
    import zoo
    import zoo_handlers

    files = [source.folder / "config.json", source.folder / "model.safetensors"]
    # the folder itself: adding or removing its anomaly.json changes its mtime, and so does replacing it
    files += [source.folder] + ([source.folder / CALIBRATION_NAME] if (source.folder / CALIBRATION_NAME).is_file()
                                else [])
    roots = [Path(zoo.__file__).parent, Path(zoo_handlers.__file__).parent] + [path for _, path in source.packages]
    for root in roots:
        found = sorted(root.rglob("*")) if root.is_dir() else [root]
        files += [p for p in found if p.is_file() and "__pycache__" not in p.parts]
    for name in source.distributions:  # a reinstalled plugin may declare other requirements
        try:
            listed = metadata.distribution(name).files or []
        except metadata.PackageNotFoundError:
            continue
        files += [Path(f.locate()) for f in listed if f.as_posix().endswith((".dist-info/METADATA", "PKG-INFO"))]
    for entry in dependencies:
        files += [path for _, path in entry.files]
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
