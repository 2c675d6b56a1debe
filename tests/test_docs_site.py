"""The documentation site (``python -m tools.docs build``): every rule's equations render, a
strict mkdocs build of a few pages succeeds, and the pages load nothing from the network."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from codegen.load import load_rules
from tools import docs_site


def test_every_rules_equations_render() -> None:
    """What the full build renders: a construct mathtext lacks fails here, naming the rule."""
    for rule in load_rules():
        for latex, _, line in docs_site.equation_latex(rule):
            try:
                svg = docs_site.render_svg(latex)
            except ValueError as error:
                raise AssertionError(f"{rule.source}:{line}: {error}") from None
            assert svg.startswith(b"<?xml") and b"<path" in svg


def test_an_unrenderable_equation_fails_the_build() -> None:
    with pytest.raises(ValueError, match="mathtext cannot render"):
        docs_site.render_svg(r"\begin{cases} a \end{cases}")


def test_equations_come_from_the_spec() -> None:
    """Adam's update, printed from its SymPy: the new weight, primed, from the new moments."""
    rule = next(r for r in load_rules() if r.name == "adam")
    lines = [latex for latex, _, _ in docs_site.equation_latex(rule)]
    assert lines[-1].startswith("\\mathrm{weight}' = ")
    assert "\\mathrm{mean}'" in lines[-1] and "\\sqrt{\\mathrm{var}'}" in lines[-1]


def test_strict_build_is_offline(tmp_path: Path) -> None:
    # a reduction, a Piecewise and a host state, a matrix rule: the page kinds
    rules = ["adam", "lamb", "nadam", "muon"]
    site = docs_site.build(rules, site=tmp_path / "site", work=tmp_path / "work")
    for name in rules:
        html = (site / "rules" / f"{name}.html").read_text()
        assert html.count('class="eq"') >= 3, name
        assert f"generated/numpy/{name}.py" in html and "Hyperparameters" in html
    for page in site.rglob("*.html"):
        text = page.read_text()
        remote = re.findall(r'<(?:script|img|link)[^>]*(?:src|href)="(?:https?:)?//[^"]*"', text)
        assert remote == [], (page.name, remote[:3])
    css = "".join(p.read_text() for p in site.rglob("*.css"))
    assert "fonts.googleapis" not in css


def test_screenshot_of_a_rule_page(tmp_path: Path) -> None:
    """The tool's own check (a non-blank page) on a headless Chromium, where one is installed."""
    import shutil

    from tools.docs import screenshot

    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("no Chromium on PATH (Debian: apt-get install -y chromium)")
    out = tmp_path / "adam.png"
    assert screenshot("adam", out, site=tmp_path / "site", work=tmp_path / "work") == 0
    from PIL import Image

    with Image.open(out) as image:
        assert image.size == (1280, 2000)
