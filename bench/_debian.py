"""A program from Debian's packages, found on PATH or apt-get installed (root only) when allowed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence

INSTALL_TIMEOUT_S = 600.0


def find(names: Sequence[str]) -> str | None:
    """The first of `names` on PATH."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure(names: Sequence[str], package: str, install: bool) -> tuple[str | None, str]:
    """The program (the first of `names` on PATH), installing `package` when allowed (root,
    apt-get; `apt-get update` once if the first try fails); else None and why."""
    found = find(names)
    if found:
        return found, ""
    if not install:
        return None, f"{names[0]} not installed (installing disabled)"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, f"{names[0]} not installed, and not root with apt-get to install it"
    print(f"# installing {package} with apt-get ...", file=sys.stderr, flush=True)
    quiet = ("install", "-y", "-qq", "--no-install-recommends", package)
    if not _apt_get(*quiet) and not (_apt_get("update", "-qq") and _apt_get(*quiet)):
        return None, f"apt-get install {package} failed"
    found = find(names)
    return found, "" if found else f"{package} installed but no {names[0]} on PATH"


def _apt_get(*argv: str) -> bool:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(
            ["apt-get", *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0
