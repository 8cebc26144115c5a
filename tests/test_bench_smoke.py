"""Smoke test of the benchmarks (bench/): each scenario starts, produces numbers and stops.

`bench/run_all.py --quick --no-install --jobs 7` runs every scenario at a tiny size, all seven
side by side (about 15 s on two busy cores; one after the other took 50 s of the suite), and
writes the summary rows as JSON. Nothing here asserts on timing: figures only
have to be finite numbers. Alertmanager and Apprise are never installed by this test; where they
are missing their baselines must be reported as skipped, not fail the scenario.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SLOW, child_env
from tools.pgserver import find_bindir

REPO = Path(__file__).resolve().parents[1]
RUN_ALL = REPO / "bench" / "run_all.py"
INSTRUCTIONS = REPO / "bench" / "instructions.py"
SCENARIOS = ["ingest", "end-to-end", "latency", "rules scaling", "memory", "delivery", "realtime"]
LIMIT_S = 240.0  # a stuck run fails the test instead of hanging it


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM run_all's group (it stops its own children), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def _run_quick(tmp_path: Path) -> list[dict[str, Any]]:
    argv = [sys.executable, str(RUN_ALL), "--quick", "--no-install", "--jobs", str(len(SCENARIOS))]
    return _rows(argv, tmp_path, LIMIT_S)


def _rows(argv: list[str], tmp_path: Path, limit_s: float) -> list[dict[str, Any]]:
    """Run a bench script with --json-out to its end (at most `limit_s`); its summary rows."""
    out = tmp_path / "rows.json"
    argv = [*argv, "--json-out", str(out)]
    env = child_env()  # its relay children share the suite's compiled modules
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        _stop(proc)
        pytest.fail(f"{argv[1]} did not stop within {limit_s:.0f}s")
    assert proc.returncode == 0, output[-4000:]
    data: list[dict[str, Any]] = json.loads(out.read_text())
    return data


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def test_every_scenario_produces_numbers(tmp_path: Path) -> None:
    """One test, so that run_all runs once: parametrized, pytest-xdist ran its module fixture
    once in each process that got a scenario, 20 s of the suite twice."""
    rows = _run_quick(tmp_path)
    for scenario in SCENARIOS:
        mine = [r for r in rows if r["scenario"] == scenario]
        assert mine, f"no summary row for {scenario}"
        for row in mine:
            _check_row(row)


ON_POSTGRESQL = {  # the scenarios that take --store postgresql, at run_all's --quick sizes
    "ingest": ["ingest.py", "--seconds", "0.5", "--warmup", "0.1", "--rounds", "1"],
    "end-to-end": ["end_to_end.py", "--runs", "100", "--concurrency", "8", "--rounds", "1"],
    "delivery": ["delivery.py", "--count", "100", "--timeout", "30", "--rounds", "1"],
    "latency": [
        "latency.py",
        "--rate",
        "200",
        "--seconds",
        "1",
        "--warmup",
        "0.2",
        "--rounds",
        "1",
    ],
}


# ingest shows the scenarios' PostgreSQL plumbing (one setup serves all); the others, 22 s of
# the suite's 5 minutes, with RELAY_SLOW=1
_PG_IN_EVERY_RUN = "ingest"


@pytest.mark.skipif(find_bindir() is None, reason="no PostgreSQL binaries on this machine")
@pytest.mark.parametrize(
    "scenario",
    [
        pytest.param(name, marks=pytest.mark.skipif(not SLOW, reason="RELAY_SLOW=1"))
        if name != _PG_IN_EVERY_RUN
        else name
        for name in sorted(ON_POSTGRESQL)
    ],
)
def test_scenarios_on_postgresql_produce_numbers(scenario: str, tmp_path: Path) -> None:
    script, *sizes = ON_POSTGRESQL[scenario]
    argv = [sys.executable, str(REPO / "bench" / script), *sizes, "--store", "postgresql"]
    rows = _rows([*argv, *(["--no-install"] if scenario != "ingest" else [])], tmp_path, LIMIT_S)
    mine = [r for r in rows if r["scenario"] == scenario]
    assert mine and all("PostgreSQL" in r["figure"] for r in mine), rows
    for row in mine:
        _check_row(row)


@pytest.mark.skipif(not SLOW or shutil.which("valgrind") is None, reason="RELAY_SLOW=1, valgrind")
def test_instruction_counts_come_out(tmp_path: Path) -> None:
    """bench/instructions.py at its smallest sizes, intake only (about 2 minutes under
    callgrind): relay's and the bare server's counts per request are finite and positive."""
    argv = [sys.executable, str(INSTRUCTIONS), "--no-install", "--only", "ingest"]
    rows = _rows([*argv, "--small", "100", "--large", "200"], tmp_path, 900.0)
    assert [r["scenario"] for r in rows] == ["ingest"], rows
    _check_row(rows[0])
    assert rows[0]["value"] > 0 and rows[0]["baseline"] > 0, rows


def _check_row(row: dict[str, Any]) -> None:
    assert _finite(row["value"]), row
    if "skipped" in row["baseline_name"]:
        assert row["baseline"] is None and row["ratio"] is None, row
    else:
        assert _finite(row["baseline"]) and _finite(row["ratio"]), row
    assert row["met"] in (True, False, None), row
