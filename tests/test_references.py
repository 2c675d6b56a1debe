"""Generated rules against independent reference optimizers (pytorch-optimizer 4.1.0, torch.optim):
the table and the harness are ``tools/references.py`` (one entry a rule; ``python -m
tools.references`` prints the errors). Each setting runs 20 steps on a 1-D and a 2-D weight in
float32 and float64, through the NumPy module and the torch class, against the reference on the
same gradients."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from conftest import RULES

from tools.references import BY_RULE, DTYPES, REFERENCES, SHAPES, compare, spec_lines

CASES = [
    pytest.param(entry, setting, id=f"{entry.rule}-{i}")
    for entry in REFERENCES
    for i, setting in enumerate(entry.settings)
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize(("entry", "setting"), CASES)
def test_rule_matches_its_reference(entry, setting, shape, dtype) -> None:
    result = compare(entry, setting, shape, dtype)
    bound = entry.bounds[dtype]
    print(f"{entry.rule} {setting} {shape} {np.dtype(dtype).name}: {result}")
    assert result.numpy < bound and result.torch_class < bound, (result, bound)
    # not vacuous: the weights moved far more than the bound (an update off by 1% would show)
    assert result.moved > 100 * bound, result


def test_every_entry_is_a_rule_with_its_flags_exercised() -> None:
    """Each entry names a rule, maps only its hyperparameters, runs its defaults and turns
    every flag on in some setting (each mode of the rule meets the reference)."""
    for entry in REFERENCES:
        rule = RULES[entry.rule]
        assert set(entry.mapping) <= set(rule.hypers), entry.rule
        assert {} in entry.settings, entry.rule
        flags = [h.name for h in rule.hypers.values() if h.legal.flag]
        for flag in flags:
            assert any(s.get(flag) is (not rule.hypers[flag].default) for s in entry.settings)
        assert spec_lines(entry.rule) <= 40, entry.rule


def test_the_harness_catches_a_wrong_mapping() -> None:
    """Test the tester: Adan with beta2 and beta3 swapped in the mapping fails the bound."""
    entry = BY_RULE["adan"]
    swapped = replace(entry, mapping={**entry.mapping, "beta2": "betas[2]", "beta3": "betas[1]"})
    for dtype in DTYPES:
        result = compare(swapped, {"beta2": 0.8, "beta3": 0.95}, SHAPES[0], dtype)
        assert result.numpy > 10 * entry.bounds[dtype], result


def test_the_harness_catches_a_learning_rate_off_by_a_tenth_of_a_percent() -> None:
    """Test the tester: MADGRAD against its reference run at 1.001 times the rate (about its
    own lr + epsilon at the defaults) fails the bound in both dtypes."""
    entry = BY_RULE["madgrad"]

    def faster(params, **kwargs):
        return entry.factory(params, **{**kwargs, "lr": kwargs["lr"] * 1.001})

    for dtype in DTYPES:
        assert compare(entry, {}, SHAPES[0], dtype).numpy < entry.bounds[dtype]
        off = compare(replace(entry, factory=faster), {}, SHAPES[0], dtype)
        assert off.numpy > entry.bounds[dtype], (dtype, off)
