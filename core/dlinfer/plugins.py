"""Finding, loading and listing plugins, and the registries built from them."""

from __future__ import annotations

import builtins
import importlib
import importlib.metadata as md
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .errors import PluginLoadError

log = logging.getLogger("dlinfer.plugins")

ENTRY_POINT_GROUP = "dlinfer.plugins"

#: Built-in plugins, registered like any other (pytest's DEFAULT_PLUGINS).
BUILTIN_PLUGINS = (
    "dlinfer.builtin.loading",
    "dlinfer.builtin.json_codec",
    "dlinfer.builtin.binary_codec",
    "dlinfer.server.v2_http",
    "dlinfer.server.v2_grpc",
    "dlinfer.server.openapi",
    "dlinfer.server.console",
    "dlinfer.server.metrics",
)

hookimpl = pluggy.HookimplMarker("dlinfer")


@attrs.frozen
class PluginInfo:
    """One plugin as ``dlinfer-core plugins list`` shows it."""

    name: str
    distribution: str
    version: str
    status: str  # "loaded", "unavailable" (loaded, but cannot work here), "disabled", "failed"
    hooks: tuple[str, ...] = ()
    error: str = ""
    #: What its catalogue hooks contribute, by catalogue without the ``dlinfer_`` prefix:
    #: ``model_formats`` lists the formats its loaders claim, the others (``optimizers``,
    #: ``converters``, ``codecs``, ``processors``, and catalogues plugins declare, such as
    #: ``balancers`` and ``trt_plugins``) the names of the classes it returns; ``hookspecs``
    #: the hooks it declares for other plugins. Routes and gRPC services exist only in a
    #: running application; ``hooks`` shows who adds them (``dlinfer_routes``, ...).
    provides: dict[str, tuple[str, ...]] = attrs.field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "hooks": list(self.hooks),
            "error": self.error,
            "provides": {kind: list(names) for kind, names in self.provides.items()},
        }


@attrs.frozen
class Entry:
    """One item of a catalogue registry, with where it came from."""

    name: str
    obj: Any
    plugin: str
    distribution: str


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _dist_version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return ""


class Plugins:
    """The node's pluggy manager plus what was loaded from where.

    ``Plugins(config).load()`` registers the built-ins, then entry points of the
    ``dlinfer.plugins`` group, then single-file plugins from ``plugins_dir``.
    """

    def __init__(self, config: Any | None = None) -> None:
        from .config import NodeConfig

        self.config: NodeConfig = config or NodeConfig()
        self.pm = pluggy.PluginManager("dlinfer")
        self.pm.add_hookspecs(hookspecs)
        # Historic: each plugin registered from now on declares its own hooks as it registers.
        self.pm.hook.dlinfer_addhooks.call_historic(kwargs={"pluginmanager": self.pm})
        self.infos: dict[str, PluginInfo] = {}
        #: Hook names each plugin declared in ``dlinfer_addhooks`` (docs/hooks.md has a section per plugin).
        self.declared: dict[str, tuple[str, ...]] = {}
        self._registries: dict[str, dict[str, Entry]] = {}
        if _env_flag("DLINFER_TRACE_PLUGINS"):
            self.pm.trace.root.setwriter(lambda msg: log.info("trace: %s", msg.rstrip()))
            self.pm.enable_tracing()

    @property
    def hook(self) -> Any:
        return self.pm.hook

    # ---------------------------------------------------------------- loading

    def load(self, entry_points: bool = True) -> Plugins:
        """Register built-ins, entry points and ``plugins_dir`` files, then configure them."""
        disabled = set(self.config.plugins.disable)
        for name in disabled:
            self.pm.set_blocked(name)
        for modname in BUILTIN_PLUGINS:
            if modname in disabled:
                self._record(modname, "dlinfer", "disabled")
                continue
            module = importlib.import_module(modname)
            # A built-in that needs the node (registries, config) exposes make_plugin().
            factory = getattr(module, "make_plugin", None)
            self._register(factory(self) if factory else module, modname, "dlinfer")
        if entry_points:
            self._load_entry_points(disabled)
        if self.config.plugins_dir:
            self._load_dir(self.config.plugins_dir, disabled)
        self.check_hooks()
        self.pm.hook.dlinfer_configure.call_historic(kwargs={"config": self.config})
        self.pm.hook.dlinfer_plugins_loaded.call_historic(kwargs={"plugins": self})
        return self

    def _load_entry_points(self, disabled: set[str]) -> None:
        only = None
        if _env_flag("DLINFER_DISABLE_PLUGIN_AUTOLOAD"):
            only = set(self.config.plugins.enable)
            extra = os.environ.get("DLINFER_PLUGINS", "")
            only |= {p.strip() for p in extra.split(",") if p.strip()}
        seen: dict[str, str] = {}
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist else "<unknown distribution>"
            if ep.name in seen and seen[ep.name] != dist:
                raise PluginLoadError(
                    f"plugin name {ep.name!r} is registered by two distributions: "
                    f"{seen[ep.name]} and {dist}; uninstall one or disable it"
                )
            if ep.name in seen:
                continue  # the same distribution seen twice on sys.path
            seen[ep.name] = dist
            version = ep.dist.version if ep.dist else ""
            if ep.name in disabled or (only is not None and ep.name not in only):
                self._record(ep.name, dist, "disabled", version=version)
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # any import-time failure of third-party code
                self._failed(ep.name, dist, version, exc)
                continue
            self._register(plugin, ep.name, dist, version)

    def _load_dir(self, folder: Path, disabled: set[str]) -> None:
        if not folder.is_dir():
            raise PluginLoadError(f"plugins_dir {folder} is not a folder")
        for path in sorted(folder.glob("*.py")):
            name = path.stem
            if name in disabled:
                self._record(name, "plugins_dir", "disabled")
                continue
            try:
                spec = importlib.util.spec_from_file_location(f"dlinfer_local_{name}", path)
                assert spec and spec.loader
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module
                spec.loader.exec_module(module)
            except Exception as exc:
                self._failed(name, f"plugins_dir:{path.name}", "", exc)
                continue
            self._register(module, name, "plugins_dir")

    def _failed(self, name: str, dist: str, version: str, exc: BaseException) -> None:
        msg = f"plugin {name!r} from distribution {dist} {version} failed to import: {type(exc).__name__}: {exc}"
        if name not in self.config.plugins.optional:
            raise PluginLoadError(msg + " (list it in [plugins] optional to start without it)") from exc
        log.warning("%s; continuing because it is optional", msg)
        self._record(name, dist, "failed", version=version, error=f"{type(exc).__name__}: {exc}")

    def register(self, plugin: Any, name: str, distribution: str = "<runtime>") -> None:
        """Register a plugin object at run time (tests, embedding applications)."""
        self._registries.clear()
        self._register(plugin, name, distribution)

    def _register(self, plugin: Any, name: str, dist: str, version: str | None = None) -> None:
        if self.pm.has_plugin(name):
            other = self.infos[name].distribution
            raise PluginLoadError(f"plugin name {name!r} is registered twice: by {other} and by {dist}")
        before = set(self.specified())
        self.pm.register(plugin, name=name)
        if added := tuple(sorted(set(self.specified()) - before)):
            self.declared[name] = added
        hooks = tuple(sorted(h.name for h in self.pm.get_hookcallers(plugin) or ()))
        self._record(name, dist, "loaded", version=version, hooks=hooks)

    def _record(
        self,
        name: str,
        dist: str,
        status: str,
        *,
        version: str | None = None,
        hooks: tuple[str, ...] = (),
        error: str = "",
    ) -> None:
        if version is None:
            version = _dist_version(dist) if dist not in ("plugins_dir", "<runtime>") else ""
        self.infos[name] = PluginInfo(name, dist, version, status, hooks, error)

    def list(self) -> list[PluginInfo]:
        """Every plugin; loaded ones that report a reason via ``dlinfer_unavailable`` show as unavailable."""
        reasons: dict[str, str] = {}
        for impl in self.pm.hook.dlinfer_unavailable.get_hookimpls():
            reason = impl.function()
            if reason:
                reasons[impl.plugin_name] = str(reason)
        provides = self.provides()
        return [
            attrs.evolve(
                info,
                provides=provides.get(name, {}),
                status="unavailable" if name in reasons else info.status,
                error=reasons.get(name, info.error),
            )
            for name, info in self.infos.items()
        ]

    def provides(self) -> dict[str, dict[str, tuple[str, ...]]]:
        """Per plugin, what each catalogue (the core's and those plugins declare) has from it."""
        out: dict[str, dict[str, builtins.list[str]]] = {}
        for hook_name in self.catalogues():
            try:
                entries = self.registry(hook_name)
            except PluginLoadError as exc:  # a duplicate name: the node refuses to start with it
                log.warning("%s", exc)
                continue
            kind = hook_name.removeprefix("dlinfer_")
            for entry in entries.values():
                # A loader contributes the formats it claims; a model config names those.
                names = getattr(entry.obj, "formats", ()) if hook_name == "dlinfer_model_formats" else ()
                out.setdefault(entry.plugin, {}).setdefault(kind, []).extend(names or [entry.name])
        for plugin, hooks in self.declared.items():
            out.setdefault(plugin, {})["hookspecs"] = list(hooks)
        return {plugin: {k: tuple(v) for k, v in kinds.items()} for plugin, kinds in out.items()}

    # ------------------------------------------------------------------ hooks

    def specified(self) -> dict[str, Any]:
        """Every declared hook (the core's and those plugins added), by name: its hook caller."""
        return {name: hc for name, hc in vars(self.pm.hook).items() if not name.startswith("_") and hc.has_spec()}

    def declaring_plugin(self, hook_name: str) -> str | None:
        """The plugin whose ``dlinfer_addhooks`` declared ``hook_name`` (None for the core's hooks)."""
        return next((p for p, names in self.declared.items() if hook_name in names), None)

    def check_hooks(self) -> None:
        """Refuse implementations of hooks that no loaded plugin declares (pluggy's ``check_pending``).

        Such a hook usually belongs to a plugin that is not installed or is disabled. An
        implementation marked ``optionalhook=True`` is skipped with a log line; a plugin listed
        in ``[plugins] optional`` is unregistered with a warning; any other stops the node.
        """
        unknown: dict[str, list[str]] = {}
        for name, hc in vars(self.pm.hook).items():
            if name.startswith("_") or hc.has_spec():
                continue
            for impl in hc.get_hookimpls():
                if impl.optionalhook:
                    log.info(
                        "plugin %r implements %s, which no loaded plugin declares: ignored", impl.plugin_name, name
                    )
                else:
                    unknown.setdefault(impl.plugin_name, []).append(name)
        for plugin_name, hooks in unknown.items():
            info = self.infos[plugin_name]
            msg = (
                f"plugin {plugin_name!r} ({info.distribution}) implements {', '.join(sorted(hooks))}, which no "
                "loaded plugin declares: install and enable the plugin that declares it, disable "
                f"{plugin_name!r}, or mark the implementation @hookimpl(optionalhook=True)"
            )
            if plugin_name not in self.config.plugins.optional:
                raise PluginLoadError(msg)
            log.warning("%s; continuing without it because it is optional", msg)
            self.pm.unregister(name=plugin_name)
            self._record(plugin_name, info.distribution, "failed", version=info.version, error=msg)
        self.pm.check_pending()

    # ------------------------------------------------------------- registries

    def registry(self, hook_name: str) -> dict[str, Entry]:
        """The catalogue built from ``hook_name``; built once, duplicates refused."""
        if hook_name in self._registries:
            return self._registries[hook_name]
        entries: dict[str, Entry] = {}
        caller = self.specified().get(hook_name)
        if caller is None:
            raise PluginLoadError(f"no loaded plugin declares the hook {hook_name!r}")
        for impl in caller.get_hookimpls():  # registration order (pluggy lists them so)
            items = impl.function() or []
            pinfo = self.infos.get(impl.plugin_name)
            dist = pinfo.distribution if pinfo else "<runtime>"
            for obj in items:
                name = getattr(obj, "name", None)
                if not isinstance(name, str) or not name:
                    raise PluginLoadError(
                        f"{hook_name} of plugin {impl.plugin_name!r} ({dist}) returned "
                        f"{obj!r}, which has no string 'name'"
                    )
                if name in entries:
                    first = entries[name]
                    raise PluginLoadError(
                        f"{hook_name}: name {name!r} is provided twice: by plugin "
                        f"{first.plugin!r} ({first.distribution}) and by plugin "
                        f"{impl.plugin_name!r} ({dist})"
                    )
                entries[name] = Entry(name, obj, impl.plugin_name, dist)
        self._registries[hook_name] = entries
        return entries

    # builtins.list: in this class body ``list`` is the method above.
    def catalogues(self) -> builtins.list[str]:
        """Names of the catalogue hooks declared by the core and the loaded plugins."""
        return sorted(
            name for name, hc in self.specified().items() if getattr(hc.spec.function, "dlinfer_catalogue", False)
        )

    def check_registries(self) -> None:
        """Build every catalogue now so duplicates stop the node at start."""
        for hook_name in self.catalogues():
            self.registry(hook_name)
