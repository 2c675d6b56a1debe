"""Run the fuzz suite (tests/fuzz) and print its per-category table.

python -m tools.fuzz_report            # CI profile (bounded, derandomized)
python -m tools.fuzz_report --long     # OPTGEN_FUZZ=long: 20x the examples, a random seed
python -m tools.fuzz_report --json F   # keep the counts (pytest's exit status is returned)
python -m tools.fuzz_report --log F    # keep pytest's whole output (kept anyway on a failure)

Columns: cases drawn; refused cleanly (an error naming the rule or class and the culprit, every
input byte-identical); accepted and equal (to the reference call); silently wrong and partial
writes (both must be 0); unclear refusals; known cases (open issue-9 bugs and bugs this suite
found, each pinned by a strict xfail in tests/fuzz/test_fuzz_found.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.cli import check_writable

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = [
    ("drawn", "drawn"),
    ("refused cleanly", "refused"),
    ("accepted and equal", "equal"),
    ("silently wrong", "wrong"),
    ("partial write", "partial"),
    ("unclear refusal", "unclear"),
    ("known (strict xfail)", "known"),
]


def table(data: dict) -> str:
    categories = data["categories"]
    width = max([len("category"), *map(len, categories)])
    head = f"{'category':<{width}}" + "".join(f"{short:>9}" for _, short in COLUMNS)
    lines = [head, "-" * len(head)]
    totals = dict.fromkeys((key for key, _ in COLUMNS), 0)
    for name, counts in categories.items():
        row = f"{name:<{width}}"
        for key, _ in COLUMNS:
            row += f"{counts.get(key, 0):>9}"
            totals[key] += counts.get(key, 0)
        lines.append(row)
    lines.append("-" * len(head))
    lines.append(f"{'total':<{width}}" + "".join(f"{totals[k]:>9}" for k, _ in COLUMNS))
    return "\n".join(lines)


def failure_lines(output: str) -> list[str]:
    """What identifies each failed case in pytest's output: its error line (the harness's
    verdict, or an exception's), hypothesis's ``@reproduce_failure`` blob and the FAILED lines.
    A long-profile run draws its seed at random: without the blob a failure may not recur."""
    keep = []
    for line in output.splitlines():
        head = line[4:].lstrip()
        error = line.startswith("E   ") and head[:1].isupper() and "Error" in head and ": " in head
        if error or "@reproduce_failure(" in line or line.startswith("FAILED "):
            keep.append(line)
    return keep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.fuzz_report", description=__doc__)
    parser.add_argument("--long", action="store_true", help="the long profile (OPTGEN_FUZZ=long)")
    parser.add_argument("--json", type=Path, help="also write the counts here")
    parser.add_argument(
        "--log",
        type=Path,
        help="write pytest's whole output here (on a failure, without --log: a temporary file)",
    )
    parser.add_argument(
        "pytest_args",
        nargs="*",
        help="extra pytest arguments, after -- (python -m tools.fuzz_report -- -k adam)",
    )
    args = parser.parse_args(argv)
    check_writable(parser, args.json, "--json")
    check_writable(parser, args.log, "--log")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(args.json or Path(tmp) / "fuzz.json").resolve()
        env = dict(os.environ, OPTGEN_FUZZ_REPORT=str(report))
        env.setdefault("TRITON_INTERPRET", "1")
        if args.long:
            env["OPTGEN_FUZZ"] = "long"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/fuzz"]
        start = time.perf_counter()
        result = subprocess.run(
            command + args.pytest_args, cwd=ROOT, env=env, capture_output=True, text=True
        )
        seconds = time.perf_counter() - start
        log = args.log
        if log is None and result.returncode:
            handle, name = tempfile.mkstemp(prefix="optgen_fuzz_", suffix=".log")
            os.close(handle)
            log = Path(name)
        if log is not None:
            log.write_text(result.stdout + result.stderr)
        summary = result.stdout.strip().splitlines()[-1:] or ["(no pytest output)"]
        if not report.exists():
            sys.stdout.write(result.stdout + result.stderr)
            print("no fuzz report was written")
            return result.returncode or 1
        data = json.loads(report.read_text())
    print(f"profile {data['profile']}, {seconds:.1f} s: {summary[0]}")
    print(table(data))
    if result.returncode:
        print("\n".join(failure_lines(result.stdout)))
    if log is not None:
        print(f"pytest's whole output: {log}")
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
