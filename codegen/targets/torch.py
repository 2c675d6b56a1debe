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
    class_names = [c["name"] for c in classes]
    duplicates = sorted({n for n in class_names if class_names.count(n) > 1})
    if duplicates:
        raise SpecError(f"two rules want the class name(s) {duplicates}: pass class_name=")
    return {"classes": classes}


TARGET = PackageTarget("torch", "torch", "torch_package.py.j2", context)
