"""Every ```python block of README.md runs as written (each in a fresh namespace, from the
repository root; Triton on CPU tensors under TRITON_INTERPRET=1, as tests/conftest.py sets)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.S | re.M)


def test_the_readme_has_python_snippets() -> None:
    assert len(BLOCKS) >= 4


# What a snippet may warn: torch's advice on backward(create_graph=True) (AdaHessian's documented
# use; torch warns once per process, so it may come here or in an earlier test).
EXPECTED = ("Using backward() with create_graph=True",)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_snippet_runs(index: int) -> None:
    code = compile(BLOCKS[index], f"README.md python block {index + 1}", "exec")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(code, {"__name__": f"readme_{index}"})
    unexpected = [str(w.message) for w in caught if not str(w.message).startswith(EXPECTED)]
    assert unexpected == []
