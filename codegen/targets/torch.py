"""The torch target: ``generated/torch/__init__.py``, one torch.optim-style class per rule.

A class only names its rule's modules (``META``: generated.rules.<rule>, ``NUMPY``, ``TRITON``)
and its constructor's hyperparameters; the behaviour every class shares lives in
:mod:`optgen_runtime.optim`.
"""

from __future__ import annotations

from codegen.spec import Rule, SpecError
from codegen.targets import PackageTarget


def context(rules: list[Rule]) -> dict[str, object]:
    classes = [
        {
            "rule": rule.name,
            "name": rule.class_name,
            "doc": rule.doc,
            "args": [(h.name, repr(h.default)) for h in rule.hypers.values()],
        }
        for rule in rules
    ]
    sources: dict[str, list[str]] = {}
    for rule in rules:
        sources.setdefault(rule.class_name, []).append(rule.source)
    for name, files in sources.items():
        if len(files) > 1:
            raise SpecError(
                f"{', '.join(files)}: each wants the class name {name!r}; pass class_name="
            )
    return {"classes": classes}


TARGET = PackageTarget("torch", "torch", "torch_package.py.j2", context)
