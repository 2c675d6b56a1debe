"""``resolve_hyperparams`` remembers calls with plain keywords (``_RESOLVED``): what it returns
must be what it computes every time, for any keywords and tables."""

from __future__ import annotations

import math

import pytest
import torch

from optgen_runtime import hyperparams
from optgen_runtime.hyperparams import Legal, resolve_hyperparams

DEFAULTS = {"lr": 0.1, "wd": 0.0, "mode": "a"}
LEGAL = {
    "lr": Legal(lo=0.0),
    "wd": Legal(lo=-1.0),
    "mode": Legal(choices=("a", "b"), allow_none=True),
}
NONE_MEANS = {"mode": 0.0}
# a variant of the rule (the same name): wd only 0
NARROW = {**LEGAL, "wd": Legal(lo=0.0, hi=0.0)}


def resolve(given: dict, legal: dict = LEGAL) -> dict[str, float]:
    return resolve_hyperparams("rule", DEFAULTS, legal, NONE_MEANS, given)


def test_a_remembered_call_returns_what_it_computes() -> None:
    hyperparams._RESOLVED.clear()
    first = resolve({"lr": 0.5, "mode": "b"})
    assert first == {"lr": 0.5, "wd": 0.0, "mode": 1.0}
    assert len(hyperparams._RESOLVED) == 1
    first["lr"] = 9.0  # the caller's copy
    again = resolve({"lr": 0.5, "mode": "b"})
    assert again == {"lr": 0.5, "wd": 0.0, "mode": 1.0} and again is not first
    assert resolve({"lr": 0.5, "mode": None})["mode"] == 0.0


def test_signed_zeros_and_types_are_told_apart() -> None:
    hyperparams._RESOLVED.clear()
    assert math.copysign(1.0, resolve({"wd": 0.0})["wd"]) == 1.0
    assert math.copysign(1.0, resolve({"wd": -0.0})["wd"]) == -1.0
    assert math.copysign(1.0, resolve({"wd": 0.0})["wd"]) == 1.0
    assert resolve({"lr": 1}) == resolve({"lr": 1.0})


def test_refusals_are_never_remembered() -> None:
    hyperparams._RESOLVED.clear()
    for _ in range(2):
        with pytest.raises(ValueError, match=r"lr=-1\.0 is outside"):
            resolve({"lr": -1.0})
        with pytest.raises(ValueError, match="lr=nan"):
            resolve({"lr": math.nan})
        with pytest.raises(TypeError, match="unknown hyperparameter"):
            resolve({"momentum": 0.9})
    assert not hyperparams._RESOLVED


def test_the_same_name_with_other_tables_is_checked_against_them() -> None:
    """A variant's tables (the rule's name, narrower legal values): a value its tables refuse
    is refused, whatever the rule's own tables accepted and remembered before."""
    hyperparams._RESOLVED.clear()
    assert resolve({"wd": 0.5})["wd"] == 0.5
    with pytest.raises(ValueError, match=r"wd=0\.5 is outside"):
        resolve({"wd": 0.5}, NARROW)
    assert resolve({"wd": 0.0}, NARROW)["wd"] == 0.0
    assert resolve({"wd": 0.5})["wd"] == 0.5


def test_values_that_can_change_are_resolved_every_time() -> None:
    hyperparams._RESOLVED.clear()
    lr = torch.tensor(0.5)
    assert resolve({"lr": lr})["lr"] == 0.5
    lr.fill_(0.25)  # in place, as a scheduler may
    assert resolve({"lr": lr})["lr"] == 0.25
    lr.fill_(-1.0)
    with pytest.raises(ValueError, match="outside"):
        resolve({"lr": lr})
    assert not hyperparams._RESOLVED


def test_the_memo_is_bounded(monkeypatch) -> None:
    hyperparams._RESOLVED.clear()
    monkeypatch.setattr(hyperparams, "_RESOLVED_MAX", 8)
    for k in range(20):
        assert resolve({"lr": float(k)})["lr"] == float(k)
        assert len(hyperparams._RESOLVED) <= 8
