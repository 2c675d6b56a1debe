"""Regenerate ``generated/`` from ``specs/``, or check that it is fresh.

python -m tools.generate                 # every spec
python -m tools.generate adam nag        # named rules only (a new one: every spec, see below)
python -m tools.generate --check         # exit 1 with a diff when generated/ is stale

The package indexes (``generated/*/__init__.py``, the torch classes) list every rule, so a named
rule they do not list yet (a new spec) makes the run generate every spec, and says so.

A malformed spec prints one line, ``error: specs/<rule>.py:LINE: ...``, and exits 2 (``--debug``
adds the traceback); the generator never exits 0 without having generated (or checked) every spec.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import sys
import time
import traceback
from pathlib import Path

from codegen.generate import GENERATED_DIR, generate_all, stale, write
from codegen.load import SPECS_DIR, load_rules, spec_paths
from codegen.spec import SpecError

_NAMES_A_FILE = re.compile(r"^[^\s:]+\.py(:\d+)?: ")


def _name_the_spec(error: SpecError, specs: Path, rules: list[str]) -> str:
    """The error's message, prefixed with the spec it came from when it names none (an error
    raised while rendering, e.g. a constant outside float32's range): the rules are generated
    one at a time until one raises it again."""
    message = str(error)
    if _NAMES_A_FILE.match(message):
        return message
    try:
        for rule in load_rules(specs, rules or None):
            try:
                generate_all(specs, [rule.name])
            except SpecError as again:
                if str(again) == message:
                    return f"{rule.source}: {message}"
    except Exception:  # only a better message was at stake
        pass
    return message


def indexed(out: Path) -> set[str]:
    """The rules ``out``'s package index lists (``rules/__init__.py``'s RULES and MATRIX_RULES;
    none where there is no index yet)."""
    try:
        tree = ast.parse((out / "rules" / "__init__.py").read_text())
    except (OSError, SyntaxError):
        return set()
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id in ("RULES", "MATRIX_RULES") for t in node.targets
        ):
            names.update(ast.literal_eval(node.value))
    return names


def _refused(args: argparse.Namespace) -> str | None:
    """What is wrong with the command line before anything is generated: a missing or empty
    specs directory (a full generation would delete every module), a rule with no spec."""
    if not args.specs.is_dir():
        return f"--specs {args.specs}: no such directory"
    present = [p.stem for p in spec_paths(args.specs)]
    if not present:
        return (
            f"--specs {args.specs}: no spec files in it (a full generation would delete every "
            "module)"
        )
    for name in args.rules:
        if name not in present:
            close = difflib.get_close_matches(name.lower(), present, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            return f"no spec named {name!r} in {args.specs}/{hint}"
    if args.out.exists() and not args.out.is_dir():
        return f"--out {args.out}: not a directory"
    return None


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
    parser.add_argument(
        "--debug", action="store_true", help="print the traceback of a refused spec"
    )
    args = parser.parse_args(argv)
    refused = _refused(args)
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    out = f"{args.out}/" if args.out != GENERATED_DIR else "generated/"
    try:
        if args.check:
            diffs = stale(args.specs, args.out, args.rules or None)
            if diffs:
                sys.stdout.write("".join(diffs))
                again = " ".join(
                    ["python -m tools.generate", *args.rules]
                    + [f"--specs {args.specs}"] * (args.specs != SPECS_DIR)
                    + [f"--out {args.out}"] * (args.out != GENERATED_DIR)
                )
                print(f"{out} is stale: {len(diffs)} file(s) differ; run: {again}", file=sys.stderr)
                return 1
            print(f"{out} is in sync with {args.specs.name}/")
            return 0
        start = time.perf_counter()
        names = args.rules or None
        new = sorted(set(names or ()) - indexed(args.out))
        if new:
            print(
                f"{', '.join(new)}: not in the package indexes yet, which list every rule: "
                "generating every spec"
            )
            names = None
        files = generate_all(args.specs, names)
        changed = write(files, args.out, prune=names is None)
        for path in changed:
            print(f"changed {path}")
        if not changed:
            print(f"nothing changed: {args.out.name}/ already matches the specs")
        slowest = max(files, key=lambda f: f.seconds)
        print(
            f"{len(files)} files generated in {time.perf_counter() - start:.2f} s "
            f"(slowest: {slowest.path}, {slowest.seconds * 1000:.0f} ms); {len(changed)} changed"
        )
        return 0
    except SpecError as error:
        if args.debug:
            traceback.print_exc()
        print(f"error: {_name_the_spec(error, args.specs, args.rules)}", file=sys.stderr)
        return 2
    except OSError as error:  # the output tree: nothing in it was replaced (codegen.generate.write)
        if args.debug:
            traceback.print_exc()
        where = f" {error.filename}" if error.filename else ""
        print(
            f"error: cannot write{where}: {error.strerror or error} (nothing was written)",
            file=sys.stderr,
        )
        return 2
    except Exception as error:  # a generator bug (or a spec it fails to refuse): never exit 0
        if args.debug:
            traceback.print_exc()
        text = " ".join(str(error).split())
        print(
            f"error: internal error: {type(error).__name__}: {text} "
            "(python -m tools.generate --debug shows the traceback)",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    raise SystemExit(main())
