"""The torch targets: ``generated/torch/__init__.py``, one torch.optim-style class per rule, and
``generated/torch/optim.py``, the drop-ins: torch.optim's names, signatures and state_dicts for
the rules that declare ``RULE.drop_in`` (torch semantics).

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
            "lazy_update": rule.lazy_update,
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


def drop_in_context(rules: list[Rule]) -> dict[str, object]:
    """Each drop-in class: its rule's class in ``generated.torch``, torch's signature (defaults
    as literals) and the settings it always passes."""
    classes = []
    seen: dict[str, str] = {}
    for rule in rules:
        for d in rule.drop_ins:
            if d.class_name in seen:
                raise SpecError(
                    f"{rule.source}:{d.line}: drop_in {d.class_name!r} is declared by "
                    f"{seen[d.class_name]} too"
                )
            seen[d.class_name] = rule.source
            classes.append(
                {
                    "name": d.class_name,
                    "rule": rule.name,
                    "base": rule.class_name,
                    "args": [(n, "" if n == "*" else repr(v)) for n, v in d.signature],
                    "own": [(n, repr(v)) for n, v in d.own],
                    "fixed": repr(dict(d.fixed)),
                    "below_2d": repr(dict(d.below_2d)),
                    "state_from_defaults": d.state_from_defaults,
                    "source": rule.source,
                }
            )
    classes.sort(key=lambda c: c["name"])
    # __all__ in ruff's isort-style order (RUF022): all-caps names first
    exported = sorted((c["name"] for c in classes), key=lambda n: (not n.isupper(), n))
    return {"classes": classes, "exported": exported}


TARGET = PackageTarget("torch", "torch", "torch_package.py.j2", context)
DROP_IN_TARGET = PackageTarget(
    "torch_optim", "torch", "torch_optim.py.j2", drop_in_context, filename="optim.py"
)
