"""
Finding plugins on disk (contract §2.1).

Every file named C{manifest.yaml} under a plugin root defines a plugin. Each
one is validated and trust-checked on its own: a bad plugin is reported with
its reason and the rest still load, so one broken directory never takes the
whole instance down. Nothing here logs; the caller decides how to show
L{Discovery.problems} and L{Discovery.warnings}.
"""
from __future__ import annotations

import os
import stat
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import attrs

from ductile.plugins.manifest import ManifestError, Plugin, load_manifest

MANIFEST_FILENAME = "manifest.yaml"

#: Files that make a directory look like a plugin; such a directory without a
#: manifest is ignored, which surprises people, so it is reported.
COMMON_ENTRYPOINTS = (
    "run.py", "run.sh", "main.py", "main.go", "index.js", "index.ts", "run.js", "run.ts",
)


@attrs.frozen
class Discovery:
    """
    The outcome of scanning the plugin roots.

    @ivar plugins: loaded, trust-checked plugins by name.
    @ivar problems: one line per plugin (or root) that was not loaded, with
        the reason; also directories that look like plugins but have no
        manifest.
    @ivar warnings: allowed-but-notable things (symlinks under
        C{allow_symlinks}).
    @ivar disabled: names of plugins skipped because the operator set
        C{plugins.<name>.enabled: false}.
    """

    plugins: Mapping[str, Plugin]
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()


class TrustError(Exception):
    """A plugin failed a trust check; the message says which and why."""


def discover(
    roots: Sequence[str],
    *,
    allow_symlinks: bool = False,
    plugin_configs: Mapping[str, Any] = MappingProxyType({}),
) -> Discovery:
    """
    Load every plugin under C{roots}, in root order then path order.

    @param roots: plugin root directories (C{~} expanded; relative paths are
        taken from the current directory, so the config loader should resolve
        them against the config file first).
    @param allow_symlinks: C{service.allow_symlinks}; symlinks are then
        reported as warnings instead of refused.
    @param plugin_configs: C{plugins.<name>} settings (objects with
        C{enabled} and C{config}, e.g. L{ductile.config.models.PluginConfig}),
        used to skip disabled plugins and to check C{config_keys.required}.
    """
    scan = _Scan(allow_symlinks, plugin_configs)
    seen: set[str] = set()
    for root in roots:
        if not root or not root.strip():
            continue
        absolute = os.path.abspath(os.path.expanduser(root.strip()))
        if absolute in seen:
            continue
        seen.add(absolute)
        scan.root(absolute)
    return Discovery(
        plugins=MappingProxyType(dict(scan.plugins)),
        problems=tuple(scan.problems),
        warnings=tuple(scan.warnings),
        disabled=tuple(scan.disabled),
    )


class _Scan:
    def __init__(self, allow_symlinks: bool, plugin_configs: Mapping[str, Any]) -> None:
        self.allow_symlinks = allow_symlinks
        self.plugin_configs = plugin_configs
        self.plugins: dict[str, Plugin] = {}
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.disabled: list[str] = []

    def root(self, root: str) -> None:
        if not os.path.exists(root):
            self.problems.append(f"plugin root does not exist: {root}")
            return
        if not os.path.isdir(root):
            self.problems.append(f"plugin root is not a directory: {root}")
            return
        try:
            self.symlink("plugin_root", root)
        except TrustError as e:
            self.problems.append(f"plugin root {root} skipped: {e}")
            return

        def walk_error(e: OSError) -> None:
            self.problems.append(f"cannot scan {e.filename}: {e.strerror}")

        for dirpath, dirnames, filenames in os.walk(root, onerror=walk_error):
            dirnames.sort()
            if MANIFEST_FILENAME in filenames:
                self.load(os.path.join(dirpath, MANIFEST_FILENAME), root)
        self.orphans(root)

    def load(self, manifest_path: str, root: str) -> None:
        directory = os.path.dirname(manifest_path)
        try:
            plugin = load_manifest(manifest_path)
        except ManifestError as e:
            self.problems.append(f"plugin in {directory} not loaded: invalid manifest {e}")
            return
        settings = self.plugin_configs.get(plugin.name)
        if settings is not None and not getattr(settings, "enabled", True):
            if plugin.name not in self.disabled:
                self.disabled.append(plugin.name)
            return
        try:
            plugin = self.trust(plugin, root)
        except TrustError as e:
            self.problems.append(
                f"plugin {plugin.name!r} in {directory} not loaded: trust check failed: {e}"
            )
            return
        missing = self.missing_config_keys(plugin, settings)
        if missing:
            self.problems.append(
                f"plugin {plugin.name!r} in {directory} not loaded: missing required "
                f"config keys: {', '.join(missing)} "
                f"(set them under plugins.{plugin.name}.config)"
            )
            return
        existing = self.plugins.get(plugin.name)
        if existing is not None:
            self.problems.append(
                f"duplicate plugin {plugin.name!r} in {directory} ignored "
                f"(keeping the first, in {existing.directory})"
            )
            return
        self.plugins[plugin.name] = plugin

    def trust(self, plugin: Plugin, root: str) -> Plugin:
        """
        The mandatory trust checks; returns the plugin with its entrypoint
        resolved, so a later symlink swap cannot redirect the spawn.
        """
        entrypoint = plugin.entrypoint
        if ".." in os.path.relpath(entrypoint, plugin.directory).split(os.sep):
            raise TrustError(f"entrypoint {entrypoint} is outside the plugin directory")
        if not os.path.lexists(entrypoint):
            raise TrustError(f"entrypoint not found: {entrypoint}")
        resolved = os.path.realpath(entrypoint)
        if not os.path.exists(resolved):
            raise TrustError(f"entrypoint {entrypoint} is a dangling symlink to {resolved}")
        resolved_dir = os.path.realpath(plugin.directory)
        self.symlink("plugin_entrypoint", entrypoint)
        self.symlink("plugin_dir", plugin.directory)
        resolved_root = os.path.realpath(root)
        if not _is_under(resolved, resolved_root):
            raise TrustError(f"entrypoint {resolved} is not under the plugin root {resolved_root}")
        if not _is_under(resolved, resolved_dir):
            raise TrustError(
                f"entrypoint {resolved} is not under the plugin directory {resolved_dir}"
            )
        st = os.stat(resolved)
        if not stat.S_ISREG(st.st_mode):
            raise TrustError(f"entrypoint is not a regular file: {resolved}")
        if not st.st_mode & 0o111:
            raise TrustError(f"entrypoint is not executable: {resolved}")
        if os.stat(resolved_dir).st_mode & 0o002:
            raise TrustError(f"plugin directory is world-writable: {resolved_dir}")
        return attrs.evolve(plugin, entrypoint=resolved)

    def symlink(self, kind: str, path: str) -> None:
        """Refuse (or, when allowed, note) a path that resolves elsewhere."""
        resolved = os.path.realpath(path)
        if os.path.normpath(resolved) == os.path.normpath(path):
            return
        message = f"symlink detected for {kind} ({path} -> {resolved})"
        if not self.allow_symlinks:
            raise TrustError(message + "; set service.allow_symlinks: true to allow")
        self.warnings.append(message)

    def missing_config_keys(self, plugin: Plugin, settings: Any) -> list[str]:
        config = getattr(settings, "config", None) or {}
        return [k for k in plugin.config_keys_required if config.get(k) is None]

    def orphans(self, root: str) -> None:
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if os.path.exists(os.path.join(entry.path, MANIFEST_FILENAME)):
                continue
            for name in COMMON_ENTRYPOINTS:
                if os.path.exists(os.path.join(entry.path, name)):
                    self.problems.append(
                        f"plugin directory {entry.path} has {name} but no "
                        f"{MANIFEST_FILENAME}; it is ignored"
                    )
                    break


def _is_under(path: str, directory: str) -> bool:
    return path.startswith(directory.rstrip(os.sep) + os.sep)
