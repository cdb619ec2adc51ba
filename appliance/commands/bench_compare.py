"""`seawall bench compare`: Seawall side by side with nftables, the Linux bridge and xdp-filter.

Figures and ratios only, never pass/fail on speed. `main(args)` is what a
`seawall bench compare` subcommand calls too.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

PARTS = ("drop", "forward", "latency", "multiqueue", "scale", "control", "detection")
DEFAULT_OUT = pathlib.Path("docs/bench")


def add_arguments(p) -> None:
    p.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT,
                   help=f"directory for compare.md, compare.json and the PNG plots (default {DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="small counts (about half a minute)")
    p.add_argument("--packets", type=int, help="frames per burst (default 2,000,000; quick 100,000)")
    p.add_argument("--runs", type=int, help="bursts per figure; the median is reported (default 5; quick 3)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--json", action="store_true", help="one JSON object (the headline) as the last stdout line")


def register(subparsers) -> None:
    """Nothing at the top level: `seawall bench compare` (appliance.commands.bench) is the command."""


class Progress:
    """A one-line progress bar on stderr: step count, elapsed time, current step."""

    def __init__(self, expected_steps: int) -> None:
        self.expected = max(1, expected_steps)
        self.done = 0
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        self.done += 1
        filled = min(20, 20 * self.done // self.expected)
        bar = "#" * filled + "." * (20 - filled)
        print(f"\r[{bar}] {self.done}/{self.expected} {time.monotonic() - self.started:5.0f}s {message[:60]:<60}",
              end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        print(file=sys.stderr, flush=True)


def _expected_steps(sizes, parts: tuple[str, ...]) -> int:
    steps = 0
    if "drop" in parts:
        steps += len(sizes.prefixes) * 7 + 2
    if "forward" in parts:
        steps += 3
    if "latency" in parts:
        steps += 4
    if "multiqueue" in parts:
        steps += 3
    if "scale" in parts:
        steps += len(sizes.scale_points)
    if "control" in parts:
        steps += len(sizes.control_points)
    if "detection" in parts:
        steps += 8   # lab up, six vectors, the reference flood
    return steps


def main(args) -> int:
    import dataclasses  # noqa: PLC0415

    from appliance.bench import compare  # noqa: PLC0415

    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        print(f"seawall bench compare: --parts must name some of {', '.join(PARTS)} (got {args.parts!r})",
              file=sys.stderr)
        return 2
    sizes = compare.QUICK if args.quick else compare.Sizes()
    for name in ("packets", "runs"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                print(f"seawall bench compare: --{name} must be >= 1, got {value}", file=sys.stderr)
                return 2
            sizes = dataclasses.replace(sizes, **{name: value})
    progress = Progress(_expected_steps(sizes, parts))
    try:
        result = compare.run(sizes, args.out, progress, parts)
    except compare.BenchError as exc:
        progress.close()
        print(f"seawall bench compare: {exc}", file=sys.stderr)
        return 1
    progress.close()
    print((args.out / "compare.md").read_text())
    print(f"outputs: {', '.join(result.get('outputs', []))}")
    if args.json:
        print(json.dumps(result["headline"]))
    return 0
