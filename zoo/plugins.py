"""Plugin discovery and loading: one pluggy PluginManager, a failing plugin is skipped whole.

Plugins are modules listed under the ``zoo`` entry-point group; the built-in
architectures are found the same way, and ae-zoo's own metric sets are
registered first from :data:`CORE_MODULES` (distribution ``ae-zoo``, always
loaded). The environment chooses the rest:

- ``ZOO_PLUGINS=a,b`` loads only the named plugins (entry-point or distribution
  names); ``ZOO_PLUGINS=`` loads none.
- ``ZOO_DISABLE_PLUGINS=a,b`` skips the named plugins without a warning;
  ``zoo plugins`` lists them as disabled.
- ``ZOO_STRICT_PLUGINS=1`` makes loading raise one :class:`zoo.errors.PluginError`
  that lists every error of every failing plugin.

A plugin that fails to import, raises in a hook, registers something invalid or
a name that is taken, or registers a model whose architecture comes from a
skipped plugin is skipped whole: none of its architectures, metric sets or
models stay registered. Each skipped plugin is reported by one one-line
:class:`PluginWarning`, attributed to the plugin's module file and shown once
per process.
"""

import dataclasses
import importlib
import importlib.util
import inspect
import os
import re
import sys
import threading
import warnings
from importlib.metadata import EntryPoint, PackageNotFoundError, entry_points, version
from types import ModuleType

import pluggy

from zoo import hookspecs
from zoo.errors import PluginError
from zoo.registry import PretrainedEntry, Registry

ENTRY_POINT_GROUP = "zoo"
CORE_DISTRIBUTION = "ae-zoo"

#: ae-zoo's own plugin modules, registered before any entry point whatever ZOO_PLUGINS or
#: ZOO_DISABLE_PLUGINS say. A module that is not installed is left out silently.
CORE_MODULES = ("zoo.evaluation.standard",)
#: The plugin name each core module is registered under (its module name when not listed).
CORE_PLUGIN_NAMES = {"zoo.evaluation.standard": "ae-zoo-metrics"}

#: A plugin's status as ``zoo plugins`` reports it.
LOADED, SKIPPED, DISABLED = "loaded", "skipped", "disabled"

#: The hooks, in the order the registry is built from them, with the Registry method each feeds.
PHASES = (
    ("register_architectures", "add_architecture"),
    ("register_metrics", "add_metric_set"),
    ("register_models", "add_model"),
)


class PluginWarning(UserWarning):
    """A plugin was skipped because of an error."""


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
    status: str = LOADED


def strict_mode() -> bool:
    return os.environ.get("ZOO_STRICT_PLUGINS", "").strip().lower() in {"1", "true", "yes", "on"}


def _names(value: str) -> set[str]:
    return {name.strip() for name in value.split(",") if name.strip()}


def allowed_plugins() -> set[str] | None:
    """Names from ``ZOO_PLUGINS``, or None when it is unset (load everything)."""
    value = os.environ.get("ZOO_PLUGINS")
    return None if value is None else _names(value)


def disabled_plugins() -> set[str]:
    """Names from ``ZOO_DISABLE_PLUGINS`` (entry-point or distribution names); empty when unset."""
    return _names(os.environ.get("ZOO_DISABLE_PLUGINS", ""))


def _normalized(name: str | None) -> str | None:
    """A distribution name as pip compares them (``My_Plugin`` and ``my-plugin`` are the same)."""
    return re.sub(r"[-_.]+", "-", name).lower() if name else None


def _matches(names: set[str], entry_point: str, distribution: str | None) -> bool:
    if entry_point in names:
        return True
    return distribution is not None and _normalized(distribution) in {_normalized(n) for n in names}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _module_file(module_name: str | None) -> str | None:
    """The source file of ``module_name``, found without importing it (it may be the module that fails)."""
    if not module_name:
        return None
    path = getattr(sys.modules.get(module_name), "__file__", None)
    if not path:
        try:
            spec = importlib.util.find_spec(module_name)
        except Exception:
            return None
        path = spec.origin if spec is not None else None
    return path if path and os.path.isfile(path) else None


def _core_version() -> str | None:
    try:
        return version(CORE_DISTRIBUTION)
    except PackageNotFoundError:
        return None


#: Shared by every host: a warning about a plugin is shown once per process (under the default filter).
_WARNING_REGISTRY: dict = {}


class PluginHost:
    """Owns the PluginManager, the per-plugin records and the resulting Registry.

    Plugins are added by :meth:`discover` (the core modules, then entry points) or
    :meth:`register_module`; :meth:`collect` then runs their hooks and builds
    :attr:`registry` from the plugins that register without error.
    """

    def __init__(self, strict: bool | None = None, *, warn: bool = True):
        self.strict = strict_mode() if strict is None else strict
        self.warn = warn
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.records: dict[str, PluginRecord] = {}
        self._order: list[str] = []  # plugins that take part in collect(), first come first served
        self._load_errors: dict[str, list[str]] = {}
        self._entry_point: dict[str, EntryPoint] = {}
        self._failed_hook: dict[str, str] = {}

    # -- adding plugins ----------------------------------------------------------------------

    def discover(self, allowed: set[str] | None = None, disabled: set[str] | None = None) -> None:
        """Register the core modules, then every entry point of the ``zoo`` group that ``allowed``
        admits (None admits all) and ``disabled`` does not name.

        ae-zoo's own plugins come first, then the rest by name, so on a name clash
        the built-in keeps its name and the newcomer is skipped.
        """
        self.load_core()
        disabled = disabled or set()
        found = entry_points(group=ENTRY_POINT_GROUP)
        for ep in sorted(found, key=lambda ep: (ep.dist is None or ep.dist.name != CORE_DISTRIBUTION, ep.name)):
            distribution = ep.dist.name if ep.dist else None
            if allowed is not None and not _matches(allowed, ep.name, distribution):
                continue
            if _matches(disabled, ep.name, distribution):
                record = self._new_record(ep.name, distribution, ep.dist.version if ep.dist else None, ep.value)
                record.status = DISABLED
                continue
            self._load_entry_point(ep)

    def load_core(self) -> None:
        """Register each of :data:`CORE_MODULES` that is installed, as distribution ``ae-zoo``."""
        for module_name in CORE_MODULES:
            name = CORE_PLUGIN_NAMES.get(module_name, module_name)
            if name in self.records:
                continue
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:
                missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
                if missing and (module_name == missing or module_name.startswith(f"{missing}.")):
                    continue  # not part of this installation; a missing dependency of it is an error
                self._load_error(self._new_record(name, CORE_DISTRIBUTION, _core_version(), module_name),
                                 f"import of {module_name!r} failed: {type(exc).__name__}: {exc}")
            else:
                self.register_module(module, name, distribution=CORE_DISTRIBUTION, version=_core_version())

    def _load_entry_point(self, ep: EntryPoint) -> None:
        distribution = ep.dist.name if ep.dist else None
        clash = self.records.get(ep.name)
        record = self._new_record(ep.name, distribution, ep.dist.version if ep.dist else None, ep.value)
        self._entry_point[record.name] = ep
        if clash is not None:
            self._load_error(record, f"entry point name {ep.name!r} is already used by plugin {clash.name!r} "
                                     f"({self._origin(clash)})")
            return
        try:
            plugin = ep.load()
        except Exception as exc:
            self._load_error(record, f"import of {ep.value!r} failed: {type(exc).__name__}: {exc}")
            return
        self._register(plugin, record)

    def register_module(self, module: ModuleType, name: str | None = None, *,
                        distribution: str | None = None, version: str | None = None) -> PluginRecord:
        """Register a plugin module directly, e.g. inside a self-contained TorchServe archive.

        Its hooks run at the next :meth:`collect`, after the plugins registered before it.
        """
        name = name or module.__name__
        clash = self.records.get(name)
        record = self._new_record(name, distribution, version, module.__name__)
        if clash is not None:
            self._load_error(record, f"plugin name {name!r} is already used by plugin {clash.name!r} "
                                     f"({self._origin(clash)})")
        else:
            self._register(module, record)
        return record

    def _new_record(self, name: str, distribution: str | None, version: str | None, module: str | None) -> PluginRecord:
        key, n = name, 1
        while key in self.records:  # a second plugin under a taken name keeps its own record
            n += 1
            key = f"{name}#{n}"
        record = PluginRecord(key, distribution, version, module)
        self.records[key] = record
        return record

    def _register(self, plugin: object, record: PluginRecord) -> None:
        self._order.append(record.name)
        try:
            self.manager.register(plugin, name=record.name)
        except Exception as exc:
            self._load_error(record, f"invalid hook implementation: {type(exc).__name__}: {exc}")
            return
        record.hooks = sorted(caller.name for caller in self.manager.get_hookcallers(plugin) or [])

    def _load_error(self, record: PluginRecord, message: str) -> None:
        if record.name not in self._order:
            self._order.append(record.name)
        self._load_errors.setdefault(record.name, []).append(_one_line(message))
        record.errors = list(self._load_errors[record.name])
        record.status = SKIPPED

    # -- collecting --------------------------------------------------------------------------

    def collect(self) -> Registry:
        """Run every plugin's hooks and build :attr:`registry` from the plugins that succeed.

        Each plugin's hooks run on their own (``subset_hook_caller``) into staged
        lists. The registry is then built in phases (architectures, metric sets,
        models) in plugin order; when a plugin fails, it is marked skipped and the
        registry is rebuilt without it, until a build succeeds. A plugin skipped
        because it clashed with one that was itself skipped later is then let back
        in. Non-strict, every skipped plugin gets one :class:`PluginWarning`;
        strict, one :class:`PluginError` lists them all.
        """
        errors = {name: list(self._load_errors.get(name, [])) for name in self._order}
        self._failed_hook = {}
        staged = {name: self._run_hooks(name, errors[name]) for name in self._order if not errors[name]}
        candidates = [name for name in self._order if not errors[name]]
        excluded: dict[str, list[str]] = {}

        def build(names: list[str]):
            return self._build(names, staged, skipped=[n for n in self._order if n not in names])

        while True:
            registry, registered, failure = build([n for n in candidates if n not in excluded])
            if failure is None:
                break
            name, hook, problems = failure
            excluded[name] = problems
            self._failed_hook[name] = hook
        readmitted = True
        while readmitted:
            readmitted = False
            for name in [n for n in candidates if n in excluded]:
                trial = build([n for n in candidates if n not in excluded or n == name])
                if trial[2] is None:
                    del excluded[name]
                    self._failed_hook.pop(name, None)
                    registry, registered, _ = trial
                    readmitted = True
                elif trial[2][0] == name:
                    excluded[name] = trial[2][2]
                    self._failed_hook[name] = trial[2][1]

        self.registry = registry
        failed = []
        for name in self._order:
            record = self.records[name]
            record.errors = errors[name] + excluded.get(name, [])
            record.registered = [] if record.errors else registered[name]
            record.status = SKIPPED if record.errors else LOADED
            if record.errors:
                failed.append(record)
        if failed and self.strict:
            raise PluginError(self._strict_message(failed))
        if self.warn:
            for record in failed:
                self._warn(record)
        return registry

    def _run_hooks(self, name: str, errors: list[str]) -> dict[str, list[object]]:
        plugin = self.manager.get_plugin(name)
        others = [p for p in self.manager.get_plugins() if p is not plugin]
        staged: dict[str, list[object]] = {}
        for hook, _ in PHASES:
            items: list[object] = []
            try:
                self.manager.subset_hook_caller(hook, remove_plugins=others)(register=items.append)
            except Exception as exc:
                errors.append(_one_line(f"{hook} raised {type(exc).__name__}: {exc}"))
                self._failed_hook.setdefault(name, hook)
            staged[hook] = items
        return staged

    def _build(self, names: list[str], staged: dict[str, dict[str, list[object]]], skipped: list[str]):
        """A Registry of ``names``' staged items, what each registered, and the first plugin that
        failed as ``(name, hook, errors)`` (every error of its items in that phase), or None."""
        registry = Registry()
        registered: dict[str, list[str]] = {name: [] for name in names}
        providers: dict[str, str] = {}  # architecture -> the skipped plugin that would have registered it
        for other in skipped:
            for cls in staged.get(other, {}).get("register_architectures", []):
                architecture = getattr(cls, "architecture", None)
                if isinstance(architecture, str):
                    providers.setdefault(architecture, other)
        for hook, method in PHASES:
            add = getattr(registry, method)
            for name in names:
                problems = []
                for item in staged[name][hook]:
                    if (isinstance(item, PretrainedEntry) and item.architecture not in registry.architectures
                            and item.architecture in providers):
                        problems.append(f"{hook}: pretrained model {item.name!r} needs architecture "
                                        f"{item.architecture!r} from plugin {providers[item.architecture]!r}, "
                                        f"which was skipped")
                        continue
                    try:
                        registered[name].append(add(item, name))
                    except PluginError as exc:
                        problems.append(_one_line(f"{hook}: {exc}"))
                    except Exception as exc:
                        problems.append(_one_line(f"{hook}: {item!r} could not be registered: "
                                                  f"{type(exc).__name__}: {exc}"))
                if problems:
                    return registry, registered, (name, hook, problems)
        return registry, registered, None

    # -- reporting ---------------------------------------------------------------------------

    def _origin(self, record: PluginRecord) -> str:
        parts = []
        if record.distribution:
            parts.append(f"distribution {record.distribution} {record.version or ''}".rstrip())
        ep = self._entry_point.get(record.name)
        parts.append(f"entry point {ep.name} = {ep.value}" if ep is not None else f"module {record.module}")
        return ", ".join(parts)

    def _silencer(self, record: PluginRecord) -> str | None:
        """The ZOO_DISABLE_PLUGINS value that skips ``record``'s plugin quietly (None when it is not an entry point)."""
        ep = self._entry_point.get(record.name)
        if ep is None:
            return None
        return ep.name if ep.name == record.name else record.distribution

    def _location(self, record: PluginRecord) -> tuple[str, int]:
        """The plugin's module file and the line of its failing hook (or 1), for the warning to point at."""
        ep = self._entry_point.get(record.name)
        module_name = ep.module if ep is not None else record.module
        filename = _module_file(module_name)
        if filename is None:
            return (f"<entry point {ep.name}>" if ep is not None else f"<plugin module {module_name}>"), 1
        hook = self._failed_hook.get(record.name)
        if hook is not None:
            for impl in getattr(self.manager.hook, hook).get_hookimpls():
                code = getattr(inspect.unwrap(impl.function), "__code__", None)
                if (impl.plugin_name == record.name and code is not None
                        and os.path.realpath(code.co_filename) == os.path.realpath(filename)):
                    return filename, code.co_firstlineno
        return filename, 1

    def warning_text(self, record: PluginRecord) -> str:
        """The one-line PluginWarning for a skipped plugin."""
        text = f"ae-zoo plugin {record.name!r} ({self._origin(record)}): {'; '.join(record.errors)}; skipped"
        silencer = self._silencer(record)
        return f"{text} (set ZOO_DISABLE_PLUGINS={silencer} to silence this)" if silencer else text

    def _warn(self, record: PluginRecord) -> None:
        filename, lineno = self._location(record)
        ep = self._entry_point.get(record.name)
        module = ep.module if ep is not None else record.module
        warnings.warn_explicit(self.warning_text(record), PluginWarning, filename, lineno,
                               module=module, registry=_WARNING_REGISTRY)

    def _strict_message(self, failed: list[PluginRecord]) -> str:
        silencers = [s for s in map(self._silencer, failed) if s]
        them = "them" if len(failed) > 1 else "it"
        hint = f" (fix {them}, or skip {them} with ZOO_DISABLE_PLUGINS={','.join(silencers)})" if silencers else ""
        lines = [f"{len(failed)} ae-zoo plugin{'s' if len(failed) > 1 else ''} failed to load and "
                 f"ZOO_STRICT_PLUGINS is on{hint}:"]
        for record in failed:
            lines += [f"- plugin {record.name!r} ({self._origin(record)}): {error}" for error in record.errors]
        return "\n".join(lines)


def build_host(strict: bool | None = None, *, warn: bool = True) -> PluginHost:
    """A new host with the core modules and the plugins the environment selects, collected.

    ``strict=None`` follows ``ZOO_STRICT_PLUGINS``; ``warn=False`` leaves the
    errors in the records without issuing warnings (``zoo plugins`` shows them).
    """
    host = PluginHost(strict, warn=warn)
    host.discover(allowed_plugins(), disabled_plugins())
    host.collect()
    return host


_lock = threading.Lock()
_host: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide host, discovered and collected on first use."""
    global _host
    with _lock:
        if _host is None:
            _host = build_host()
        return _host


def reload() -> PluginHost:
    """Forget the loaded plugins and discover them again (after installing one, or changing ZOO_PLUGINS)."""
    global _host
    with _lock:
        _host = None
    return get_host()
