"""Single-process pieces of sharded training: noise offsets (a shard draws the full tensor's
noise) and the hook that combines a tensor's reductions across its shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generated.numpy import lamb as numpy_lamb
from generated.numpy import sgld as numpy_sgld
from generated.triton import lamb as triton_lamb
from generated.triton import sgld as triton_sgld
from optgen_runtime.sharding import across_shards, shards

N, CUT = 3000, 1200  # a tensor and where its two shards meet (not on a chunk boundary)


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal(N).astype(np.float32), rng.standard_normal(N).astype(np.float32)


def test_numpy_shards_draw_the_full_tensors_noise() -> None:
    w, g = data()
    whole = w.copy()
    numpy_sgld.step(whole, g, {}, 3, seed=5, lr=0.1)
    a, b = w[:CUT].copy(), w[CUT:].copy()
    numpy_sgld.step(a, g[:CUT], {}, 3, seed=5, lr=0.1)
    numpy_sgld.step(b, g[CUT:], {}, 3, seed=5, lr=0.1, noise_offset=CUT)
    assert np.array_equal(np.concatenate([a, b]), whole)
    unshifted = w[CUT:].copy()
    numpy_sgld.step(unshifted, g[CUT:], {}, 3, seed=5, lr=0.1)
    assert not np.array_equal(unshifted, whole[CUT:])  # the offset matters


def test_triton_shards_draw_the_full_tensors_noise() -> None:
    w, g = data()
    whole = w.copy()
    numpy_sgld.step(whole, g, {}, 3, seed=5, lr=0.1)
    tail = torch.from_numpy(w[CUT:].copy())
    triton_sgld.step(tail, torch.from_numpy(g[CUT:]), {}, 3, seed=5, lr=0.1, noise_offset=CUT)
    assert np.array_equal(tail.numpy(), whole[CUT:])
    parts = [torch.from_numpy(w[:CUT].copy()), torch.from_numpy(w[CUT:].copy())]
    grads = [torch.from_numpy(g[:CUT]), torch.from_numpy(g[CUT:])]
    hp = {"seed": 5, "lr": 0.1}
    triton_sgld.step_multi(
        parts, grads, [{}, {}], 3, stream_ids=[0, 0], noise_offsets=[0, CUT], **hp
    )
    full = torch.from_numpy(w.copy())
    triton_sgld.step_multi([full], [torch.from_numpy(g)], [{}], 3, stream_ids=[0], **hp)
    assert torch.equal(torch.cat(parts), full)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3", 2**62 + 1])
def test_a_bad_noise_offset_is_refused(bad: object) -> None:
    w, g = data()
    before = w.copy()
    with pytest.raises(ValueError, match="noise offset"):
        numpy_sgld.step(w, g, {}, 1, noise_offset=bad)
    with pytest.raises(ValueError, match="noise offset"):
        triton_sgld.step_multi(
            [torch.from_numpy(w)], [torch.from_numpy(g)], [{}], 1, noise_offsets=[bad]
        )
    assert np.array_equal(w, before)


@pytest.mark.parametrize("module", [numpy_lamb, triton_lamb], ids=["numpy", "triton"])
def test_reductions_are_combined_across_shards(module: object) -> None:
    """A shard's LAMB norms combined with those of the other shard (recorded from its own
    step) are the whole tensor's: the shard moves as the whole tensor's first part does."""
    w, g = data()
    make = np.array if module is numpy_lamb else torch.tensor
    whole = make(w.copy())
    module.step(whole, make(g), module.init_state(whole), 1, lr=0.1)
    recorded: list[dict[str, float]] = []

    def record(kinds: dict[str, str], sums: list[dict[str, float]]) -> list[dict[str, float]]:
        recorded.extend(dict(s) for s in sums)
        return sums

    other = make(w[CUT:].copy())
    with shards(record):
        module.step(other, make(g[CUT:]), module.init_state(other), 1, lr=0.1)

    def add_other(kinds: dict[str, str], sums: list[dict[str, float]]) -> list[dict[str, float]]:
        theirs = recorded.pop(0)
        return [{k: v + theirs[k] for k, v in s.items()} for s in sums]

    shard = make(w[:CUT].copy())
    with shards(add_other):
        module.step(shard, make(g[:CUT]), module.init_state(shard), 1, lr=0.1)
    assert not recorded
    # float32 partials of other blocks (Triton): equal to float32 rounding
    np.testing.assert_allclose(np.asarray(shard), np.asarray(whole[:CUT]), rtol=1e-6, atol=1e-6)
    alone = make(w[:CUT].copy())
    module.step(alone, make(g[:CUT]), module.init_state(alone), 1, lr=0.1)
    assert np.abs(np.asarray(alone) - np.asarray(whole[:CUT])).max() > 1e-4  # not vacuous


def test_outside_a_sharded_step_nothing_is_combined() -> None:
    sums = [{"x": 1.0}]
    assert across_shards({"x": "sum"}, sums) is sums
    with shards(None):
        assert across_shards({"x": "sum"}, sums) is sums
