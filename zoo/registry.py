"""What plugins register: architectures and pretrained model entries, validated on the way in."""

import dataclasses
import difflib
import fnmatch
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from zoo.config import ModelConfig
from zoo.errors import PluginError, UnknownNameError
from zoo.metrics import Metric, MetricSet
from zoo.model import Autoencoder
from zoo.tasks import TASKS

NAME_PATTERN = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
METRIC_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")


@dataclasses.dataclass(frozen=True)
class PretrainedEntry:
    """A pretrained model: ``<architecture>-<dataset>[-variant]``.

    ``sha256`` pins ``model.safetensors``. Weights resolve from ``bundled`` (a
    folder holding ``model.safetensors`` and ``config.json``) when present,
    otherwise from the Hub repo ``repo_id`` at ``revision``.
    """

    name: str
    architecture: str
    config: dict[str, Any]
    sha256: str
    bundled: Path | None = None
    repo_id: str | None = None
    revision: str | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_folder(cls, name: str, folder: Path, *, sha256: str, **fields: Any) -> "PretrainedEntry":
        """An entry whose architecture and config are read from ``folder/config.json``."""
        saved = json.loads((Path(folder) / "config.json").read_text())
        return cls(name=name, architecture=saved["architecture"], config=saved["config"], sha256=sha256,
                   bundled=Path(folder), **fields)


def suggest(name: str, candidates: Iterable[str]) -> str:
    """A ' (did you mean ...?)' suffix naming the closest candidates, or ''."""
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def _implements(cls: type, method: str) -> bool:
    return callable(getattr(cls, method, None)) and getattr(cls, method) is not getattr(Autoencoder, method, None)


def _task_implemented(cls: type[Autoencoder], method: str) -> bool:
    if method == "reconstruct":
        return _implements(cls, "reconstruct") or (_implements(cls, "encode") and _implements(cls, "decode"))
    return _implements(cls, method)


def validate_architecture(cls: Any) -> None:
    """Raise PluginError unless ``cls`` is a usable Autoencoder subclass."""
    if not (isinstance(cls, type) and issubclass(cls, Autoencoder)):
        raise PluginError(f"{cls!r} is not a subclass of zoo.model.Autoencoder")
    name = getattr(cls, "architecture", None)
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise PluginError(f"{cls.__name__}.architecture must be a lowercase-hyphenated name, got {name!r}")
    config_class = getattr(cls, "config_class", None)
    if not (dataclasses.is_dataclass(config_class) and issubclass(config_class, ModelConfig)):
        raise PluginError(f"{name!r}: config_class must be a ModelConfig dataclass, got {config_class!r}")
    tasks = getattr(cls, "tasks", ())
    if not tasks or not isinstance(tasks, tuple):
        raise PluginError(f"{name!r}: tasks must be a non-empty tuple of task names")
    for task in tasks:
        if task not in TASKS:
            raise PluginError(f"{name!r} declares unknown task {task!r}; known tasks: {', '.join(TASKS)}")
        if not _task_implemented(cls, TASKS[task].method):
            raise PluginError(f"{name!r} declares task {task!r} but does not implement {TASKS[task].method}()")
    try:
        config_class()
        for preset in cls.presets.values():
            config_class.from_dict(preset)
    except Exception as exc:
        raise PluginError(f"{name!r}: its default config or a preset is invalid: {exc}") from None


class Registry:
    """Architectures and pretrained entries by name, each remembered with the plugin that registered it."""

    def __init__(self) -> None:
        self.architectures: dict[str, type[Autoencoder]] = {}
        self.models: dict[str, PretrainedEntry] = {}
        self.metric_sets: dict[str, MetricSet] = {}
        self.owners: dict[tuple[str, str], str] = {}

    def add_architecture(self, cls: Any, plugin: str) -> str:
        validate_architecture(cls)
        self._claim(cls.architecture, "architecture", plugin, self.architectures)
        self.architectures[cls.architecture] = cls
        return cls.architecture

    def add_model(self, entry: Any, plugin: str) -> str:
        if not isinstance(entry, PretrainedEntry):
            raise PluginError(f"register_models expects PretrainedEntry objects, got {entry!r}")
        if not NAME_PATTERN.match(entry.name) or not entry.name.startswith(f"{entry.architecture}-"):
            raise PluginError(
                f"pretrained name {entry.name!r} must be lowercase-hyphenated '<architecture>-<dataset>[-variant]'"
            )
        if entry.architecture not in self.architectures:
            raise PluginError(f"pretrained model {entry.name!r} needs architecture {entry.architecture!r}, which is not registered")
        if not SHA256_PATTERN.match(entry.sha256 or ""):
            raise PluginError(f"pretrained model {entry.name!r}: sha256 must be 64 lowercase hex digits")
        if entry.bundled is None and entry.repo_id is None:
            raise PluginError(f"pretrained model {entry.name!r} has neither bundled weights nor a repo_id")
        try:
            self.architectures[entry.architecture].config_class.from_dict(entry.config)
        except Exception as exc:
            raise PluginError(f"pretrained model {entry.name!r}: {exc}") from None
        self._claim(entry.name, "pretrained model", plugin, self.models)
        self.models[entry.name] = entry
        return entry.name

    def add_metric_set(self, metric_set: Any, plugin: str) -> str:
        """Validate and add a :class:`MetricSet`; sets keep their registration order."""
        if not isinstance(metric_set, MetricSet):
            raise PluginError(f"register_metrics expects zoo.metrics.MetricSet objects, got {metric_set!r}")
        name = metric_set.name
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise PluginError(f"metric set name must be lowercase-hyphenated, got {name!r}")
        if not isinstance(metric_set.metrics, dict) or not metric_set.metrics:
            raise PluginError(f"metric set {name!r}: metrics must be a non-empty dict of name -> zoo.metrics.Metric")
        for metric, info in metric_set.metrics.items():
            if not isinstance(metric, str) or not METRIC_PATTERN.match(metric):
                raise PluginError(f"metric set {name!r}: metric name {metric!r} must be lowercase snake_case")
            if not isinstance(info, Metric):
                raise PluginError(f"metric set {name!r}: metric {metric!r} must be a zoo.metrics.Metric, got {info!r}")
        if metric_set.headline not in metric_set.metrics:
            raise PluginError(f"metric set {name!r}: headline {metric_set.headline!r} must be one of its metrics "
                              f"({', '.join(metric_set.metrics)})")
        if not metric_set.metrics[metric_set.headline].required:
            raise PluginError(f"metric set {name!r}: headline {metric_set.headline!r} must be a required metric")
        if not (callable(metric_set.applies) and callable(metric_set.run)):
            raise PluginError(f"metric set {name!r}: applies and run must be callables")
        if not isinstance(metric_set.task_type, str) or not metric_set.task_type:
            raise PluginError(f"metric set {name!r}: task_type must be a Hub task id such as 'image-to-image'")
        if name in self.metric_sets:
            raise PluginError(f"metric set {name!r} is already registered by plugin "
                              f"{self.owners[('metric set', name)]!r}")
        taken = {m: s.name for s in self.metric_sets.values() for m in s.metrics}
        clashes = sorted(m for m in metric_set.metrics if m in taken)
        if clashes:
            raise PluginError(f"metric set {name!r}: metric {clashes[0]!r} is already reported by metric set "
                              f"{taken[clashes[0]]!r}")
        self._claim(name, "metric set", plugin, self.metric_sets)
        self.metric_sets[name] = metric_set
        return name

    def _claim(self, name: str, kind: str, plugin: str, table: dict) -> None:
        if name in table:
            raise PluginError(f"{kind} {name!r} is already registered by plugin {self.owners[(kind, name)]!r}")
        self.owners[(kind, name)] = plugin

    def architecture(self, name: str) -> type[Autoencoder]:
        if name not in self.architectures:
            raise UnknownNameError(f"unknown architecture {name!r}{suggest(name, self.architectures)}; "
                                   f"available: {', '.join(sorted(self.architectures)) or 'none'}")
        return self.architectures[name]

    def model(self, name: str) -> PretrainedEntry:
        if name not in self.models:
            raise UnknownNameError(f"unknown model {name!r}{suggest(name, [*self.models, *self.architectures])}; "
                                   f"see `zoo list`")
        return self.models[name]

    def list_models(self, pattern: str | None = None) -> list[str]:
        names = sorted(self.models)
        return fnmatch.filter(names, pattern) if pattern else names
