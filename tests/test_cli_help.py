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


def _refusal(main: object, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """``main(argv)``'s refusal: argparse's exit 2, one ``error:`` line on stderr."""
    with pytest.raises(SystemExit) as done:
        main(argv)  # type: ignore[operator]
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "error: " in err[-1] and "Traceback" not in "\n".join(err)
    return err[-1]


def test_a_tool_refuses_a_mistake_in_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a CLI audit: unknown or mis-cased rule names were tracebacks (ModuleNotFoundError,
    KeyError) in aot, bench --quick and references; --n 0 and --steps 0 ran at the defaults,
    --n -5 and --epochs 0 crashed; --json into a missing directory failed after the whole run;
    options of another subcommand (docs build --write) or another mode (bench --threads without
    --cpu, --cpu --host) were ignored; trajectories' --out a file, tools.new a name of another
    rule's generated module (sgd_plain) and dist_example outside torchrun got tracebacks or
    succeeded wrongly."""
    from tools import (
        aot,
        bench,
        demo_train,
        docs,
        fuzz_report,
        gpu_check,
        new,
        references,
        trajectories,
    )

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    afile = tmp_path / "afile"
    afile.write_text("")
    cases = [
        (aot.main, ["Adam"], "no rule named 'Adam' (did you mean adam?)"),
        (aot.main, ["adam", "--weight", "fp64"], "invalid choice: 'fp64'"),
        (aot.main, [str(tmp_path / "x.py")], "x.py: no such module file"),
        (aot.main, ["adam", "--arch", "0"], "--arch 0: the kernels are checked for sm_80"),
        (fuzz_report.main, ["--json", str(tmp_path / "no" / "x.json")], "no such directory"),
        (fuzz_report.main, ["--log", str(tmp_path)], "is a directory, not a file"),
        (gpu_check.parse_args, ["--out", str(tmp_path / "no" / "g.md")], "no such directory"),
        (gpu_check.parse_args, ["--steps", "0"], "argument --steps: 0 must be at least 1"),
        (bench.main, ["--quick", "--rule", "nosuchrule"], "no rule named 'nosuchrule'"),
        (bench.main, ["--quick", "--n", "0"], "argument --n: 0 must be at least 1"),
        (bench.main, ["--quick", "--steps", "-5"], "argument --steps: -5 must be at least 1"),
        (bench.main, ["--quick", "--json", str(tmp_path / "no" / "x.json")], "no such directory"),
        (bench.main, ["--quick", "--threads", "1"], "--threads applies to --cpu only"),
        (bench.main, ["--cpu", "--host"], "--host and --cpu are two runs"),
        (demo_train.main, ["--epochs", "0"], "argument --epochs: 0 must be at least 1"),
        (references.main, ["adam"], "adam has no entry here"),
        (references.main, ["nosuchrule"], "no rule named 'nosuchrule'"),
        (docs.main, ["build", "--write"], "--write does not apply to 'build'"),
        (docs.main, ["--check", "--write"], "--write and --check: give one"),
        (docs.main, ["screenshot", "--rule", "nosuchrule"], "no rule named 'nosuchrule'"),
        (trajectories.main, ["--out", str(afile), "adam"], f"--out {afile}: not a directory"),
    ]
    for main, argv, said in cases:
        assert said in _refusal(main, argv, capsys), (argv, said)
    assert new.main(["sgd_plain"]) == 2
    assert "another rule's generated module" in capsys.readouterr().err
    assert not (TOOLS.parent / "specs" / "sgd_plain.py").exists()


def test_helper_modules_and_torchrun_examples_say_how_to_run_them() -> None:
    import subprocess
    import sys

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *argv], cwd=TOOLS.parent, capture_output=True, text=True
        )

    helper = run("-m", "tools.ranks", "--help")
    assert helper.returncode == 1 and "helper module, not a command" in helper.stderr
    example = run("tools/dist_example.py")
    assert example.returncode == 2 and "run it under torchrun" in example.stderr
    assert "Traceback" not in helper.stderr + example.stderr
