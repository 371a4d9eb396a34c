"""Write the reference tables of benchmarks/papers/reference/ from a `make reproduce-quick` or `make reproduce`
results folder.

    python benchmarks/papers/reference/write_reference.py RESULTS --note "make reproduce-quick: 9.5 min, load 10"
    python benchmarks/papers/reference/write_reference.py RESULTS --out .../claims_full.csv --note "make reproduce: …"

claims.csv (or the --out file: claims_full.csv for a full run) holds the claims' verdicts (`harness claims`
shows them beside yours), numbers.csv the leaderboard of every benchmark in RESULTS (`harness reference` and
the report show it beside yours). The header comment lines of both record what produced them: the harness
and torch versions and the git commit the rows carry, the date, the CPU and the note (wall time and load
average of the run)."""

from __future__ import annotations

import argparse
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

from harness.claims import REFERENCE, check_claims
from harness.claims.numbers import NUMBERS, numbers_table
from harness.results import query


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", type=Path)
    parser.add_argument("--note", default="")
    parser.add_argument(
        "--out", type=Path, default=REFERENCE, help="default: claims.csv, the table `harness claims` shows"
    )
    parser.add_argument(
        "--numbers-out", type=Path, default=NUMBERS, help="default: numbers.csv, the table `harness reference` shows"
    )
    args = parser.parse_args()
    versions = query(
        args.results,
        "SELECT DISTINCT harness_version, torch_version, git_commit FROM cells WHERE status = 'ok' ORDER BY ALL",
    )
    frame = check_claims(args.results, reference=None)[["claim", "paper", "verdict", "evidence"]]
    numbers = numbers_table(args.results)
    provenance = [
        *(
            f"# harness {r.harness_version}, torch {r.torch_version}, commit {r.git_commit}"
            for r in versions.itertuples()
        ),
        f"# machine: {cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        *([f"# {args.note}"] if args.note else []),
    ]
    for what, out, table in (("claims", args.out, frame), ("leaderboard numbers", args.numbers_out, numbers)):
        header = [f"# harness {what} on {args.results.name}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", *provenance]
        out.write_text("\n".join(header) + "\n" + table.to_csv(index=False))
    print(f"wrote {args.out}: {len(frame)} claims; {args.numbers_out}: {len(numbers)} leaderboard rows")


if __name__ == "__main__":
    main()
