"""Every module of relay is in the import contracts `lint-imports` checks (pyproject.toml).

A module no contract names may import anything: relay.worker_procs and relay.outbox_reading were
in none, and nothing would have told of a layer they crossed.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _contract_modules() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    named: set[str] = set()
    for contract in config["tool"]["importlinter"]["contracts"]:
        containers = contract.get("containers", [""])
        for layer in contract.get("layers", []):
            for name in re.split(r"[|:]", layer):
                named |= {f"{c}.{name.strip()}".lstrip(".") for c in containers}
        named |= {*contract.get("source_modules", []), *contract.get("forbidden_modules", [])}
    return named


def _relay_modules() -> set[str]:
    modules = set()
    for path in (ROOT / "relay").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules - {"relay"}


def test_every_module_is_in_a_contract() -> None:
    named = _contract_modules()
    outside = sorted(
        module
        for module in _relay_modules()
        if not any(module == n or module.startswith(f"{n}.") for n in named)
    )
    assert outside == []
