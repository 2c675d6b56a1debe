"""Targets as configuration: what each generated file is made of.

A :class:`Target` names its output directory, its jinja2 template and the function that builds the
template's context from the lowered rule (:class:`codegen.lowered.Lowered`); its printer lives in
its own module and declares one entry per operation of :mod:`codegen.ops`. ``codegen/generate.py``
runs the pipeline over :data:`RULE_TARGETS` (one file per rule) and :data:`PACKAGE_TARGETS` (one
file for all rules), and writes and checks the results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jinja2

from codegen.lowered import Lowered
from codegen.spec import Rule

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def _docstring(text: str) -> str:
    """Text safe inside a triple-quoted docstring."""
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)
ENV.filters["docstring"] = _docstring


@dataclass(frozen=True)
class Target:
    """One kind of generated file per rule: ``generated/<directory>/<rule>.py``."""

    name: str
    directory: str
    template: str
    context: Callable[[Lowered], dict[str, object]]
    doc: str

    def render(self, lowered: Lowered) -> str:
        return ENV.get_template(self.template).render(self.context(lowered))


@dataclass(frozen=True)
class PackageTarget:
    """One generated file for all rules: ``generated/<directory>/<filename>``."""

    name: str
    directory: str
    template: str
    context: Callable[[list[Rule]], dict[str, object]]
    filename: str = "__init__.py"

    def render(self, rules: list[Rule]) -> str:
        return ENV.get_template(self.template).render(self.context(rules))


def rule_targets() -> list[Target]:
    """Every per-rule target, in the order files are generated (metadata first)."""
    from codegen.targets import numba, numpy, rules, triton

    return [rules.TARGET, numpy.TARGET, triton.TARGET, numba.TARGET]


def package_targets() -> list[PackageTarget]:
    from codegen.targets import torch

    return [torch.TARGET, torch.DROP_IN_TARGET]
