"""Summary rows every scenario reports, and the one table `run_all.py` prints.

A scenario script prints its own details, then its rows as a table; with `--json-out PATH` it also
writes them as JSON for `run_all.py` to collect.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Row:
    """One figure of a scenario, its baseline measured in the same run, and the target.

    `ratio` is figure / baseline unless the scenario says otherwise in `target` (e.g. a speed-up).
    `met` is None when there is no target or the figure is missing (a skipped baseline)."""

    scenario: str
    figure: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""


def compare(
    scenario: str,
    figure: str,
    value: float | None,
    unit: str,
    baseline: float | None,
    baseline_name: str,
    **more: Any,
) -> Row:
    """A Row whose ratio is value / baseline; `more`: target, met, note."""
    return Row(
        scenario, figure, value, unit, baseline, baseline_name, ratio(value, baseline), **more
    )


def ratio(top: float | None, bottom: float | None) -> float | None:
    if top is None or bottom is None or bottom == 0 or math.isnan(top) or math.isnan(bottom):
        return None
    return top / bottom


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of already sorted values, nearest rank; NaN when empty."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def cores(value: float | None) -> str:
    """The noise meter as text: cores other work kept busy during a measurement."""
    return f"others {value:.1f} cores" if value is not None else "others ?"


def _num(value: float | None, unit: str = "") -> str:
    if value is None or math.isnan(value):
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def _met(row: Row) -> str:
    return {True: "yes", False: "NO", None: "-"}[row.met]


def table(rows: Iterable[Row]) -> str:
    """A plain-text table: scenario, figure, value, baseline, ratio, target, met?"""
    head = ("scenario", "figure", "value", "baseline", "ratio", "target", "met?")
    lines = [head]
    for r in rows:
        base = _num(r.baseline, r.unit) + (f" ({r.baseline_name})" if r.baseline_name else "")
        if r.baseline is None and r.baseline_name:
            base = f"- ({r.baseline_name})"
        ratio_text = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        value = _num(r.value, r.unit) + (f"  [{r.note}]" if r.note else "")
        lines.append((r.scenario, r.figure, value, base, ratio_text, r.target, _met(r)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(s.rstrip() for s in out)


def write_rows(path: Path | None, rows: Sequence[Row]) -> None:
    if path is not None:
        path.write_text(json.dumps([asdict(r) for r in rows], indent=1))


def read_rows(path: Path) -> list[Row]:
    data: list[dict[str, Any]] = json.loads(path.read_text())
    return [Row(**item) for item in data]


def arg_parser(doc: str, *, installs: str = "", workers: bool = False) -> argparse.ArgumentParser:
    """A scenario's command line: --json-out; --no-install when it installs `installs`;
    --relay-workers when relay's delivery can run in worker processes (`relay serve --workers`),
    and --store (relay's store: SQLite, or a throwaway PostgreSQL server)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--json-out", type=Path, default=None, help="write the summary rows here")
    if installs:
        p.add_argument("--no-install", action="store_true", help=f"never install {installs}")
    if workers:
        p.add_argument(
            "--relay-workers", type=int, default=0, help="RELAY_WORKERS (default 0: in-process)"
        )
        p.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    return p


def workers_note(workers: int, store: str = "sqlite") -> str:
    """Said in a figure when relay did not run with its defaults (in-process delivery, SQLite)."""
    workers_said = f" [relay --workers {workers}]" if workers else ""
    return workers_said + (" [relay on PostgreSQL]" if store == "postgresql" else "")


def report(rows: Sequence[Row], json_out: Path | None) -> None:
    """Print the rows as a table and write them to `json_out` (when given)."""
    print("\n" + table(rows), flush=True)
    write_rows(json_out, rows)
