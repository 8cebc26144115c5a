"""Where templates are read from: the shipped defaults, and the override directory's files as they
were when the config was read (relay.templating.Renderer serves them in that order)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

from jinja2 import BaseLoader, ChoiceLoader, Environment, FileSystemLoader
from jinja2.exceptions import TemplateNotFound

import relay
from relay.template_names import served_name


def shipped_templates_dir() -> Path:
    """The default templates: inside the installed wheel, else at the repository root."""
    packaged = Path(relay.__file__).parent / "templates"
    return packaged if packaged.is_dir() else Path(relay.__file__).parent.parent / "templates"


def template_files(directory: Path) -> list[tuple[str, Path]]:
    """The files under `directory`, each with the name templates read it by, sorted; hidden
    entries left out. A Kubernetes ConfigMap volume keeps its files in `..<time written>/`, its
    own name in each pod, reached through `..data` (and a symlink per top entry): there, the
    files under `..data`, named as if at the top."""
    data = directory / "..data"
    root = data if data.is_dir() else directory
    found = []
    for parent, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if not name.startswith("."):
                path = Path(parent, name)
                found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def read_overrides(directory: Path | None) -> dict[str, bytes]:
    """The files of a templates directory by name, as they are now ({} without one); a file
    gone while read is left out, as if it had not been there."""
    files: dict[str, bytes] = {}
    for name, path in template_files(directory) if directory is not None else ():
        with contextlib.suppress(OSError):
            files[name] = path.read_bytes()
    return files


class _Snapshot(BaseLoader):
    """The override directory's files as they were when the config was read. Jinja read them
    when first rendered: a template edited since (one a reload refused, as not compiling or
    beside a config that did not load) went out from then on, and a delivery worker started
    again read them all anew, ending at a template that did not compile."""

    def __init__(self, root: Path, files: Mapping[str, bytes], sole_types: Collection[str]) -> None:
        self._root = root
        self._files = files
        self._sole_types = sole_types  # channel types with one part (relay.template_names)

    def get_source(
        self, environment: Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        name = served_name(template, self._files, self._sole_types)
        data = self._files.get(name)
        if data is None:
            raise TemplateNotFound(template)
        return data.decode(), str(self._root / name), lambda: True  # errors name the file

    def list_templates(self) -> list[str]:
        return sorted(self._files)


def template_loader(
    override_dir: Path | None, files: Mapping[str, bytes], sole_types: Collection[str]
) -> ChoiceLoader:
    """The override directory's `files` first (with one), then the shipped defaults."""
    loaders: list[BaseLoader] = [FileSystemLoader(str(shipped_templates_dir()))]
    if override_dir is not None:
        loaders.insert(0, _Snapshot(override_dir, files, sole_types))
    return ChoiceLoader(loaders)
