"""Properties of LengthBucketSampler: coverage, budgets, randomness, resume, distribution."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensorlstm.bucketing import LengthBucketSampler
from sensorlstm.config import BucketConfig

lengths_strategy = st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=120)
fast = settings(max_examples=40, deadline=None)


def _epoch(sampler: LengthBucketSampler, epoch: int = 0) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


@fast
@given(
    lengths=lengths_strategy,
    batch_size=st.integers(1, 17),
    shuffle=st.booleans(),
    target=st.sampled_from([0.0, 0.05, 0.14, 1.0]),
    num_buckets=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_count_mode_yields_every_index_once(
    lengths: list[int], batch_size: int, shuffle: bool, target: float, num_buckets: int, seed: int
) -> None:
    sampler = LengthBucketSampler(
        lengths,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        target_overlap=target,
        num_buckets=num_buckets,
    )
    batches = _epoch(sampler, epoch=3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch_size for b in batches)
    # Batches never span two buckets, so each bucket may end in one incomplete batch.
    assert sum(len(b) < batch_size for b in batches) <= len(set(sampler.bucket_of.tolist()))
    assert len(batches) == len(sampler)


@fast
@given(lengths=lengths_strategy, batch_size=st.integers(1, 17), seed=st.integers(0, 2**16))
def test_drop_last_drops_only_the_incomplete_batch(
    lengths: list[int], batch_size: int, seed: int
) -> None:
    sampler = LengthBucketSampler(lengths, batch_size=batch_size, seed=seed, drop_last=True)
    batches = _epoch(sampler)
    flat = [i for b in batches for i in b]
    assert all(len(b) == batch_size for b in batches)
    assert len(flat) == len(set(flat)) == len(lengths) // batch_size * batch_size


@fast
@given(
    lengths=lengths_strategy,
    budget=st.integers(1, 2000),
    multiple=st.sampled_from([None, 8]),
    drop_last=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_budget_mode_respects_budget_and_covers_once(
    lengths: list[int], budget: int, multiple: int | None, drop_last: bool, seed: int
) -> None:
    sampler = LengthBucketSampler(
        lengths, max_timesteps=budget, seed=seed, pad_to_multiple_of=multiple, drop_last=drop_last
    )
    batches = _epoch(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        padded_longest = -(-longest // multiple) * multiple if multiple else longest
        assert len(batch) * padded_longest <= budget or len(batch) == 1


def test_budget_mode_makes_short_batches_large_and_long_batches_small() -> None:
    lengths = [10] * 200 + [1000] * 20
    batches = _epoch(LengthBucketSampler(lengths, max_timesteps=2000, seed=1))
    sizes = {lengths[b[0]]: len(b) for b in batches if len({lengths[i] for i in b}) == 1}
    assert sizes[10] > sizes[1000] >= 1


def test_epochs_differ_and_same_seed_and_epoch_repeat() -> None:
    lengths = np.random.default_rng(0).integers(5, 500, 300)
    first = LengthBucketSampler(lengths, batch_size=8, seed=7)
    second = LengthBucketSampler(lengths, batch_size=8, seed=7)
    assert _epoch(first, 2) == _epoch(second, 2)
    assert _epoch(first, 2) != _epoch(first, 3)
    assert _epoch(first, 2) != _epoch(LengthBucketSampler(lengths, batch_size=8, seed=8), 2)


def test_shuffled_batches_are_length_homogeneous_yet_change_between_epochs() -> None:
    lengths = np.clip(np.exp(np.random.default_rng(1).normal(np.log(200), 1.0, 4000)), 5, 5000)
    lengths = lengths.astype(np.int64)
    sampler = LengthBucketSampler(lengths, batch_size=32, seed=0)
    random_efficiency = _efficiency(lengths, np.array_split(np.arange(4000), 125))
    assert sampler.epoch_stats(0)["padding_efficiency"] > max(0.8, 3 * random_efficiency)
    mates = [{frozenset(b) for b in sampler.global_batches(e)} for e in (0, 1)]
    assert len(mates[0] & mates[1]) < len(mates[0]) // 10


def _efficiency(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    real = sum(int(lengths[b].sum()) for b in batches)
    return real / sum(len(b) * int(lengths[b].max()) for b in batches)


@fast
@given(
    lengths=lengths_strategy,
    batch_size=st.integers(1, 9),
    budget_mode=st.booleans(),
    cut=st.floats(0.0, 1.0),
    epoch=st.integers(0, 5),
)
def test_restored_sampler_yields_exactly_the_remaining_batches(
    lengths: list[int], batch_size: int, budget_mode: bool, cut: float, epoch: int
) -> None:
    kwargs = {"max_timesteps": 600} if budget_mode else {"batch_size": batch_size}
    sampler = LengthBucketSampler(lengths, seed=3, **kwargs)
    sampler.set_epoch(epoch)
    full = list(sampler)
    taken = int(cut * len(full))
    iterator = iter(sampler)
    for _ in range(taken):
        next(iterator)
    state = json.loads(json.dumps(sampler.state_dict()))

    restored = LengthBucketSampler(lengths, seed=3, **kwargs)
    restored.load_state_dict(state)
    restored.set_epoch(epoch)  # a training loop calls it again on resume: must not reset
    assert list(restored) == full[taken:]
    assert list(restored) == full  # the following iteration is a whole epoch again


def test_state_dict_takes_the_consumed_count_from_the_training_loop() -> None:
    sampler = LengthBucketSampler(list(range(1, 50)), batch_size=4, seed=0)
    full = list(sampler)
    state = sampler.state_dict(consumed=5)
    restored = LengthBucketSampler(list(range(1, 50)), batch_size=4, seed=0)
    restored.load_state_dict(state)
    assert list(restored) == full[5:]


def test_load_state_dict_refuses_a_state_from_other_data() -> None:
    state = LengthBucketSampler([3, 4, 5], batch_size=2).state_dict()
    with pytest.raises(ValueError, match="num_recordings"):
        LengthBucketSampler([3, 4], batch_size=2).load_state_dict(state)


@pytest.mark.parametrize(
    ("changed", "field"),
    [
        ({"batch_size": 3}, "batch_size"),
        ({"rank": 1}, "rank"),
        ({"target_overlap": 0.5}, "target_overlap"),
        ({"lengths": [9, 4, 5, 6, 7, 8]}, "plan_digest"),
    ],
)
def test_load_state_dict_refuses_a_state_whose_positions_mean_other_batches(
    changed: dict, field: str
) -> None:
    saved_with = {"lengths": [3, 4, 5, 6, 7, 8], "batch_size": 2, "num_replicas": 2, "rank": 0}
    state = LengthBucketSampler(**saved_with).state_dict()
    with pytest.raises(ValueError, match=field):
        LengthBucketSampler(**{**saved_with, **changed}).load_state_dict(state)


@fast
@given(
    lengths=st.lists(st.integers(1, 300), min_size=1, max_size=100),
    replicas=st.integers(1, 5),
    batch_size=st.integers(1, 8),
    budget_mode=st.booleans(),
    drop_last=st.booleans(),
)
def test_ranks_are_disjoint_with_equal_counts_and_cover_the_data(
    lengths: list[int], replicas: int, batch_size: int, budget_mode: bool, drop_last: bool
) -> None:
    kwargs = {"max_timesteps": 500} if budget_mode else {"batch_size": batch_size}
    per_rank = [
        _epoch(
            LengthBucketSampler(
                lengths, seed=5, num_replicas=replicas, rank=r, drop_last=drop_last, **kwargs
            ),
            epoch=1,
        )
        for r in range(replicas)
    ]
    assert len({len(batches) for batches in per_rank}) == 1
    counts = Counter(i for batches in per_rank for b in batches for i in b)
    if drop_last:
        assert all(c == 1 for c in counts.values())
        return
    assert set(counts) == set(range(len(lengths)))
    repeated = [i for i, c in counts.items() if c > 1]
    # Indices repeat only as documented: when no batch has two recordings left to split.
    if repeated:
        assert all(len(b) == 1 for batches in per_rank for b in batches)


def test_ranks_never_repeat_an_index_when_batches_can_be_split() -> None:
    lengths = np.random.default_rng(2).integers(5, 400, 1001)
    per_rank = [
        list(LengthBucketSampler(lengths, batch_size=32, num_replicas=3, rank=r, seed=0))
        for r in range(3)
    ]
    flat = [i for batches in per_rank for b in batches for i in b]
    assert sorted(flat) == list(range(1001))
    assert len({len(batches) for batches in per_rank}) == 1


def test_from_config_uses_the_budget_over_the_count() -> None:
    cfg = BucketConfig(batch_size=4, max_timesteps=100, target_overlap=0.5)
    sampler = LengthBucketSampler.from_config([10] * 40, cfg, seed=1)
    assert sampler.batch_size is None and sampler.max_timesteps == 100
    assert all(len(b) == 10 for b in sampler)


def test_explicit_boundaries_keep_buckets_apart() -> None:
    lengths = [5, 6, 7, 8, 50, 51, 52, 53]
    sampler = LengthBucketSampler(lengths, batch_size=4, boundaries=[20], target_overlap=0.0)
    for epoch in range(5):
        for batch in _epoch(sampler, epoch):
            assert len({lengths[i] >= 20 for i in batch}) == 1


@fast
@given(
    lengths=st.lists(st.integers(1, 500), min_size=8, max_size=120),
    num_buckets=st.integers(2, 5),
    batch_size=st.integers(1, 9),
)
def test_quantile_buckets_never_share_a_batch(
    lengths: list[int], num_buckets: int, batch_size: int
) -> None:
    sampler = LengthBucketSampler(
        lengths, batch_size=batch_size, num_buckets=num_buckets, target_overlap=0.0
    )
    assert len(set(sampler.bucket_of.tolist())) <= num_buckets
    for epoch in range(2):
        batches = _epoch(sampler, epoch)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        for batch in batches:
            assert len({int(sampler.bucket_of[i]) for i in batch}) == 1


def test_invalid_arguments_say_what_to_fix() -> None:
    with pytest.raises(ValueError, match=r"batch_size .* or max_timesteps"):
        LengthBucketSampler([1, 2])
    with pytest.raises(ValueError, match="rank must be in"):
        LengthBucketSampler([1, 2], batch_size=1, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="recording index 1"):
        LengthBucketSampler([1, -2], batch_size=1)
