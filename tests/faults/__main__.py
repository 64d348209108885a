"""``python -m tests.faults``: one fault run per seed; exit 1 if any check failed."""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from tests.faults.plan import MIB, Kind
from tests.faults.runner import Settings, run_suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__)
    parser.add_argument(
        "--seed",
        type=int,
        action="append",
        help="a seed to run (repeat for several; default: a random one)",
    )
    parser.add_argument("--transfers", type=int, default=40)
    parser.add_argument(
        "--max-mib",
        type=float,
        default=24.0,
        help="largest transfer, MiB (sizes are uniform from 0)",
    )
    parser.add_argument("--segment-kib", type=int, default=256)
    parser.add_argument(
        "--max-seconds", type=float, default=5.0, help="longest outage, full disk or HSM loss"
    )
    parser.add_argument(
        "--kinds",
        default=",".join(k.value for k in Kind),
        help="fault kinds to inject, comma-separated",
    )
    parser.add_argument(
        "--root",
        type=Path,
        help="keep the state here (default: a temporary directory, removed after a passing run)",
    )
    args = parser.parse_args(argv)
    seeds = args.seed or [random.SystemRandom().randrange(1, 1 << 31)]
    try:
        kinds = tuple(Kind(name.strip()) for name in args.kinds.split(",") if name.strip())
    except ValueError as exc:
        parser.error(f"--kinds: {exc}; known: {', '.join(k.value for k in Kind)}")
    failed = []
    for seed in seeds:
        root = args.root / f"seed-{seed}" if args.root is not None else None
        settings = Settings(
            seed=seed,
            transfers=args.transfers,
            max_size=int(args.max_mib * MIB),
            segment_size=args.segment_kib << 10,
            max_seconds=args.max_seconds,
            kinds=kinds,
            root=root,
        )
        summary = run_suite(settings, say=lambda line: print(line, flush=True))
        print(summary.render(), flush=True)
        if not summary.ok:
            failed.append(seed)
    if failed:
        print(f"FAILED seeds: {', '.join(map(str, failed))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
