"""``python -m tools.trajectories``: every rule runs on the test functions, the paths are the
rules' own (SGD against the closed form), and one rule's GIF is written, deterministically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools import trajectories as tr

QUADRATIC, ROSENBROCK, SADDLE = tr.FUNCTIONS


@pytest.mark.parametrize("rule", tr.rules())
def test_every_rule_runs(rule: str) -> None:
    """Matrix rules, Hessian inputs and the rest: nothing is skipped, and the path moves."""
    for fn in tr.FUNCTIONS:
        path = tr.run(rule, fn, 1e-4 if rule != "adadelta" else None, steps=3)
        assert np.all(np.isfinite(path)), (rule, fn.name, path)
        assert not np.array_equal(path[0], path[-1]), (rule, fn.name)


def test_every_rule_has_a_picture_and_only_rules_do() -> None:
    """docs/trajectories holds one GIF per rule of ``tr.rules()`` (a variant's path is its rule's:
    none has its own). torch_sparse_adam's was missing until 2026-12-06."""
    folder = Path(tr.ROOT) / "docs" / "trajectories"
    assert {p.stem for p in folder.glob("*.gif")} == set(tr.rules())
    assert {p.name for p in folder.glob("*.png")} == {f"compare_{f.name}.png" for f in tr.FUNCTIONS}


def test_sgd_path_is_the_closed_form() -> None:
    """SGD on 0.5 (x^2 + 25 y^2): x_t = x_0 (1 - lr)^t, y_t = y_0 (1 - 25 lr)^t. lr is a binary
    fraction: MXNet's SGD takes it as float32 (specs/sgd.py), at float64 weights too."""
    lr, steps = 0.03125, 20
    path = tr.run("sgd", QUADRATIC, lr, steps=steps)
    t = np.arange(steps + 1)
    x0, y0 = QUADRATIC.start
    expected = np.stack([x0 * (1 - lr) ** t, y0 * (1 - 25 * lr) ** t], axis=1)
    np.testing.assert_allclose(path, expected, rtol=1e-12)


def test_gradients_and_hessians_are_the_functions() -> None:
    """Central differences of each function's value against its gradient and Hessian diagonal."""
    h = 1e-6
    for fn in tr.FUNCTIONS:
        for w in (np.array([0.3, -0.7]), np.array([-1.2, 1.1])):
            for i in range(2):
                e = np.eye(2)[i] * h
                grad = (fn.value(*(w + e)) - fn.value(*(w - e))) / (2 * h)
                assert grad == pytest.approx(fn.grad(w)[i], rel=1e-6, abs=1e-6)
                second = (fn.grad(w + e)[i] - fn.grad(w - e)[i]) / (2 * h)
                assert second == pytest.approx(fn.hessian_diagonal(w)[i], rel=1e-6, abs=1e-6)


def test_a_diverging_path_stops_and_scores_inf() -> None:
    path = tr.run("sgd", ROSENBROCK, 1.0, steps=10)
    assert np.isnan(path[-1]).all() and tr.score(ROSENBROCK, path) == np.inf


def test_one_rules_gif_is_deterministic(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    assert tr.main(["sgd_mom", "--out", str(first)]) == 0
    assert tr.main(["sgd_mom", "--out", str(second)]) == 0
    assert sorted(p.name for p in first.iterdir()) == ["sgd_mom.gif"]  # no partial comparisons
    data = (first / "sgd_mom.gif").read_bytes()
    assert data == (second / "sgd_mom.gif").read_bytes()
    committed = tr.OUT / "sgd_mom.gif"
    assert data == committed.read_bytes(), "stale pictures: python -m tools.trajectories"
    with Image.open(first / "sgd_mom.gif") as image:
        assert image.n_frames == tr.FRAMES + 1
        assert max(image.size) <= 480
    assert len(data) < 100_000
