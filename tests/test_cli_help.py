"""Every command-line option of every tool has help text, and the tools' progress output is
log-friendly (no carriage returns when stdout is not a terminal)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"


@pytest.mark.parametrize("path", sorted(TOOLS.glob("*.py")), ids=lambda p: p.name)
def test_every_option_has_help(path: Path) -> None:
    """Read from the source, so a tool whose imports are missing here (MXNet's recorder) counts."""
    missing = [
        f"{path.name}:{node.lineno}"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", "") == "add_argument"
        and not any(k.arg == "help" for k in node.keywords)
    ]
    assert missing == [], f"add help= to: {', '.join(missing)}"


def test_demo_train_progress_in_a_log(capsys: pytest.CaptureFixture[str]) -> None:
    from tools.demo_train import bar

    for epoch in range(1, 9):
        bar(epoch, 8, "Adam", 0.5 / epoch)
    out = capsys.readouterr().out
    assert "\r" not in out
    assert out.splitlines() == [
        f"  Adam           epoch   {k}/8  loss {0.5 / k:.4f}" for k in (2, 4, 6, 8)
    ]
