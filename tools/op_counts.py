"""Print, or pin, every rule's op counts after each lowering pass (codegen.lower.PASSES).

python -m tools.op_counts            # a table: rule, pass, role, operations by kind
python -m tools.op_counts --write    # record them in tests/goldens/op_counts.json

The test ``tests/test_lowering.py::test_op_counts_are_pinned`` compares each rule's lowering with
the recorded table: a change to a pass that alters what any rule computes shows up as a diff to
review (and re-record with --write when intended).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from codegen.load import load_rules
from codegen.lower import lower

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "goldens" / "op_counts.json"


def table() -> dict[str, dict[str, dict[str, dict[str, int]]]]:
    """rule -> pass -> role -> operation -> count."""
    return {rule.name: dict(lower(rule).report) for rule in load_rules()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.op_counts", description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"record the table in {GOLDEN}")
    args = parser.parse_args(argv)
    counts = table()
    if args.write:
        GOLDEN.write_text(json.dumps(counts, indent=1, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN} ({len(counts)} rules)")
        return 0
    for rule, passes in counts.items():
        for name, roles in passes.items():
            for role, ops in roles.items():
                text = ", ".join(f"{n} {k}" for k, n in ops.items())
                print(f"{rule:18} {name:13} {role:10} {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
