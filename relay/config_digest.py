"""What identifies the running config: the fingerprint of its files (the reload watch compares
it) and its hash (in /metrics: replicas or reloads that run different configs differ in it)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from relay.template_files import read_overrides

if TYPE_CHECKING:
    from relay.configure import Compiled


def config_fingerprint(compiled: Compiled) -> tuple[tuple[str, int, int, int], ...]:
    """What changes when the config file or a template changes: paths, sizes, mtimes, inodes
    (a file renamed over another, as `rsync -a` or `cp -p` then `mv` do, may keep both)."""
    paths = [Path(compiled.loaded.source.filename)]
    directory = compiled.loaded.config.templates.dir
    if directory is not None:
        paths += _files_under(directory)
    out = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            out.append((str(path), -1, -1, -1))
            continue
        out.append((str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(out)


def read_digest(compiled: Compiled) -> str | None:
    """A digest of what `compiled` was read from: the config file's text and the files of its
    templates directory, as read (None for the built-in default, read from no file)."""
    loaded = compiled.loaded
    return None if loaded.builtin else _digest(loaded.source.text, compiled.renderer.overrides)


def disk_digest(compiled: Compiled) -> str | None:
    """read_digest of the files `compiled` was read from as they are now: the same when they
    were rewritten with the content they had (a `touch`, a config-management tool's run); None
    when the config file cannot be read. Reads the files: call it off the event loop."""
    loaded = compiled.loaded
    if loaded.builtin:
        return None
    try:
        text = Path(loaded.source.filename).read_text(encoding="utf-8")  # as config_load reads
    except (OSError, UnicodeDecodeError):
        return None
    return _digest(text, read_overrides(loaded.config.templates.dir))


def _digest(text: str, templates: Mapping[str, bytes]) -> str:
    digest = hashlib.sha256(text.encode(errors="surrogatepass"))
    for name, data in sorted(templates.items()):
        digest.update(b"\0" + name.encode(errors="replace") + b"\0" + data)
    return digest.hexdigest()


_WHERE = {"templates": {"dir"}}  # the config's files' place on disk: not part of its digest


def config_hash(compiled: Compiled) -> int:
    """A 52-bit digest (exact as a float, so in /metrics) of the running config as relay reads
    it, its environment variables filled in, and of the files of its templates directory: two
    replicas or two reloads that differ in it run different configs. Secrets are masked before
    it is taken, so a secret changed alone does not change it (and nothing of one leaks). The
    templates directory counts by its files (their paths inside it), not by where it is: two
    replicas mounting the same files at different paths run the same config."""
    loaded = compiled.loaded
    digest = hashlib.sha256(loaded.config.model_dump_json(exclude=_WHERE).encode())
    for name, data in sorted(compiled.renderer.overrides.items()):  # the files it runs
        digest.update(b"\0" + name.encode(errors="replace") + b"\0" + data)
    return int(digest.hexdigest()[:13], 16)


def _files_under(directory: Path) -> list[Path]:
    """The files under `directory`, sorted. A directory that vanishes while listed is skipped:
    a ConfigMap update deletes the old version's directory, and rglob raised then, which ended
    the watching of the files for good."""
    found = [Path(parent, name) for parent, _, names in os.walk(directory) for name in names]
    return sorted(found)
