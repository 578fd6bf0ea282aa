"""The model service behind every server: load a packaged model, run its tasks, answer batches of requests.

Nothing here knows an architecture by name, nor a wire format: the protocols in
:mod:`zoo_handlers.protocols` turn each request into jobs (a task and its input,
by the task's declared kinds), the service runs every job of a task from the
whole batch in one forward pass, and each request's protocol renders its reply.

This module imports only the standard library, torch, Pillow and the zoo core,
so it runs inside a self-contained ``.mar`` on a TorchServe without ae-zoo.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from zoo_handlers import SERVING_MANIFEST, protocols
from zoo_handlers.errors import RequestError
from zoo_handlers.inputs import Job, ModelSpec
from zoo_handlers.options import Options
from zoo_handlers.protocols import Reply, Request

logger = logging.getLogger(__name__)

DEFAULT_VERSION = "1.0"


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
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            missing = exc.name or str(exc)
            if name == missing or name.startswith(f"{missing}."):
                raise RuntimeError(f"plugin module {name} is not in the archive: rebuild it with `zoo package`") \
                    from exc
            raise MissingDependencyError(
                f"importing plugin module {name} failed: no module named {missing!r} in {sys.executable} or the "
                f"archive. If the plugin needs {missing}, declare it in the plugin's requirements (Requires-Dist) "
                "and repackage, or install it in the TorchServe environment") from exc
        host.register_module(module, name=name)
    host.collect()
    problems = [e for r in host.records.values() for e in r.errors]
    if problems:
        logger.warning("plugin problems while loading: %s", "; ".join(problems))
    return load_checkpoint(model_dir, host.registry.architectures, device)


def read_manifest(model_dir: Path) -> dict[str, Any]:
    path = model_dir / SERVING_MANIFEST
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: package the model with `zoo package`")
    manifest = json.loads(path.read_text())
    dependencies = manifest.setdefault("dependencies", [])  # archives built before it was recorded have none
    if not isinstance(dependencies, list) or not all(
            isinstance(d, dict) and isinstance(d.get("name"), str) and isinstance(d.get("specifier", ""), str)
            for d in dependencies):
        raise RuntimeError(f"{path}: \"dependencies\" must be a list of {{name, specifier, bundled}} objects; "
                           "rebuild the archive with `zoo package`")
    return manifest


def read_calibration(model_dir: Path):
    """The archive's ``anomaly.json`` (checked against its ``model.safetensors``), or None when it has none.

    A calibration made for other weights, or an unreadable one, stops the model from loading:
    serving verdicts against the wrong threshold would be worse than serving none.
    """
    from zoo.anomaly import CalibrationError, load_calibration

    try:
        return load_calibration(model_dir)
    except CalibrationError as exc:
        raise RuntimeError(f"the archive's anomaly calibration is unusable: {exc}") from None


class MissingDependencyError(RuntimeError):
    """The plugin's own dependencies, listed in the archive's manifest, are not available to this Python."""


def check_dependencies(model_dir: Path, manifest: dict[str, Any], model: str | None = None) -> None:
    """Before any plugin is imported: every dependency the manifest lists is there, in a version it admits.

    A bundled dependency must be in the archive itself (its ``.dist-info`` at
    ``model_dir``); any other must be installed where this Python finds it.
    Raises :class:`MissingDependencyError` naming every one that is not, and the fix.
    """
    problems, to_install, incomplete = [], [], False
    for entry in manifest.get("dependencies", []):
        name, specifier, bundled = entry["name"], entry.get("specifier") or "", bool(entry.get("bundled"))
        required_by = entry.get("required_by") or []
        required_by = [required_by] if isinstance(required_by, str) else [str(r) for r in required_by]
        label = name + specifier + (f" (required by {', '.join(required_by)})" if required_by else "")
        version = _installed_version(name, model_dir if bundled else None)
        if version is None:
            problems.append(f"{label} is marked bundled but is not in the archive" if bundled
                            else f"{label} is not installed")
        elif specifier and not _admits(specifier, version, name):
            problems.append(f"{label} is {'bundled' if bundled else 'installed'} at version {version}")
        else:
            continue
        if bundled:
            incomplete = True
        else:
            to_install.append(name + specifier)
    if not problems:
        return
    fixes = []
    if to_install:
        fixes.append(f"install {', '.join(to_install)} in the TorchServe environment (pip install "
                     f"{' '.join(repr(r) for r in to_install)}), or repackage with `zoo package --deps bundle` "
                     "to ship pure-Python dependencies inside the archive")
        if manifest.get("dependency_mode") == "requirements":
            fixes.append("this archive lists them in requirements.txt, which TorchServe installs at load only when "
                         "config.properties sets install_py_dep_per_model=true (`zoo serve --deps requirements` "
                         "does)")
    if incomplete:
        fixes.append("rebuild the archive with `zoo package --deps bundle`")
    raise MissingDependencyError(
        f"model {model or manifest.get('model_name') or model_dir.name}: the plugin's own dependencies are not "
        f"available to {sys.executable}: {'; '.join(problems)}. To fix: {'; '.join(fixes)}.")


def _installed_version(name: str, where: Path | None) -> str | None:
    """The version of distribution ``name`` found in ``where`` only (a bundled copy), or on sys.path."""
    from importlib import metadata

    if where is None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None
    for distribution in metadata.distributions(name=name, path=[str(where)]):
        return distribution.version
    return None


def _admits(specifier: str, version: str, name: str) -> bool:
    try:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
        from packaging.version import InvalidVersion
    except ImportError:  # torchserve requires packaging; elsewhere a missing one must not block loading
        logger.warning("cannot check %s %s against %r: the packaging library is not installed", name, version,
                       specifier)
        return True
    try:
        return SpecifierSet(specifier).contains(version, prereleases=True)
    except (InvalidSpecifier, InvalidVersion):
        return False


# --------------------------------------------------------------------------------------------
# The service


class ZooService:
    """A loaded model plus everything needed to answer batches of requests in any wire protocol."""

    def __init__(self, model, device: torch.device, options: Options | None = None, name: str | None = None,
                 version: str = DEFAULT_VERSION, calibration=None):
        from zoo.tasks import TASKS

        self.model = model
        self.device = device
        self.options = options or Options()
        self.name = name or model.architecture
        self.tasks = tuple(model.tasks)
        #: The model's anomaly calibration (:class:`zoo.anomaly.Calibration`), or None: replies carry no verdict.
        self.calibration = calibration
        thresholds = {}
        if calibration is not None:
            from zoo.anomaly import check_model

            check_model(calibration, model, f"the anomaly calibration of {self.name}")
            thresholds[calibration.task] = calibration.threshold
        self.spec = ModelSpec(self.name, version, self.tasks, {t: TASKS[t] for t in self.tasks},
                              tuple(model.input_shape), model.latent_dim, self.options, thresholds)
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
                       name: str | None = None, version: str | None = None) -> "ZooService":
        model_dir = Path(model_dir)
        manifest = read_manifest(model_dir)
        check_dependencies(model_dir, manifest, name)
        options = Options.from_yaml((yaml_config or {}).get("handler"))
        device = select_device(gpu_id)
        calibration = read_calibration(model_dir)
        model = build_model(model_dir, manifest.get("plugins", []), device)
        if calibration is not None:
            logger.info("anomaly calibration: %s threshold %r at FPR %r", calibration.task, calibration.threshold,
                        calibration.fpr)
        return cls(model, device, options, name=name or manifest.get("model_name"),
                   version=version or DEFAULT_VERSION, calibration=calibration)

    # Running ------------------------------------------------------------------------------

    def _eager_runner(self, task: str):
        calibration = self.calibration
        if calibration is not None and calibration.task == task and calibration.score != task:
            # the calibrated score (from tasks the model declares): the verdict must be about that score
            from zoo.anomaly import scorer

            score = scorer(self.model, calibration.score)

            def run_score(inputs, generator=None):
                return score(inputs)
            return run_score

        def run(inputs, generator=None):
            return self.model.run_task(task, inputs, generator=generator)
        return run

    def _compile(self) -> None:
        for task in self.tasks:
            if self.spec.input_kind(task) == "count":
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
        kind = self.spec.input_kind(task)
        for size in (1, 2):
            if kind == "count":
                self._run(task, size, torch.Generator(device=self.device).manual_seed(0))
            elif kind == "latent":
                self._run(task, torch.zeros(size, self.spec.latent_dim, device=self.device))
            else:
                self._run(task, torch.full((size, *self.spec.input_shape), 0.5, device=self.device))

    @torch.no_grad()
    def _run(self, task: str, inputs, generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.autocast):
            out = self._runners[task](inputs, generator)
        return out.detach().float().cpu()

    # Batches ------------------------------------------------------------------------------

    def answer(self, requests: list[Request]) -> list[Reply]:
        """One reply per request, whatever its protocol; a bad request gets its own 4xx, the rest proceed.

        The jobs of every valid request are grouped by task and each group runs as one
        forward pass (sampling runs per job: each has its own seed).
        """
        replies: list[Reply | None] = [None] * len(requests)
        parsed: dict[int, tuple[Any, protocols.Parsed]] = {}
        for i, request in enumerate(requests):
            try:
                protocol, result = protocols.parse(request, self.spec)
            except Exception:  # a parser bug must still answer this request, and only this one
                logger.exception("unexpected error while parsing request %d", i)
                replies[i] = protocols.native.error(RequestError("the request could not be parsed"))
                continue
            if isinstance(result, Reply):
                replies[i] = result
            else:
                parsed[i] = (protocol, result)
        outputs = self._outputs(parsed, replies)
        for i, (protocol, result) in parsed.items():
            if replies[i] is None:
                try:
                    replies[i] = result.render(outputs[i])
                except Exception as exc:
                    logger.exception("could not render the reply of request %d", i)
                    replies[i] = protocol.error(RequestError(f"the reply could not be built: {type(exc).__name__}",
                                                             500))
        return replies  # type: ignore[return-value]

    def _outputs(self, parsed: dict[int, tuple[Any, protocols.Parsed]], replies: list) -> dict[int, list]:
        outputs = {i: [None] * len(result.jobs) for i, (_, result) in parsed.items()}
        by_task: dict[str, list[tuple[int, int, Job]]] = {}
        for i, (_, result) in parsed.items():
            for j, job in enumerate(result.jobs):
                by_task.setdefault(job.task, []).append((i, j, job))
        for task, group in by_task.items():
            try:
                for (i, j, _), out in zip(group, self.compute(task, [job for _, _, job in group])):
                    outputs[i][j] = out
            except Exception as exc:
                logger.exception("task %s failed on a batch of %d", task, len(group))
                for i in {i for i, _, _ in group}:
                    replies[i] = parsed[i][0].error(RequestError(f"{task} failed: {type(exc).__name__}", 500))
        return outputs

    def compute(self, task: str, jobs: list[Job]) -> list[torch.Tensor]:
        """The outputs of one task's jobs: one forward pass for image and latent inputs."""
        if self.spec.input_kind(task) == "count":
            return [self._sample(task, job) for job in jobs]
        batch = torch.stack([job.value for job in jobs]).to(self.device)
        out = self._run(task, batch)
        if out.shape[0] != len(jobs):
            raise RuntimeError(f"{task} returned {out.shape[0]} results for {len(jobs)} inputs")
        return list(out)

    def _sample(self, task: str, job: Job) -> torch.Tensor:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(job.seed if job.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
        return self._run(task, job.value, generator)
