"""The pipeline: specs -> lowering -> every target -> ruff format; writing and the freshness check.

Generated code is a pure function of the specs: the same specs give byte-identical files. What
each file is made of is the targets' business (:mod:`codegen.targets`).
"""

from __future__ import annotations

import difflib
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from codegen import matrix, matrix_targets
from codegen.load import SPECS_DIR, load_rules
from codegen.lower import lower
from codegen.spec import SpecError
from codegen.targets import ENV, package_targets, rule_targets
from codegen.variants import variants

ROOT = Path(__file__).resolve().parent.parent
GENERATED_DIR = ROOT / "generated"
TARGETS = tuple(t.name for t in rule_targets())
LINE_LENGTH = 100


@dataclass(frozen=True)
class Generated:
    path: Path  # relative to the output root
    text: str
    seconds: float


def ruff_format(text: str, filename: str) -> str:
    """Format with the pinned ruff, isolated from any user configuration."""
    command = [sys.executable, "-m", "ruff", "format", "--isolated"]
    command += [f"--line-length={LINE_LENGTH}", "--stdin-filename", filename, "-"]
    done = subprocess.run(command, input=text, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ruff format failed on {filename}:\n{done.stderr}")
    return done.stdout


def _package_init(target: str, names: list[str], matrix_names: list[str]) -> str:
    return ENV.get_template("package_init.py.j2").render(
        target=target, names=names, matrix_names=matrix_names
    )


def generate_all(specs_dir: Path = SPECS_DIR, names: list[str] | None = None) -> list[Generated]:
    """Render every target of the named rules (all by default), plus the package indexes."""
    files: list[Generated] = []
    rules = load_rules(specs_dir, names)
    for rule in [r for r in rules if matrix.is_matrix_rule(r)]:  # codegen/matrix_targets.py
        if rule.absent or rule.special:
            what = "absent_when" if rule.absent else "special_case"
            raise SpecError(f"{rule.source}: {what} is not supported in matrix rules yet")
        start = time.perf_counter()
        texts = matrix_targets.render(rule)  # every target, numba's included
        for target in rule_targets():
            path = Path(target.directory) / f"{rule.name}.py"
            text = ruff_format(texts[target.name], str(path))
            files.append(Generated(path, text, time.perf_counter() - start))
    every = rules
    taken = {r.name: r for r in rules}
    rules = [r for r in rules if not matrix.is_matrix_rule(r)]
    # each rule's special cases and its variant without the absent states (codegen/variants.py)
    derived = {rule.name: variants(rule) for rule in rules}
    for rule in rules:
        for name in [v.name for v in derived[rule.name]]:
            if name in taken:
                raise SpecError(
                    f"{rule.source}: its variant's modules {name!r} would overwrite "
                    f"{taken[name].source}'s (rename the special case)"
                )
    for rule in rules:
        start = time.perf_counter()
        for lowered in [lower(r) for r in [rule, *derived[rule.name]]]:
            for target in rule_targets():
                path = Path(target.directory) / f"{lowered.rule.name}.py"
                text = ruff_format(target.render(lowered), str(path))
                files.append(Generated(path, text, time.perf_counter() - start))
    if names is None:
        all_names = [r.name for r in rules]
        matrix_names = [r.name for r in every if matrix.is_matrix_rule(r)]
        files.append(Generated(Path("__init__.py"), _package_init("", all_names, []), 0.0))
        for target in rule_targets():
            path = Path(target.directory) / "__init__.py"
            text = ruff_format(_package_init(target.name, all_names, matrix_names), str(path))
            files.append(Generated(path, text, 0.0))
        for package in package_targets():
            start = time.perf_counter()
            path = Path(package.directory) / package.filename
            text = ruff_format(package.render(every), str(path))
            files.append(Generated(path, text, time.perf_counter() - start))
    return files


def write(files: list[Generated], out_dir: Path = GENERATED_DIR, prune: bool = False) -> list[str]:
    """Write what changed; with ``prune`` (a full generation) also delete every generated file no
    spec generates any more (a removed spec's modules). Returns the paths changed or deleted."""
    changed = []
    pending: list[tuple[Path, Path]] = []  # (temporary, target): all written, then renamed
    try:
        for f in files:
            target = out_dir / f.path
            if target.exists() and target.read_text() == f.text:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.tmp")
            temporary.write_text(f.text)
            pending.append((temporary, target))
    except OSError:  # nothing replaced: a tree half regenerated would import inconsistently
        for temporary, _ in pending:
            temporary.unlink(missing_ok=True)
        raise
    for temporary, target in pending:
        temporary.replace(target)
        changed.append(_shown(target))
    if prune:
        for path in _orphans(files, out_dir):
            path.unlink()
            changed.append(f"{_shown(path)} (deleted)")
    return changed


def _shown(path: Path) -> str:
    """``path`` as the user finds it: relative to the working directory when under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _orphans(files: list[Generated], out_dir: Path) -> list[Path]:
    expected = {f.path for f in files}
    return [p for p in sorted(out_dir.rglob("*.py")) if p.relative_to(out_dir) not in expected]


def stale(
    specs_dir: Path = SPECS_DIR, out_dir: Path = GENERATED_DIR, names: list[str] | None = None
) -> list[str]:
    """Unified diffs between what the specs generate and what ``out_dir`` holds (empty: fresh);
    with ``names``, of those rules' modules only.

    Shared by ``python -m tools.generate --check`` and the freshness test.
    """
    files = generate_all(specs_dir, names)
    diffs: list[str] = []
    for f in files:
        on_disk = out_dir / f.path
        old = on_disk.read_text() if on_disk.exists() else ""
        if old != f.text:
            diffs.append(
                "".join(
                    difflib.unified_diff(
                        old.splitlines(keepends=True),
                        f.text.splitlines(keepends=True),
                        f"{_shown(on_disk)} (on disk)",
                        f"{_shown(on_disk)} (from specs)",
                    )
                )
                or f"{_shown(on_disk)}: missing\n"
            )
    for path in _orphans(files, out_dir) if names is None else ():
        diffs.append(f"{_shown(path)}: no spec generates this file (remove it)\n")
    return diffs
