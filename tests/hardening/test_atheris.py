"""bench/fuzz_atheris.py at a small size: coverage-guided fuzzing of every outside-input parser.

Each target gets a few thousand inputs here; run the script for minutes to fuzz for real.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytest.importorskip("atheris")


@pytest.mark.parametrize("target", ["runs", "alerts", "shape", "config"])
def test_fuzz_target_finds_no_crash(target: str, tmp_path: Path) -> None:
    cmd = [sys.executable, "bench/fuzz_atheris.py", "--target", target, "--runs", "1500"]
    cmd += ["--artifacts", str(tmp_path)]
    done = subprocess.run(
        [*cmd, "--seconds", "30"],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "no crash" in done.stdout
