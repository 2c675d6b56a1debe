"""The documentation site, generated from the specs: one page per rule (``python -m tools.docs
build``; mkdocs-material, built strict into ``site/``).

Every fact on a page comes from the spec model, the lowering or the generated files: equations are
``sympy.latex`` of the spec's own expressions, pre-rendered to SVG by matplotlib's mathtext at
build time (no MathJax, no CDN: the site renders with no network), hyperparameters and states from
the declarations, host scalars from ``generated/rules/<rule>.py``, op counts and bytes per element
from ``codegen.lower``, the oracles from the test suite (``tools.docs.oracles``).
"""

from __future__ import annotations

import importlib
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import sympy as sp
from sympy.printing.latex import LatexPrinter

from codegen import matrix
from codegen.load import load_rules
from codegen.spec import Rule
from codegen.spec_parts import SCALAR

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "docs"  # generated markdown and mkdocs.yml (build/ is ignored)
SITE = ROOT / "site"  # the built site (ignored)
TRAJECTORIES = ROOT / "docs" / "trajectories"  # committed pictures (python -m tools.trajectories)

# sympy's names for Greek letters: a symbol whose stem is one prints as the letter.
_GREEK = {
    "alpha", "beta", "gamma", "delta", "epsilon", "eta", "theta", "kappa", "lambda", "mu", "nu",
    "xi", "rho", "sigma", "tau", "phi", "chi", "psi", "omega",
}  # fmt: skip


class SpecLatex(LatexPrinter):
    """sympy's LaTeX, restricted to what matplotlib's mathtext renders and made readable for
    spec names: a new value prints as its name primed, a multi-word name upright, a Piecewise as
    ``{a if c; b otherwise}``, a reduction's summand under its sum."""

    def __init__(
        self, primes: dict[sp.Symbol, sp.Symbol], choices: dict[sp.Symbol, tuple[str, ...]]
    ) -> None:
        super().__init__({"mul_symbol": "dot"})
        self.primes = primes
        self.choices = choices  # a choice hyperparameter compares with its value's index

    def _print_Equality(self, expr: sp.Eq) -> str:
        lhs, rhs = expr.args
        if lhs in self.choices and rhs.is_Integer and 0 <= int(rhs) < len(self.choices[lhs]):
            value = self.choices[lhs][int(rhs)].replace("_", r"\_")
            return rf"{self._print(lhs)} = \mathrm{{{value}}}"
        return super()._print_Relational(expr)

    def _print_Symbol(self, expr: sp.Symbol, style: str = "plain") -> str:
        if expr in self.primes:
            return self._print(self.primes[expr]) + "'"
        name = expr.name
        stem, _, sub = name.partition("_")
        letters = stem.rstrip("0123456789")
        if (len(letters) == 1 or letters in _GREEK) and "_" not in sub and len(sub) <= 3:
            return super()._print_Symbol(expr)
        return r"\mathrm{" + name.replace("_", r"\_") + "}"

    def _print_Piecewise(self, expr: sp.Piecewise) -> str:
        parts = [
            self._print(value) + r"\ \mathrm{otherwise}"
            if cond is sp.true
            else self._print(value) + r"\ \mathrm{if}\ " + self._print(cond)
            for value, cond in expr.args
        ]
        return r"\left\{" + r";\ ".join(parts) + r"\right."

    def _print_Mod(self, expr: sp.Mod, exp: str | None = None) -> str:
        text = r"{}\ \mathrm{{mod}}\ {}".format(*(self._print(a) for a in expr.args))
        return rf"\left({text}\right)^{{{exp}}}" if exp else text


def _primes(rule: Rule) -> dict[sp.Symbol, sp.Symbol]:
    """New value -> the value it replaces (printed primed)."""
    out = {rule.weight_new: rule.weight}
    out.update({s.new: s.symbol for s in rule.states.values()})
    out.update({h.new: h.symbol for h in rule.host_states.values()})
    return out


def equation_latex(rule: Rule) -> list[tuple[str, str, int]]:
    """(LaTeX, where it is computed, spec line) per spec equation, in spec order; a top-level
    Piecewise is one line per branch."""
    choices = {h.symbol: h.legal.choices for h in rule.hypers.values() if h.legal.choices}
    printer = SpecLatex(_primes(rule), choices)
    out = []
    for eq in rule.equations:
        lhs = printer.doprint(eq.target)
        expr = eq.expr
        where = "host" if rule.domain(expr) == SCALAR and eq.target not in rule.reductions else ""
        if eq.target in rule.reductions:
            kind = rule.reduction_kinds.get(eq.target, "sum")
            axis = rule.reduction_axes.get(eq.target)
            over = (
                "group"
                if eq.target in rule.group_reductions
                else {None: "elements", -1: "columns", -2: "rows"}[axis]
            )
            op = {"sum": r"\sum", "max": r"\max", "min": r"\min"}[kind]
            text = rf"{lhs} = {op}_{{\mathrm{{{over}}}}} {printer.doprint(expr)}"
            out.append((text, "", eq.origin.line))
            continue
        if isinstance(expr, sp.Piecewise) and len(expr.args) > 1:
            for value, cond in expr.args:
                tail = r"\quad\mathrm{otherwise}" if cond is sp.true else r"\quad\mathrm{if}\ "
                tail += "" if cond is sp.true else printer.doprint(cond)
                out.append((f"{lhs} = {printer.doprint(value)}{tail}", where, eq.origin.line))
            continue
        out.append((f"{lhs} = {printer.doprint(expr)}", where, eq.origin.line))
    for symbol, it in rule.matrix_values.items():
        text = (
            rf"{printer.doprint(symbol)} = \phi^{{{printer.doprint(it.steps)}}}"  # type: ignore[attr-defined]
            rf"\left({printer.doprint(it.start)}\right)"  # type: ignore[attr-defined]
        )
        out.append((text, "matrix", it.line))  # type: ignore[attr-defined]
    return out


def render_svg(latex: str) -> bytes:
    """``latex`` as an SVG by matplotlib's mathtext; a construct it cannot render raises (the
    build fails, naming the equation)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "optgen"  # deterministic ids
    matplotlib.rcParams["svg.fonttype"] = "path"
    from matplotlib.font_manager import FontProperties
    from matplotlib.mathtext import math_to_image

    out = io.BytesIO()
    try:
        math_to_image(f"${latex}$", out, format="svg", prop=FontProperties(size=15))
    except ValueError as error:
        raise ValueError(f"mathtext cannot render {latex!r}: {error}") from None
    # drop the creation date matplotlib writes, so a rebuild is byte-identical
    return re.sub(rb"<dc:date>.*?</dc:date>", b"", out.getvalue())


def _md_escape(text: str) -> str:
    return text.replace("|", r"\|")


def _number(value: object) -> str:
    return f"`{value!r}`" if not isinstance(value, str) else f'`"{value}"`'


def _legal(rule: Rule, name: str) -> str:
    return rule.hypers[name].legal.describe()


def _traffic(rule: Rule) -> tuple[int, int, dict[str, int], list[tuple[str, str, int]]]:
    """(buffers read, written per element, final op counts by kind, per-pass totals)."""
    from tools.op_counts import table_for

    passes = table_for(rule)
    if matrix.is_matrix_rule(rule):
        reads = 2 + len(rule.inputs) + len(rule.states)
        writes = 1 + len(rule.states)
    else:
        from codegen.lower import lower

        lowered = lower(rule)
        reads = len(set(lowered.reads) | set(lowered.reduce_reads))
        writes = len(lowered.outputs)
    final = list(passes.values())[-1]
    kinds: dict[str, int] = {}  # per element: the update's and the reduction sweeps' operations
    for role, ops in final.items():
        for kind, n in ops.items():
            if role != "host":
                kinds[kind] = kinds.get(kind, 0) + n
    totals = [
        (name, role, sum(ops.values()))
        for name, roles in passes.items()
        for role, ops in roles.items()
    ]
    return reads, writes, kinds, totals


def rule_page(rule: Rule, images: dict[str, bytes]) -> str:
    """The markdown of ``rule``'s page; its equation SVGs are added to ``images``."""
    from tools.docs import features, oracles, paper

    meta = importlib.import_module(f"generated.rules.{rule.name}")
    title = rule.doc.partition("\n")[0]
    lines = [f"# {rule.class_name} (`{rule.name}`)", "", title.strip(), ""]
    paragraphs = rule.doc.split("\n\n")
    cited = " ".join(paragraphs[1].split()).replace("``", "`") if len(paragraphs) > 1 else ""
    lines += [f"**Paper**: {paper(rule)}. **Spec**: `{rule.source}`.", ""]
    lines += [f"> {cited}", ""] if cited else []
    verified = ", ".join(oracles(rule))
    lines += [f"**Features**: {features(rule)}. **Verified against**: {verified}.", ""]
    lines += ["## Equations", ""]
    lines += [
        "Rendered from the spec's SymPy expressions, in spec order (`x'` is `x` after the step; "
        "*host*: computed once per step on the host; a reduction's summand is shown under its "
        "sum; a choice of values is one line per branch, the first whose condition holds "
        "applies).",
        "",
    ]
    for k, (latex, where, line) in enumerate(equation_latex(rule)):
        path = f"eq/{rule.name}-{k}.svg"
        images[path] = render_svg(latex)
        tag = f" *{where}*" if where else ""
        lines.append(f"- ![{_md_escape(latex)}](../{path}){{ .eq }} spec line {line}{tag}")
    if rule.matrix_values:
        lines += ["", "`φ` is the matrix step of the spec's `matrix.iterate` (see the spec below)."]
    lines += ["", "## Hyperparameters", ""]
    torch_names = rule.torch.hyper if rule.torch else {}
    lines += ["| name | default | legal values | torch | meaning |", "|---|---|---|---|---|"]
    for name, h in rule.hypers.items():
        torch_name = f"`{torch_names[name]}`" if name in torch_names else ""
        lines.append(
            f"| `{name}` | {_number(h.default)} | {_md_escape(_legal(rule, name))} | {torch_name} "
            f"| {_md_escape(h.doc)} |"
        )
    lines += ["", "## States", ""]
    if rule.states:
        lines += ["| name | shape | initial value | meaning |", "|---|---|---|---|"]
        for s in rule.states.values():
            shape = {None: "the weight's", -1: "one per row", -2: "one per column"}[s.axis]
            lines.append(f"| `{s.name}` | {shape} | `{s.init}` | {_md_escape(s.doc)} |")
    else:
        lines.append("None.")
    if rule.host_states:
        lines += ["", "Host states (one number per weight, in the state dict):", ""]
        lines += ["| name | initial value | meaning |", "|---|---|---|"]
        for hs in rule.host_states.values():
            lines.append(f"| `{hs.name}` | `{hs.init}` | {_md_escape(hs.doc)} |")
    if rule.inputs or rule.scalars:
        lines += ["", "Inputs besides the gradient:", ""]
        for i in [*rule.inputs.values(), *rule.scalars.values()]:
            lines.append(f"- `{i.name}`: {i.doc}")
    lines += ["", "## Host scalars", ""]
    lines += [
        "What the kernels take besides the buffers, computed once per step in double precision "
        "(`SCALARS` in `generated/rules/" + rule.name + ".py`):",
        "",
        "| scalar | value |",
        "|---|---|",
    ]
    for name, value in getattr(meta, "SCALARS", {}).items():
        lines.append(f"| `{name}` | `{_md_escape(value)}` |")
    reads, writes, kinds, totals = _traffic(rule)
    lines += ["", "## Cost (from the lowering)", ""]
    lines += [
        f"Per element: {reads} buffers read, {writes} written: **{4 * (reads + writes)} B** with "
        f"float32 weight and state. Operations per element after the last pass (update and "
        "reduction sweeps; host operations run once per step): "
        + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        + ".",
        "",
        "| pass | role | operations |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {role} | {n} |" for name, role, n in totals]
    lines += ["", "## torch.optim", ""]
    if rule.torch:
        tq = rule.torch
        mapping = ", ".join(f"`{ours}` = `{theirs}`" for ours, theirs in tq.hyper.items())
        states = ", ".join(f"`{ours}` = `{f}` × `{key}`" for ours, (key, f) in tq.states.items())
        lines.append(
            f"State dicts exchange with `torch.optim.{tq.class_name}` "
            f"(`to_torch_state_dict()` / `load_torch_state_dict()`): hyperparameters {mapping}; "
            f"states {states or 'none'}" + (f"; always `{tq.fixed}`" if tq.fixed else "") + "."
        )
    else:
        lines.append("No torch.optim twin: the class takes the spec's hyperparameter names.")
    lines += [
        "",
        f"`from generated.torch import {rule.class_name}` (installed: "
        f"`from optgen.torch import {rule.class_name}`).",
    ]
    gif = TRAJECTORIES / f"{rule.name}.gif"
    if gif.exists():
        picture = f"![{rule.name} trajectories](../trajectories/{gif.name})"
        lines += ["", "## Trajectories", "", picture, ""]
        lines.append("Drawn from the generated NumPy module by `python -m tools.trajectories`.")
    lines += ["", "## Spec and generated code", ""]
    sources = [f"specs/{rule.name}.py"] + [
        f"generated/{target}/{rule.name}.py" for target in ("rules", "numpy", "triton")
    ]
    for source in sources:
        text = (ROOT / source).read_text()
        lines += [f'??? note "{source}"', "", "    ```python"]
        lines += [f"    {line}".rstrip() for line in text.splitlines()]
        lines += ["    ```", ""]
    return "\n".join(lines) + "\n"


def index_page(rules: list[Rule]) -> str:
    from tools.docs import features, oracles, paper

    lines = [
        "# optgen",
        "",
        "Optimizer update rules written once as SymPy equations and generated into a NumPy "
        "reference, fused Triton kernels and torch.optim-style classes. Each page below is "
        "generated from the rule's spec (`python -m tools.docs build`).",
        "",
        "| rule | class | paper | features | verified against |",
        "|---|---|---|---|---|",
    ]
    for rule in rules:
        lines.append(
            f"| [`{rule.name}`](rules/{rule.name}.md) | `{rule.class_name}` | {paper(rule)} "
            f"| {features(rule)} | {', '.join(oracles(rule))} |"
        )
    figures = sorted(TRAJECTORIES.glob("compare_*.png"))
    if figures:
        lines += ["", "## Trajectories", ""]
        lines += ["Every rule on three 2-D test functions (`python -m tools.trajectories`):", ""]
        lines += [f"![{f.stem}](trajectories/{f.name})" for f in figures]
    return "\n".join(lines) + "\n"


MKDOCS = """\
site_name: optgen
docs_dir: src
site_dir: {site}
use_directory_urls: false
theme:
  name: material
  font: false
# no search plugin: on file:// its worker needs a script from unpkg.com (network at view time);
# use_directory_urls: false makes every link a file, so the site browses from disk as it is
plugins: []
extra_css:
  - optgen.css
markdown_extensions:
  - tables
  - admonition
  - attr_list
  - pymdownx.details
  - pymdownx.superfences
  - pymdownx.highlight:
      use_pygments: true
  - toc:
      permalink: true
nav:
  - Home: index.md
  - Rules:
{nav}
"""

CSS = "img.eq { vertical-align: middle; max-width: 100%; }\n"


def build(
    names: list[str] | None = None, site: Path = SITE, work: Path = BUILD, strict: bool = True
) -> Path:
    """Write the markdown and the equation SVGs under ``work``, then ``mkdocs build`` into
    ``site``."""
    rules = [r for r in load_rules() if names is None or r.name in names]
    missing = set(names or ()) - {r.name for r in rules}
    if missing:
        raise SystemExit(f"no spec for {', '.join(sorted(missing))}")
    shutil.rmtree(work, ignore_errors=True)
    src = work / "src"
    (src / "rules").mkdir(parents=True)
    (src / "eq").mkdir()
    images: dict[str, bytes] = {}
    for rule in rules:
        (src / "rules" / f"{rule.name}.md").write_text(rule_page(rule, images))
    for path, data in images.items():
        (src / path).write_bytes(data)
    (src / "index.md").write_text(index_page(rules))
    (src / "optgen.css").write_text(CSS)
    if TRAJECTORIES.exists():
        shutil.copytree(TRAJECTORIES, src / "trajectories")
    nav = "\n".join(f"      - {r.class_name}: rules/{r.name}.md" for r in rules)
    (work / "mkdocs.yml").write_text(MKDOCS.format(site=site.resolve(), nav=nav))
    command = [sys.executable, "-m", "mkdocs", "build", "-q", "-f", str(work / "mkdocs.yml")]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # a banner about mkdocs 2, not our build
    subprocess.run(command + (["--strict"] if strict else []), check=True, env=env)
    return site


if __name__ == "__main__":
    raise SystemExit(
        "tools.docs_site is a helper module, not a command: run python -m tools.docs build"
    )
