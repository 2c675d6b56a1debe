"""What the command-line tools share: argument types and checks that refuse a mistake in one
line on stderr (argparse's exit 2) before any work, instead of a traceback after it."""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Iterable
from pathlib import Path


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (0 and negatives are refused, not defaults)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def check_rules(
    parser: argparse.ArgumentParser, given: Iterable[str], known: Iterable[str]
) -> None:
    """Refuse (``parser.error``: exit 2) a rule name that is not one of ``known``, with the
    closest one as a hint."""
    known = sorted(known)
    for name in given:
        if name not in known:
            close = difflib.get_close_matches(name.lower(), known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            parser.error(f"no rule named {name!r}{hint}")


def check_writable(parser: argparse.ArgumentParser, path: Path | None, what: str) -> None:
    """Refuse, before any work, an output file whose directory does not exist or that is a
    directory (it would fail only after the run)."""
    if path is None:
        return
    if path.is_dir():
        parser.error(f"{what} {path}: is a directory, not a file")
    if not path.parent.is_dir():
        parser.error(f"{what} {path}: no such directory {path.parent}")


if __name__ == "__main__":
    raise SystemExit(
        "tools.cli is a helper module, not a command: the tools' argument checks "
        "(python -m tools.<name> --help)"
    )
