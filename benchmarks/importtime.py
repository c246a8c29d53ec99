"""What a command imports, as a tree: `python -X importtime` over several runs, the median self and
cumulative milliseconds per module, modules whose cumulative time reaches a threshold.

Usage: python3 -m benchmarks.importtime [--runs N] [--min-ms X] PYTHON SCRIPT [ARG...]
e.g. `python3 -m benchmarks.importtime /venv/bin/python3 /venv/bin/imagetool --store S images`.
The times include -X importtime's own overhead (~20-40 %); read them relative to each other.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess

_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def parse(stderr: str) -> list[tuple[str, int, int, int]]:
    """(module, depth, self µs, cumulative µs) of each `-X importtime` line, in the order printed."""
    out = []
    for ln in stderr.splitlines():
        m = _LINE.match(ln)
        if m:
            out.append((m.group(4), len(m.group(3)) // 2, int(m.group(1)), int(m.group(2))))
    return out


def tree(python: str, argv: list[str], runs: int = 5, min_ms: float = 1.0, env: dict | None = None) -> str:
    """The import tree of `python -X importtime ARGV...` (median over `runs` runs) as text lines."""
    selfs: dict[str, list[int]] = {}
    cums: dict[str, list[int]] = {}
    order: dict[str, int] = {}
    for _ in range(runs):
        r = subprocess.run([python, "-X", "importtime", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True, env=env)
        for name, depth, own, cum in parse(r.stderr):
            order.setdefault(name, depth)
            selfs.setdefault(name, []).append(own)
            cums.setdefault(name, []).append(cum)
    total = sum(statistics.median(v) for v in selfs.values()) / 1000
    lines = [f"{total:.1f} ms in {len(selfs)} modules (median of {runs} runs); self / cumulative ms, "
             f"modules with ≥ {min_ms:g} ms cumulative:"]
    for name, depth in order.items():
        cum = statistics.median(cums[name]) / 1000
        if cum >= min_ms:
            lines.append(f"{statistics.median(selfs[name]) / 1000:6.1f} {cum:6.1f}  {'  ' * depth}{name}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--min-ms", type=float, default=1.0)
    ap.add_argument("python")
    ap.add_argument("argv", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    print(tree(args.python, args.argv, args.runs, args.min_ms))


if __name__ == "__main__":
    main()
