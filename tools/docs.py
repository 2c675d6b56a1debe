"""The README's rule table, from the specs and the test oracles: ``python -m tools.docs``.

python -m tools.docs            # print the table
python -m tools.docs --write    # replace the table between the markers in README.md
python -m tools.docs --check    # exit 1 when README.md's table is stale
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

from codegen.load import load_rules
from codegen.spec import Rule

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BEGIN, END = "<!-- rules:begin -->", "<!-- rules:end -->"


def _torch_cases() -> set[str]:
    """Rules compared with torch.optim in tests/test_torch_optim.py (its CASES keys)."""
    tree = ast.parse((ROOT / "tests" / "test_torch_optim.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "CASES":
            return {k.value for k in node.value.keys if isinstance(k, ast.Constant)}  # type: ignore[union-attr]
    return set()


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


def _paper(rule: Rule) -> str:
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
    "muon": "torch.optim.Muon (float32 Newton-Schulz; bfloat16 bounded)",
}


def table() -> str:
    torch_cases = _torch_cases()
    references = _references()
    rows = [
        "| rule | class | spec | paper | features | verified against |",
        "|---|---|---|---|---|---|",
    ]
    for rule in load_rules():
        features = ["matrix equations"] if rule.matrix_values else []
        if rule.host_states:
            features.append("host state")
        if rule.vector_values:
            features.append("row/column factors")
        if rule.group_reductions:
            features.append("group reductions")
        elif rule.reductions and not rule.vector_values:
            features.append("per-tensor reductions")
        if rule.draws:
            features.append("Philox noise")
        if rule.inputs:
            features.append(f"input {', '.join(rule.inputs)}")
        if rule.scalars:
            features.append(f"scalar input {', '.join(rule.scalars)}")
        oracles = ["equations (40 digits)", "Triton = NumPy"]
        if (ROOT / "tests" / "goldens" / "mxnet" / f"{rule.name}.json").exists():
            oracles.append("MXNet 1.9.1 goldens")
        if rule.name in torch_cases:
            oracles.append("torch.optim")
        if rule.drop_ins:  # tests/test_dropin.py: every option combination, checkpoints
            oracles.append("torch.optim (drop-in)")
        if rule.name in EXTERNAL:
            oracles.append(EXTERNAL[rule.name])
        own = ROOT / "tests" / f"test_{rule.name}.py"  # a rule's own reference comparison
        if own.exists() and "from pytorch_optimizer import" in own.read_text():
            oracles.append("pytorch-optimizer 4.1.0")
        if rule.draws:
            oracles.append("noise statistics")
        if rule.name in references:
            oracles.append(references[rule.name])
        names = f"`{rule.class_name}`"
        if rule.drop_ins:
            names += "; drop-in " + ", ".join(f"`optim.{d.class_name}`" for d in rule.drop_ins)
        rows.append(
            f"| `{rule.name}` | {names} | [specs/{rule.name}.py](specs/{rule.name}.py) "
            f"| {_paper(rule)} | {', '.join(features) or 'elementwise'} | {', '.join(oracles)} |"
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.docs", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
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
