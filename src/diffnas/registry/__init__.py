"""The plugin manager factory and the component catalogue.

:func:`get_plugin_manager` builds a fresh ``pluggy.PluginManager`` (never a module global, so tests
get their own): hook specs, then the bundled plugins, then third-party plugins from the
``diffnas.plugins`` entry-point group. Environment controls:

* ``DIFFNAS_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry points;
* ``DIFFNAS_LOAD_PLUGINS=a,b``: load only these entry points (empty: none);
* ``DIFFNAS_TRACE_PLUGINS=1``: print every hook call (pluggy's hook-call monitoring).

:class:`Catalogue` asks every plugin's ``diffnas_register_*`` hook for its components and refuses
a name registered twice within a kind, naming both plugins.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import os
import sys
from typing import Any, Iterable

import attrs
import pluggy

from ..core import hookspecs
from ..core.errors import PluginError
from ..core.limits import short
from ..core.protocols import KINDS, Component

PROJECT = "diffnas"
ENTRY_POINT_GROUP = "diffnas.plugins"

#: Bundled plugins, registered like any other under their short names.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "diffnas.plugins.defaults",
    "diffnas.plugins.search_spaces.nb201",
    "diffnas.plugins.search_spaces.darts",
    "diffnas.plugins.search_spaces.lhd_space",
    "diffnas.plugins.relaxations.softmax",
    "diffnas.plugins.relaxations.sigmoid",
    "diffnas.plugins.relaxations.sparse_noisy",
    "diffnas.plugins.relaxations.gumbel",
    "diffnas.plugins.relaxations.dirichlet",
    "diffnas.plugins.relaxations.node_softmax",
    "diffnas.plugins.regularisers.drnas",
    "diffnas.plugins.update_rules.single_level",
    "diffnas.plugins.update_rules.mixed_level",
    "diffnas.plugins.update_rules.gaea",
    "diffnas.plugins.schedules.temperature",
    "diffnas.plugins.update_rules.bilevel",
    "diffnas.plugins.discretisers.argmax",
    "diffnas.plugins.discretisers.top_k",
    "diffnas.plugins.discretisers.threshold",
    "diffnas.plugins.discretisers.darts_pt",
    "diffnas.plugins.discretisers.lhd_policies",
    "diffnas.plugins.regularisers.degeneracy_correction",
    "diffnas.plugins.regularisers.fair_darts_zero_one",
    "diffnas.plugins.regularisers.darts_minus_skip",
    "diffnas.plugins.regularisers.beta_darts",
    "diffnas.plugins.regularisers.sdarts",
    "diffnas.plugins.regularisers.darts_plus_stop",
    "diffnas.plugins.regularisers.pc_darts",
    "diffnas.plugins.discretisers.sgas",
    "diffnas.plugins.discretisers.degeneracy_argmax",
    "diffnas.plugins.discretisers.selective_stop",
    "diffnas.plugins.schedules.basic",
    "diffnas.plugins.scorers.nb201_table",
    "diffnas.plugins.scorers.nb301_surrogate",
    "diffnas.data.datasets",
    "diffnas.data.nb201_datasets",
    "diffnas.plugins.diagnostics",
    "diffnas.plugins.executors.local",
    "diffnas.plugins.executors.ray_cluster",
    "diffnas.plugins.executors.slurm",
    "diffnas.plugins.loggers.tensorboard",
)

#: hook name per component kind
REGISTER_HOOKS: dict[str, str] = {
    "search_space": "diffnas_register_search_spaces",
    "relaxation": "diffnas_register_relaxations",
    "update_rule": "diffnas_register_update_rules",
    "regulariser": "diffnas_register_regularisers",
    "discretiser": "diffnas_register_discretisers",
    "schedule": "diffnas_register_schedules",
    "dataset": "diffnas_register_datasets",
    "executor": "diffnas_register_executors",
    "logger": "diffnas_register_loggers",
}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no")


def _import_plugin(dotted: str) -> Any:
    try:
        return importlib.import_module(dotted)
    except Exception as exc:  # a broken plugin must be named, whatever it raised
        raise PluginError(f'error importing plugin "{dotted}": {type(exc).__name__}: {exc}') from exc


def get_plugin_manager(autoload: bool | None = None, extra_plugins: Iterable[Any] = ()) -> pluggy.PluginManager:
    """A fresh plugin manager with the specs, the bundled plugins and (optionally) entry points.

    :param autoload: load ``diffnas.plugins`` entry points; ``None`` follows
        ``DIFFNAS_DISABLE_PLUGIN_AUTOLOAD``.
    :param extra_plugins: objects or modules to register as well (tests, embedding applications).
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for dotted in BUILTIN_PLUGINS:
        pm.register(_import_plugin(dotted), name=dotted.rsplit(".", 1)[-1] if dotted != "diffnas.plugins.defaults" else "defaults")
    if autoload is None:
        autoload = not _truthy(os.environ.get("DIFFNAS_DISABLE_PLUGIN_AUTOLOAD"))
    if autoload:
        load_entry_points(pm)
    for plugin in extra_plugins:
        pm.register(plugin)
    pm.check_pending()
    if _truthy(os.environ.get("DIFFNAS_TRACE_PLUGINS")):
        pm.trace.root.setwriter(lambda msg: sys.stderr.write(msg))
        pm.enable_tracing()
    return pm


def load_entry_points(pm: pluggy.PluginManager) -> int:
    """Register the plugins of the ``diffnas.plugins`` entry-point group; return how many.

    ``DIFFNAS_LOAD_PLUGINS`` (comma-separated entry-point names) restricts the set; an import error
    raises :class:`PluginError` naming the entry point and its distribution.
    """
    allow = os.environ.get("DIFFNAS_LOAD_PLUGINS")
    allowed = None if allow is None else {a.strip() for a in allow.split(",") if a.strip()}
    count = 0
    seen: set[str] = set()
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP or ep.name in seen:
                continue
            seen.add(ep.name)
            if allowed is not None and ep.name not in allowed:
                continue
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except (Exception, SystemExit) as exc:  # a plugin calling sys.exit at import is named too
                what = f"called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
                raise PluginError(
                    f'error importing plugin "{ep.name}" (entry point {ep.value} of {dist.metadata["name"]}): {what}'
                ) from exc
            pm.register(plugin, name=ep.name)
            _distinfo(pm)[ep.name] = f"{dist.metadata['name']} {dist.version}"
            _entry_point_dists(pm)[ep.name] = dist.metadata["name"]
            count += 1
    if allowed:
        missing = sorted(allowed - seen)
        if missing:
            raise PluginError(f"DIFFNAS_LOAD_PLUGINS names plugin(s) that are not installed: {', '.join(missing)}; "
                              f"installed: {', '.join(sorted(seen)) or '(none)'}")
    return count


def first_paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring on one line (indentation and line breaks removed)."""
    text = inspect.cleandoc(doc or "")
    return " ".join(text.split("\n\n")[0].split()) if text else ""


@attrs.frozen
class Entry:
    """One catalogue entry: a component class registered under ``name`` by ``plugin``."""

    kind: str
    name: str
    cls: type
    plugin: str

    @property
    def help(self) -> str:
        return first_paragraph(self.cls.__doc__)


class Catalogue:
    """Every registered component, by kind and name.

    The catalogue follows its plugin manager: a plugin registered or unregistered later (a test's
    ``registered(pm, plugin)``) is seen the next time ``entries`` is read.
    """

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self._plugins: frozenset[int] | None = None
        self._entries: dict[str, dict[str, Entry]] = {}
        self.entries  # noqa: B018 - build now, so a duplicate name is reported at once

    @property
    def entries(self) -> dict[str, dict[str, Entry]]:
        """``{kind: {name: Entry}}``, rebuilt when the plugin manager's plugins have changed."""
        plugins = frozenset(id(p) for p in self.pm.get_plugins())
        if plugins != self._plugins:
            self._entries = {k: {} for k in REGISTER_HOOKS}
            self._collect()
            self._plugins = plugins
        return self._entries

    def _collect(self) -> None:
        for kind, hook_name in REGISTER_HOOKS.items():
            hook = getattr(self.pm.hook, hook_name)
            # call each implementation separately so the owning plugin is known (llm style)
            for impl in hook.get_hookimpls():
                def register(name: str, cls: type, _kind: str = kind, _plugin: str = impl.plugin_name) -> None:
                    self._add(_kind, name, cls, _plugin)
                try:
                    impl.function(**{"register": register})
                except PluginError:
                    raise
                except (Exception, SystemExit) as exc:
                    raise PluginError(f"plugin '{impl.plugin_name}' failed in {hook_name}: "
                                      f"{type(exc).__name__}: {exc}") from exc

    def _add(self, kind: str, name: str, cls: type, plugin: str) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin '{plugin}' registered a {kind} with an invalid name {name!r}")
        if not isinstance(cls, type) or not issubclass(cls, KINDS[kind]):
            raise PluginError(
                f"plugin '{plugin}' registered {kind} '{name}' as {cls!r}, which is not a subclass of "
                f"diffnas.core.protocols.{KINDS[kind].__name__}"
            )
        if not attrs.has(cls.Config):
            raise PluginError(f"plugin '{plugin}': {kind} '{name}' needs an attrs Config class")
        old = self._entries[kind].get(name)
        if old is not None:
            raise PluginError(f"{kind} '{name}' registered by both '{old.plugin}' and '{plugin}'")
        self._entries[kind][name] = Entry(kind, name, cls, plugin)

    def get(self, kind: str, name: str) -> Entry:
        try:
            return self.entries[kind][name]
        except KeyError:
            raise PluginError(self.unknown_message(kind, name)) from None

    def unknown_message(self, kind: str, name: str) -> str:
        known = sorted(self.entries[kind])
        msg = f"unknown {kind.replace('_', ' ')} {short(name)}; known: {', '.join(known) or '(none)'}"
        # a name far longer than any known one has no near match (and difflib would be slow on it)
        close = difflib.get_close_matches(str(name), known, n=1) if len(str(name)) <= 200 else []
        if close:
            msg += f" (did you mean {close[0]!r}?)"
        return msg

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def build(self, kind: str, name: str, config: Any = None, key_path: str = "") -> Component:
        """An instance of the component ``name`` of ``kind`` built from ``config`` (default: its
        Config's defaults), with ``component.name`` set to ``name`` and ``component.key_path`` to
        ``key_path`` (where the recipe chose it, ``recipe.regularisers[0]``: for its messages)."""
        comp = self.get(kind, name).cls(config)
        comp.name = name
        comp.key_path = key_path
        return comp


def distribution_of(cls: type, pm: pluggy.PluginManager | None = None, plugin: str | None = None) -> dict[str, str | None]:
    """``{"distribution", "version"}`` of what provides ``cls``: the distribution whose entry point
    registered ``plugin`` (known once entry points are loaded), else diffnas for its own modules,
    else a distribution named like the class's top-level package; both ``None`` when no installed
    distribution declares it (a test's module)."""
    dist = _entry_point_dists(pm).get(plugin) if pm is not None and plugin is not None else None
    top = cls.__module__.split(".", 1)[0]
    for name in ([dist] if dist else []) + [top, top.replace("_", "-")]:
        try:
            return {"distribution": name, "version": importlib.metadata.version(name)}
        except (importlib.metadata.PackageNotFoundError, ValueError):
            continue
    return {"distribution": None, "version": None}


def provenance(catalogue: "Catalogue", refs: Iterable[tuple[str, str, str]]) -> dict[str, dict[str, Any]]:
    """Where each component of a run comes from: for each ``(key, kind, name)`` of ``refs``, the
    component's name, class, registering plugin and distribution with its version."""
    out = {}
    for key, kind, name in refs:
        entry = catalogue.get(kind, name)
        out[key] = {"kind": kind, "name": name, "class": f"{entry.cls.__module__}.{entry.cls.__qualname__}",
                    "plugin": entry.plugin, **distribution_of(entry.cls, catalogue.pm, entry.plugin)}
    return out


def _entry_point_dists(pm: pluggy.PluginManager) -> dict[str, str]:
    """Distribution name of each entry-point plugin, by plugin name."""
    if not hasattr(pm, "diffnas_entry_point_dists"):
        pm.diffnas_entry_point_dists = {}  # type: ignore[attr-defined]
    return pm.diffnas_entry_point_dists  # type: ignore[attr-defined]


def _distinfo(pm: pluggy.PluginManager) -> dict[str, str]:
    if not hasattr(pm, "diffnas_distinfo"):
        pm.diffnas_distinfo = {}  # type: ignore[attr-defined]
    return pm.diffnas_distinfo  # type: ignore[attr-defined]


def plugin_versions(pm: pluggy.PluginManager) -> dict[str, str]:
    """``"distribution version"`` of each entry-point plugin, by plugin name."""
    return dict(_distinfo(pm))
