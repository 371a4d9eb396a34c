"""Write benchmarks/papers/reference/claims.csv from a `make reproduce-quick` results folder.

    python benchmarks/papers/reference/write_reference.py RESULTS --note "make reproduce-quick: 9.5 min, load 10"

The header comment lines record what produced the verdicts: the harness and torch versions and the
git commit the rows carry, the date, the CPU and the note (wall time and load average of the run).
"""

from __future__ import annotations

import argparse
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

from harness.claims import check_claims
from harness.results import query

OUT = Path(__file__).with_name("claims.csv")


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", type=Path)
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=OUT, help="default: claims.csv, the table `harness claims` shows")
    args = parser.parse_args()
    versions = query(
        args.results,
        "SELECT DISTINCT harness_version, torch_version, git_commit FROM cells WHERE status = 'ok' ORDER BY ALL",
    )
    frame = check_claims(args.results, reference=None)[["claim", "paper", "verdict", "evidence"]]
    header = [
        f"# harness claims on {args.results.name}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        *(
            f"# harness {r.harness_version}, torch {r.torch_version}, commit {r.git_commit}"
            for r in versions.itertuples()
        ),
        f"# machine: {cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        *([f"# {args.note}"] if args.note else []),
    ]
    args.out.write_text("\n".join(header) + "\n" + frame.to_csv(index=False))
    print(f"wrote {args.out}: {len(frame)} claims")


if __name__ == "__main__":
    main()
