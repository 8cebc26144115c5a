"""Summarise a py-spy raw (collapsed stacks) profile: where each thread spends its samples.

    python bench/profile_summary.py PROFILE.txt [--top 25] [--match relay/]

Written by `bench/ingest.py --py-spy PREFIX` or `bench/delivery.py --py-spy FILE` (py-spy
record --format raw --threads --subprocesses). Prints, per thread (and process, for relay's
delivery workers), the share of samples each function is on the stack (inclusive) and at the
top (self).
py-spy samples only non-idle threads by default, so shares are of CPU-busy time.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

_LOCATION = re.compile(r" \(([^()]*):\d+\)$")


def function(frame: str) -> str:
    """`name (file.py:12)` → `name (file.py)`: lines of one function count together."""
    return _LOCATION.sub(lambda m: f" ({m.group(1)})", frame.strip())


def load(path: Path) -> dict[str, list[tuple[list[str], int]]]:
    threads: dict[str, list[tuple[list[str], int]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        procs = [f for f in frames if f.startswith("process ")]  # py-spy --subprocesses
        frames = frames[len(procs) :]
        thread = frames[0].split(":", 1)[-1].strip() if frames[0].startswith("thread") else "?"
        if procs:
            thread = f"{_process(procs[-1])} {thread}"
        threads[thread].append(([function(f) for f in frames[1:]], int(count)))
    return threads


def _process(frame: str) -> str:
    """`process 123:"python -m relay serve --delivery-worker 0 ..."` → `123 (worker 0)`."""
    pid, _, command = frame.removeprefix("process ").partition(":")
    words = command.strip('"').split()
    flag = "--delivery-worker"
    role = f"worker {words[words.index(flag) + 1]}" if flag in words[:-1] else "parent"
    return f"process {pid} ({role})"


def summarise(stacks: list[tuple[list[str], int]], top: int, match: str) -> list[str]:
    total = sum(n for _, n in stacks) or 1
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for frames, n in stacks:
        for name in set(frames):
            inclusive[name] += n
        if frames:
            own[frames[-1]] += n
    lines = [f"  samples: {total}", "  inclusive (on the stack):"]
    chosen = [(k, v) for k, v in inclusive.most_common() if match in k][:top]
    lines += [f"    {v / total:6.1%}  {k}" for k, v in chosen]
    lines.append("  self (top of the stack):")
    lines += [f"    {v / total:6.1%}  {k}" for k, v in own.most_common(top)]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profile", type=Path)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--match", default="", help="only inclusive entries containing this text")
    args = p.parse_args(argv)
    threads = load(args.profile)
    grand = sum(n for stacks in threads.values() for _, n in stacks) or 1
    for thread, stacks in sorted(threads.items(), key=lambda t: -sum(n for _, n in t[1])):
        share = sum(n for _, n in stacks) / grand
        print(f"thread {thread} ({share:.0%} of all samples)")
        print("\n".join(summarise(stacks, args.top, args.match)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
