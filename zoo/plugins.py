"""Plugin discovery and loading: one pluggy PluginManager, isolated failures.

Plugins are modules listed under the ``zoo`` entry-point group; the built-in
architectures are found the same way. ``ZOO_PLUGINS=a,b`` restricts loading to
the named plugins (entry-point or distribution names) and ``ZOO_PLUGINS=``
loads none. A plugin that fails to import, raises in a hook or registers
something invalid is reported with a :class:`PluginWarning` naming its
distribution, and the rest of the zoo keeps working; ``ZOO_STRICT_PLUGINS=1``
turns those warnings into :class:`zoo.errors.PluginError`.
"""

import dataclasses
import os
import threading
import warnings
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType

import pluggy

from zoo import hookspecs
from zoo.errors import PluginError
from zoo.registry import Registry

ENTRY_POINT_GROUP = "zoo"
CORE_DISTRIBUTION = "ae-zoo"


class PluginWarning(UserWarning):
    """A plugin was skipped or partly skipped because of an error."""


@dataclasses.dataclass
class PluginRecord:
    """What ``zoo plugins`` reports about one plugin."""

    name: str
    distribution: str | None
    version: str | None
    module: str | None
    hooks: list[str] = dataclasses.field(default_factory=list)
    registered: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)


def strict_mode() -> bool:
    return os.environ.get("ZOO_STRICT_PLUGINS", "").strip().lower() in {"1", "true", "yes", "on"}


def allowed_plugins() -> set[str] | None:
    """Names from ``ZOO_PLUGINS``, or None when it is unset (load everything)."""
    value = os.environ.get("ZOO_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


class PluginHost:
    """Owns the PluginManager, the per-plugin records and the resulting Registry."""

    def __init__(self, strict: bool | None = None):
        self.strict = strict_mode() if strict is None else strict
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.records: dict[str, PluginRecord] = {}

    def discover(self, allowed: set[str] | None = None) -> None:
        """Load every entry point of the ``zoo`` group that ``allowed`` admits (None admits all).

        ae-zoo's own plugins load first, then the rest by name, so on a name
        clash the built-in keeps its name and the newcomer is reported.
        """
        found = entry_points(group=ENTRY_POINT_GROUP)
        for ep in sorted(found, key=lambda ep: (ep.dist is None or ep.dist.name != CORE_DISTRIBUTION, ep.name)):
            distribution = ep.dist.name if ep.dist else None
            if allowed is not None and ep.name not in allowed and distribution not in allowed:
                continue
            self._load_entry_point(ep)

    def _load_entry_point(self, ep: EntryPoint) -> None:
        record = PluginRecord(ep.name, ep.dist.name if ep.dist else None, ep.dist.version if ep.dist else None, ep.value)
        self.records[ep.name] = record
        try:
            module = ep.load()
        except Exception as exc:
            self._fail(record, f"import of {ep.value!r} failed: {type(exc).__name__}: {exc}")
            return
        self._register(module, record)

    def register_module(self, module: ModuleType, name: str | None = None) -> PluginRecord:
        """Register a plugin module directly, e.g. inside a self-contained TorchServe archive."""
        name = name or module.__name__
        record = PluginRecord(name, None, None, module.__name__)
        self.records[name] = record
        self._register(module, record)
        return record

    def _register(self, module: ModuleType, record: PluginRecord) -> None:
        try:
            self.manager.register(module, name=record.name)
        except Exception as exc:
            self._fail(record, f"invalid hook implementation: {type(exc).__name__}: {exc}")
            return
        record.hooks = sorted(caller.name for caller in self.manager.get_hookcallers(module) or [])

    def collect(self) -> Registry:
        """Run the hooks plugin by plugin: every architecture first, then every pretrained model."""
        for hook, add in (("register_architectures", self.registry.add_architecture), ("register_models", self.registry.add_model)):
            for name, plugin in list(self.manager.list_name_plugin()):
                self._run_hook(hook, name, plugin, add)
        return self.registry

    def _run_hook(self, hook: str, name: str, plugin: object, add) -> None:
        record = self.records[name]
        others = [p for p in self.manager.get_plugins() if p is not plugin]
        staged: list[object] = []
        try:
            self.manager.subset_hook_caller(hook, remove_plugins=others)(register=staged.append)
        except Exception as exc:
            self._fail(record, f"{hook} raised {type(exc).__name__}: {exc}")
            return
        for item in staged:
            try:
                record.registered.append(add(item, name))
            except PluginError as exc:
                self._fail(record, f"{hook}: {exc}")

    def _fail(self, record: PluginRecord, message: str) -> None:
        record.errors.append(message)
        origin = f"distribution {record.distribution} {record.version}" if record.distribution else f"module {record.module}"
        text = f"ae-zoo plugin {record.name!r} ({origin}): {message}"
        if self.strict:
            raise PluginError(text)
        warnings.warn(text, PluginWarning, stacklevel=2)


_lock = threading.Lock()
_host: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide host, discovered and collected on first use."""
    global _host
    with _lock:
        if _host is None:
            host = PluginHost()
            host.discover(allowed_plugins())
            host.collect()
            _host = host
        return _host


def reload() -> PluginHost:
    """Forget the loaded plugins and discover them again (after installing one, or changing ZOO_PLUGINS)."""
    global _host
    with _lock:
        _host = None
    return get_host()
