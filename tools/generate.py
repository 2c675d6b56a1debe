"""Regenerate ``generated/`` from ``specs/``, or check that it is fresh.

python -m tools.generate                 # every spec
python -m tools.generate adam nag        # named rules only
python -m tools.generate --check         # exit 1 with a diff when generated/ is stale
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from codegen.generate import GENERATED_DIR, generate_all, stale, write
from codegen.load import SPECS_DIR
from codegen.spec import SpecError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.generate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("rules", nargs="*", help="rule names (default: every spec)")
    parser.add_argument(
        "--check", action="store_true", help="diff against generated/, write nothing"
    )
    parser.add_argument("--specs", type=Path, default=SPECS_DIR, help="specs directory")
    parser.add_argument("--out", type=Path, default=GENERATED_DIR, help="output directory")
    args = parser.parse_args(argv)
    try:
        if args.check:
            diffs = stale(args.specs, args.out)
            if diffs:
                sys.stdout.write("".join(diffs))
                print(f"generated/ is stale: {len(diffs)} file(s) differ")
                print("run: python -m tools.generate")
                return 1
            print("generated/ is in sync with specs/")
            return 0
        start = time.perf_counter()
        files = generate_all(args.specs, args.rules or None)
        changed = write(files, args.out, prune=not args.rules)
        for path in changed:
            print(f"changed {path}")
        slowest = max(files, key=lambda f: f.seconds)
        print(
            f"{len(files)} files generated in {time.perf_counter() - start:.2f} s "
            f"(slowest: {slowest.path}, {slowest.seconds * 1000:.0f} ms); {len(changed)} changed"
        )
        return 0
    except SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
