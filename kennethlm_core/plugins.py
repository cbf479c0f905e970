"""The plugin manager: built-ins and installed plugins, looked up by slot and name.

Built-in components live in ``kennethlm_core.builtin`` and register through the same hooks as
any plugin. Plugins are found through the ``kennethlm`` entry-point group. A plugin that fails
to import, or whose hook raises, is reported (a warning, and a "broken" row in
``klm list-plugins``) and everything else keeps working, unless ``KLM_STRICT_PLUGINS=1``.
``KLM_DISABLE_PLUGINS=a,b`` skips plugins by entry-point or distribution name.

A component's options share one namespace with the core settings (``--set KEY=VALUE``,
config.json), so a plugin may not declare an option that is a core setting (``lr``,
``steps``), nor one that a component of another distribution declares where the two can be
in the same run (another slot, or two tweaks). Such a plugin is refused when it loads, like
a broken one, naming both distributions. Components of one slot other than tweaks never run
together, so they may share an option: every MLP has its ``mlp_ratio``.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from kennethlm_core import builtin, hookspecs, logs
from kennethlm_core.config import field_names
from kennethlm_core.errors import KLMError, PluginWarning, UnknownComponent
from kennethlm_core.hookspecs import PROJECT, SLOTS

BUILTIN = "kennethlm"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.+-]*$")


@dataclass(frozen=True)
class Component:
    """One registered component: what it is, who provides it, and what it needs."""

    slot: str
    name: str
    factory: Callable[..., Any]
    summary: str = ""
    plugin: str = BUILTIN
    distribution: str = BUILTIN
    version: str = ""
    provides: frozenset[str] = frozenset()
    requires: dict[str, frozenset[str]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BrokenPlugin:
    plugin: str
    distribution: str
    version: str
    error: str


class Registry:
    """Every component of every slot, with the distribution that provides it."""

    def __init__(
        self,
        *,
        entry_points: bool = True,
        disabled: Iterable[str] = (),
        strict: bool = False,
    ):
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.components: dict[str, dict[str, Component]] = {slot: {} for slot in SLOTS}
        self.broken: list[BrokenPlugin] = []
        self.disabled: list[str] = []
        self.strict = strict
        self._dist: dict[str, tuple[str, str]] = {}  # plugin name -> (distribution, version)
        self.add_plugin(builtin, BUILTIN, BUILTIN, _version(BUILTIN))
        if entry_points:
            self._load_entry_points(set(disabled))

    # -- loading -------------------------------------------------------------------------

    def _load_entry_points(self, disabled: set[str]) -> None:
        seen = set()
        for ep in importlib.metadata.entry_points(group=PROJECT):
            dist = ep.dist.name if ep.dist else "(unknown)"
            version = ep.dist.version if ep.dist else ""
            if (dist, ep.name) in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add((dist, ep.name))
            if ep.name in disabled or dist in disabled:
                self.disabled.append(ep.name)
                continue
            try:
                module = ep.load()
            except Exception as e:  # a broken plugin must not take the others down
                self._report_broken(ep.name, dist, version, e)
                continue
            self.add_plugin(module, ep.name, dist, version)

    def add_plugin(self, module: Any, name: str, distribution: str, version: str = "") -> bool:
        """Register a plugin object (a module, usually) and collect its components.

        Returns False, and records the plugin as broken, when one of its hooks fails.
        """
        unknown = [a for a in dir(module) if a.startswith("klm_") and not hasattr(hookspecs, a)]
        try:
            if unknown:
                raise TypeError(f"unknown hook {unknown[0]!r} (the hooks are klm_register_<slot>)")
            self.pm.register(module, name=name)
        except Exception as e:
            self._report_broken(name, distribution, version, e)
            return False
        self._dist[name] = (distribution, version)
        pending: list[Component] = []
        try:
            for slot in SLOTS:
                for impl in self._impls(f"klm_register_{slot}", module):
                    impl.function(register=self._registrar(slot, name, pending))
        except KLMError:
            self.pm.unregister(module)
            raise
        except Exception as e:
            self.pm.unregister(module)
            self._report_broken(name, distribution, version, e)
            return False
        clash = next(filter(None, (self._option_clash(c) for c in pending)), None)
        if clash:
            self.pm.unregister(module)
            self._report_broken(name, distribution, version, clash)
            return False
        for comp in pending:
            self._add_component(comp)
        return True

    def _option_clash(self, comp: Component) -> str | None:
        """Why comp's options cannot share a run's settings with the rest, or None."""
        core = field_names()
        for key in comp.options:
            if key in core:
                return (
                    f"{comp.slot} '{comp.name}' ({comp.distribution}) declares option '{key}', "
                    f"which is a core setting of {BUILTIN}; rename the option"
                )
            for other in self.all():
                if (
                    key in other.options
                    and other.distribution != comp.distribution
                    and (other.slot != comp.slot or comp.slot == "tweak")
                ):
                    return (
                        f"{comp.slot} '{comp.name}' ({comp.distribution}) declares option "
                        f"'{key}', already declared by {other.slot} '{other.name}' "
                        f"({other.distribution}); rename one, or skip one with "
                        f"KLM_DISABLE_PLUGINS={comp.plugin}"
                    )
        return None

    def _impls(self, hook_name: str, module: Any) -> list:
        caller = getattr(self.pm.hook, hook_name)
        return [impl for impl in caller.get_hookimpls() if impl.plugin is module]

    def _registrar(self, slot: str, plugin: str, pending: list[Component]) -> Callable:
        distribution, version = self._dist[plugin]

        def register(
            name: str,
            factory: Callable,
            summary: str = "",
            *,
            provides: Iterable[str] = (),
            requires: dict[str, Iterable[str]] | None = None,
            options: dict[str, Any] | None = None,
            **extra: Any,
        ) -> None:
            if not isinstance(name, str) or not _NAME.match(name):
                raise ValueError(f"{slot} name {name!r} must be lower-case letters, digits, -_.")
            if not callable(factory):
                raise TypeError(f"{slot} {name!r}: factory {factory!r} is not callable")
            bad = set(requires or {}) - set(SLOTS)
            if bad:
                raise ValueError(f"{slot} {name!r} requires unknown slot {sorted(bad)[0]!r}")
            comp = Component(
                slot=slot,
                name=name,
                factory=factory,
                summary=summary,
                plugin=plugin,
                distribution=distribution,
                version=version,
                provides=frozenset(provides),
                requires={s: frozenset(f) for s, f in (requires or {}).items()},
                options=dict(options or {}),
                extra=extra,
            )
            for other in [*pending, self.components[slot].get(name)]:
                if other is not None and other.name == name and other.slot == slot:
                    raise _duplicate(comp, other)
            pending.append(comp)

        return register

    def _add_component(self, comp: Component) -> None:
        other = self.components[comp.slot].get(comp.name)
        if other is not None:
            raise _duplicate(comp, other)
        self.components[comp.slot][comp.name] = comp

    def _report_broken(self, plugin: str, distribution: str, version: str, error: Exception | str):
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        message = text.strip().splitlines()[0]
        if self.strict:
            raise KLMError(
                f"plugin '{plugin}' ({distribution}) failed to load: {message} "
                "(KLM_STRICT_PLUGINS=1 makes this fatal; unset it to continue without it)"
            )
        self.broken.append(BrokenPlugin(plugin, distribution, version, message))
        warnings.warn(
            f"plugin '{plugin}' ({distribution}) failed to load and is skipped: {message}",
            PluginWarning,
            stacklevel=2,
        )

    # -- lookup --------------------------------------------------------------------------

    def names(self, slot: str) -> list[str]:
        return sorted(self._slot(slot))

    def get(self, slot: str, name: str) -> Component:
        components = self._slot(slot)
        if name in components:
            return components[name]
        known = sorted(components)
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        broken = ""
        for b in self.broken:  # entry points are named <slot>-<name> by convention
            if b.plugin in (f"{slot}-{name}", name):
                raise UnknownComponent(
                    f"{slot} '{name}' is in plugin '{b.plugin}' ({b.distribution}), which "
                    f"failed to load ({b.error}); reinstall or fix it, or choose another {slot}"
                )
        if self.broken:
            names = ", ".join(f"'{b.plugin}'" for b in self.broken)
            broken = f"; broken plugins not loaded: {names}"
        raise UnknownComponent(
            f"unknown {slot} '{name}'; {hint}known: {', '.join(known) or '(none)'}{broken}"
        )

    def all(self) -> list[Component]:
        return [c for slot in SLOTS for _, c in sorted(self.components[slot].items())]

    def _slot(self, slot: str) -> dict[str, Component]:
        if slot not in self.components:
            close = difflib.get_close_matches(slot, SLOTS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise UnknownComponent(f"unknown slot '{slot}'; {hint}slots: {', '.join(SLOTS)}")
        return self.components[slot]

    def add_commands(self, cli: Any) -> None:
        """Let every plugin add its CLI commands; a failing plugin is reported, not fatal."""
        for impl in self.pm.hook.klm_register_commands.get_hookimpls():
            try:
                impl.function(cli=cli)
            except Exception as e:
                dist, version = self._dist.get(impl.plugin_name, ("?", ""))
                self._report_broken(impl.plugin_name, dist, version, e)


def _duplicate(new: Component, old: Component) -> KLMError:
    return KLMError(
        f"{new.slot} '{new.name}' is registered twice: by {old.distribution} "
        f"(plugin '{old.plugin}') and by {new.distribution} (plugin '{new.plugin}'); "
        "uninstall one, or skip one with KLM_DISABLE_PLUGINS=<plugin>"
    )


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def env_disabled() -> list[str]:
    return [p.strip() for p in os.environ.get("KLM_DISABLE_PLUGINS", "").split(",") if p.strip()]


def env_strict() -> bool:
    return os.environ.get("KLM_STRICT_PLUGINS", "").strip().lower() in {"1", "true", "yes"}


_cache: dict[tuple, Registry] = {}


def get_registry(disabled: Iterable[str] = ()) -> Registry:
    """The registry for this process (built once per set of disabled plugins)."""
    key = (tuple(sorted({*env_disabled(), *disabled})), env_strict())
    if key not in _cache:
        _cache[key] = Registry(disabled=key[0], strict=key[1])
        logs.quiet_loaded()  # torch and what plugins imported: their logs go through klm's
    return _cache[key]


def reset_registry() -> None:
    """Forget the cached registry (tests, or after installing a plugin in-process)."""
    _cache.clear()
