"""Documentation from the specs: the README's rule table and the mkdocs site.

python -m tools.docs                      # print the README's rule table
python -m tools.docs --write              # replace the table between the markers in README.md
python -m tools.docs --check              # exit 1 when README.md's table is stale
python -m tools.docs build [RULE ...]     # the site (one page per rule) into site/, strict
python -m tools.docs screenshot [--rule adam]   # build, then a headless Chromium screenshot
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import re
import sys
from pathlib import Path

from codegen.load import load_rules
from codegen.spec import Rule
from tools.cli import check_rules

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BEGIN, END = "<!-- rules:begin -->", "<!-- rules:end -->"


@functools.cache
def _torch_cases() -> set[str]:
    """Rules compared with torch.optim in tests/test_torch_optim.py (its CASES keys)."""
    tree = ast.parse((ROOT / "tests" / "test_torch_optim.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "CASES":
            return {k.value for k in node.value.keys if isinstance(k, ast.Constant)}  # type: ignore[union-attr]
    return set()


@functools.cache
def _references() -> dict[str, str]:
    """Rule -> the reference optimizer tools/references.py runs it against (its REFERENCES
    entries, read without importing torch)."""
    tree = ast.parse((ROOT / "tools" / "references.py").read_text())
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Reference":
            rule, name = (a.value for a in node.args[:2] if isinstance(a, ast.Constant))
            package = "pytorch_optimizer."  # pinned: pytorch-optimizer 4.1.0 (pyproject.toml)
            out[rule] = "pytorch-optimizer 4.1.0" if name.startswith(package) else name
    return out


@functools.cache
def _sparse_goldens() -> set[str]:
    """Rules with cases in tests/goldens/mxnet/lazy_rows.json (MXNet's sparse updates)."""
    golden = json.loads((ROOT / "tests" / "goldens" / "mxnet" / "lazy_rows.json").read_text())
    return {case["rule"] for case in golden["cases"]}


def paper(rule: Rule) -> str:
    """The first citation in the docstring's second paragraph: 'Author et al. (year)'."""
    paragraphs = rule.doc.split("\n\n")
    text = " ".join(paragraphs[1].split()) if len(paragraphs) > 1 else ""
    names = r"[A-Z][\w\-]+(?:, [A-Z][\w\-]+)*(?: et al\.| & [A-Z][\w\-]+)?"
    match = re.search(names + r" \(\d{4}\)", text)
    return match.group(0) if match else "-"


# Rules verified against an independent implementation in a test of their own (tests/test_<rule>.py
# or tests/test_references.py), as the README's table says.
EXTERNAL = {
    "adafactor": "torch.optim.Adafactor",
    "adam_clip": "torch clip_grad_norm_ + torch.optim.Adam",
    "muon": "torch.optim.Muon (float32 Newton-Schulz; both of ours bounded against its bfloat16)",
}


def features(rule: Rule) -> str:
    """What the rule needs beyond an elementwise update, as the README's table says."""
    out = ["matrix equations"] if rule.matrix_values else []
    if rule.host_states:
        out.append("host state")
    if rule.vector_values:
        out.append("row/column factors")
    if rule.group_reductions:
        out.append("group reductions")
    elif rule.reductions and not rule.vector_values:
        out.append("per-tensor reductions")
    if rule.draws:
        out.append("Philox noise")
    if rule.inputs:
        out.append(f"input {', '.join(rule.inputs)}")
    if rule.scalars:
        out.append(f"scalar input {', '.join(rule.scalars)}")
    text = ", ".join(out) or "elementwise"
    if rule.sparse_mode:  # RULE.sparse: how the torch class steps a sparse gradient
        how = "lazily" if rule.sparse_mode == "lazy" else "densely"
        text += f"; sparse grads {how}" + (" (lazy_update)" if rule.lazy_update else "")
    return text


def oracles(rule: Rule) -> list[str]:
    """What the test suite compares the rule with."""
    out = ["equations (40 digits)", "Triton = NumPy"]
    if (ROOT / "tests" / "goldens" / "mxnet" / f"{rule.name}.json").exists():
        out.append("MXNet 1.9.1 goldens")
    if rule.name in _sparse_goldens():
        out.append("MXNet 1.9.1 sparse goldens")
    if rule.name in _torch_cases():
        out.append("torch.optim")
    if rule.drop_ins:  # tests/test_dropin.py: every option combination, checkpoints
        out.append("torch.optim (drop-in)")
    if rule.name in EXTERNAL:
        out.append(EXTERNAL[rule.name])
    own = ROOT / "tests" / f"test_{rule.name}.py"  # a rule's own reference comparison
    if own.exists() and "from pytorch_optimizer import" in own.read_text():
        out.append("pytorch-optimizer 4.1.0")
    if rule.draws:
        out.append("noise statistics")
    references = _references()
    if rule.name in references:
        out.append(references[rule.name])
    return out


def table() -> str:
    rows = [
        "| rule | class | spec | paper | features | verified against |",
        "|---|---|---|---|---|---|",
    ]
    for rule in load_rules():
        names = f"`{rule.class_name}`"
        if rule.drop_ins:
            names += "; drop-in " + ", ".join(f"`optim.{d.class_name}`" for d in rule.drop_ins)
        rows.append(
            f"| `{rule.name}` | {names} | [specs/{rule.name}.py](specs/{rule.name}.py) "
            f"| {paper(rule)} | {features(rule)} | {', '.join(oracles(rule))} |"
        )
    return "\n".join(rows) + "\n"


def screenshot(rule: str, out: Path, site: Path | None = None, work: Path | None = None) -> int:
    """Build the site for ``rule``, then take a headless Chromium screenshot of its page and check
    that it is not blank; skips (exit 0, saying why) without a browser."""
    import shutil
    import subprocess

    from tools import docs_site

    browser = next(
        (b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )
    if browser is None:
        print("screenshot skipped: no Chromium on PATH (Debian: apt-get install -y chromium)")
        return 0
    site = docs_site.build([rule], site=site or docs_site.SITE, work=work or docs_site.BUILD)
    out.parent.mkdir(parents=True, exist_ok=True)
    page = (site / "rules" / f"{rule}.html").resolve()
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        + [f"--screenshot={out.resolve()}", "--window-size=1280,2000", page.as_uri()],
        check=True,
        capture_output=True,
    )
    from PIL import Image

    with Image.open(out) as image:
        colours = image.convert("L").getextrema()
    if colours[1] - colours[0] < 128:
        print(f"{out}: blank screenshot (grey levels {colours})")
        return 1
    print(f"wrote {out} ({page.name}, grey levels {colours[0]}-{colours[1]})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.docs",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="table",
        choices=("table", "build", "screenshot"),
        help="table: the README's rule table (default); build: the site; screenshot: one page",
    )
    parser.add_argument("rules", nargs="*", help="build: only these rules' pages (default: all)")
    parser.add_argument("--write", action="store_true", help="table: write it into README.md")
    parser.add_argument("--check", action="store_true", help="table: exit 1 when README's is stale")
    parser.add_argument("--rule", help="screenshot: the rule's page (adam)")
    parser.add_argument("--out", type=Path, help="screenshot: PNG path (site/screenshot.png)")
    args = parser.parse_args(argv)
    # each option belongs to one command: one given to another would be ignored
    misplaced = [
        flag
        for flag, given, command in [
            ("--write", args.write, "table"),
            ("--check", args.check, "table"),
            ("rule names", bool(args.rules), "build"),
            ("--rule", args.rule is not None, "screenshot"),
            ("--out", args.out is not None, "screenshot"),
        ]
        if given and args.command != command
    ]
    if misplaced:
        parser.error(f"{misplaced[0]} does not apply to {args.command!r}")
    if args.write and args.check:
        parser.error("--write and --check: give one")
    if args.command == "screenshot":
        from generated.rules import MATRIX_RULES, RULES

        args.rule = args.rule or "adam"
        args.out = args.out or ROOT / "site" / "screenshot.png"
        check_rules(parser, [args.rule], [*RULES, *MATRIX_RULES])
    if args.command == "build":
        from tools import docs_site

        site = docs_site.build(args.rules or None)
        print(f"built {site} (open {site / 'index.html'})")
        return 0
    if args.command == "screenshot":
        return screenshot(args.rule, args.out)
    text = table()
    if not (args.write or args.check):
        sys.stdout.write(text)
        return 0
    readme = README.read_text()
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    fresh = readme[:start] + "\n" + text + readme[end:]
    if args.check:
        if fresh != readme:
            print("README.md's rule table is stale: run python -m tools.docs --write")
            return 1
        return 0
    README.write_text(fresh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
