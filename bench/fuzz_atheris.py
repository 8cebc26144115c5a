"""Coverage-guided fuzzing (atheris, libFuzzer) of every parser that takes outside input.

    .venv/bin/python bench/fuzz_atheris.py                      # every target, 20 000 inputs each
    .venv/bin/python bench/fuzz_atheris.py --target runs --runs 2000000 --seconds 600

Targets (each in its own child process, since libFuzzer exits when it is done):

* `runs`   — a POST /v1/runs body: parse_body + parse_runs (SDK objects, raw rows, wire values)
* `alerts` — a POST /v1/trigger/alerts body: parse_body + parse_alert
* `shape`  — a Realtime (Electric shape) response body through Shape.receive + parse_raw_run,
             and its rows and position written as the follower stores them
* `config` — a YAML config through parse_config

The seed corpus is the fixtures (shared/fixtures/trigger, tests/fixtures). An input may only be
refused with the parser's own error (InputError, ShapeError, ConfigError); anything else is a
crash, which libFuzzer reports with the input that caused it (saved as crash-*) and exit code 1.
tests/hardening/test_fuzz.py drives the same parsers with hypothesis inside the suite; this
script is the long-running, coverage-guided complement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import orjson

try:
    import atheris
except ImportError:  # the parent process and the docs need no atheris
    atheris = None

# relay's modules only are instrumented for coverage feedback (all of them would cost minutes),
# and only in the child that fuzzes: the parent's instrumented imports cost 2-3 s of CPU a target
CHILD = atheris is not None and "--child" in sys.argv
with atheris.instrument_imports(include=["relay"]) if CHILD else contextlib.nullcontext():
    from relay.channels import settings_models
    from relay.config_load import parse_config
    from relay.errors import ConfigError, InputError
    from relay.formats import parse_body, parse_runs
    from relay.formats.electric import parse_raw_run
    from relay.formats.trigger_alerts import parse_alert
    from relay.sources._messages import ShapeError
    from relay.sources._shape import Position, Shape

REPO = Path(__file__).resolve().parent.parent
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures" / "trigger"
TARGETS = ("runs", "alerts", "shape", "config")


def seeds(target: str) -> list[bytes]:
    """The fixture files a target starts from."""
    if target == "runs":
        files = sorted((SHARED_FIXTURES / "realtime-run").rglob("*.json"))
    elif target == "alerts":
        files = sorted((SHARED_FIXTURES / "alert-webhooks").glob("*.body.json"))
    elif target == "shape":
        return _shape_bodies()
    else:
        files = [REPO / "config.example.yaml"]
    return [f.read_bytes() for f in files if f.is_file()]


def _shape_bodies() -> list[bytes]:
    feed = SHARED_FIXTURES / "electric" / "session_tag_feed.json"
    if not feed.is_file():
        return []
    exchanges = json.loads(feed.read_text())
    exchanges = exchanges.get("exchanges", exchanges) if isinstance(exchanges, dict) else exchanges
    bodies = [json.dumps(x.get("response", {}).get("body", [])).encode() for x in exchanges]
    return [b for b in bodies if b]


def check_runs(data: bytes) -> None:
    try:
        for run in parse_runs(parse_body(data)):
            run.as_dict()
    except InputError as exc:
        assert exc.message


def check_alerts(data: bytes) -> None:
    try:
        parse_alert(parse_body(data))
    except InputError as exc:
        assert exc.message


def check_shape(data: bytes) -> None:

    headers = {"electric-handle": "h-1", "electric-offset": "0_0", "electric-up-to-date": ""}
    shape = Shape()
    try:
        batch = shape.receive(200, headers, data)
    except ShapeError as exc:
        assert str(exc)
        return
    Position.loads(shape.position.dumps())  # the follower stores both as JSON
    for row in shape.unsaved().put.values():
        orjson.dumps(row)
    if batch is None:
        return
    for row in batch.rows:
        try:
            parse_raw_run(row, schema=batch.position.schema).as_dict()
        except InputError as exc:
            assert exc.message


def check_config(data: bytes) -> None:

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # the loader reads files as UTF-8 and reports a decode error before parsing
    try:
        parse_config(text, "c.yaml", settings_models(), env={"TOKEN": "t"})
    except ConfigError as exc:
        assert all(p.message.strip() for p in exc.problems)


CHECKS: dict[str, Callable[[bytes], None]] = {
    "runs": check_runs,
    "alerts": check_alerts,
    "shape": check_shape,
    "config": check_config,
}


def fuzz_in_this_process(target: str, libfuzzer_args: list[str]) -> None:
    if atheris is None:
        raise SystemExit("atheris is not installed: pip install atheris")
    atheris.Setup([sys.argv[0], *libfuzzer_args], CHECKS[target])
    atheris.Fuzz()


def run_target(target: str, runs: int, seconds: int, artifacts: Path) -> int:
    """Fuzz one target in a child process with a seed corpus; its exit code."""
    with tempfile.TemporaryDirectory(prefix=f"relay-fuzz-{target}-") as tmp:
        corpus = Path(tmp)
        for i, seed in enumerate(seeds(target)):
            (corpus / f"seed-{i}").write_bytes(seed)
        args = [f"-runs={runs}", f"-max_total_time={seconds}", "-max_len=65536"]
        args += [f"-artifact_prefix={artifacts}/", str(corpus)]
        cmd = [sys.executable, __file__, "--child", target, *args]
        done = subprocess.run(cmd, cwd=REPO, timeout=seconds + 120, check=False)
        return done.returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--target", choices=TARGETS, action="append", help="default: every one")
    p.add_argument("--runs", type=int, default=20_000, help="inputs per target")
    p.add_argument("--seconds", type=int, default=120, help="time limit per target")
    p.add_argument("--artifacts", type=Path, default=Path.cwd(), help="where crash-* inputs go")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args, rest = p.parse_known_args(argv)
    if args.child:
        fuzz_in_this_process(args.child, rest)
        return 0
    failed = []
    for target in args.target or TARGETS:
        print(f"== fuzzing {target}: up to {args.runs} inputs, {args.seconds} s", flush=True)
        if run_target(target, args.runs, args.seconds, args.artifacts.resolve()) != 0:
            failed.append(target)
    print("crashes in: " + ", ".join(failed) if failed else "no crash", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
