"""trainer.cache_shard_mb: a Train worker's shard kept in memory after the first epoch
(catalog_vision.train.shard_cache), read from a real Ray Dataset."""

import numpy as np
import pytest
import torch

from catalog_vision.train.shard_cache import ShardCache

DTYPES = {"pixels": torch.uint8, "y": torch.int64}


@pytest.fixture(scope="module")
def shard(ray_local):
    import ray.data

    rng = np.random.default_rng(0)
    rows = [{"pixels": rng.integers(0, 256, (1, 4, 4), dtype=np.uint8), "y": i} for i in range(100)]
    return ray.data.from_items(rows)


def samples(batches) -> list[tuple[int, bytes]]:
    """(target, pixel bytes) of every row, in the order given."""
    return [(int(y), x.numpy().tobytes()) for b in batches for x, y in zip(b["pixels"], b["y"])]


def test_later_epochs_reshuffle_the_first_epochs_rows_from_memory(shard):
    cache = ShardCache(limit_mb=1)
    torch.manual_seed(0)
    first = samples(cache.batches(shard, 16, DTYPES, None))
    assert len(first) == 96 and cache.cached  # drop_last: 6 batches of 16 from 100 rows
    epochs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        batches = list(cache.batches(shard, 16, DTYPES, None))
        assert [len(b["y"]) for b in batches] == [16] * 6
        epochs.append(samples(batches))
    for e in epochs:  # the same rows, pixels still with their targets, in another order
        assert sorted(e) == sorted(first) and e != first
    assert epochs[0] != epochs[1]


def test_the_cache_holds_copies_that_augmentation_cannot_change(shard):
    cache = ShardCache(limit_mb=1)
    kept = []
    for b in cache.batches(shard, 10, DTYPES, None):
        kept.append(samples([b]))
        b["pixels"].zero_()  # in-place work on the streamed batch
    torch.manual_seed(0)
    assert sorted(samples(cache.batches(shard, 10, DTYPES, None))) == sorted(r for k in kept for r in k)


def test_a_shard_over_the_limit_streams_every_epoch(shard):
    cache = ShardCache(limit_mb=0.0005)  # 524 bytes: a few batches' worth
    assert len(samples(cache.batches(shard, 16, DTYPES, None))) == 96
    assert not cache.cached and cache.too_big
    assert len(samples(cache.batches(shard, 16, DTYPES, None))) == 96 and not cache.cached


def test_an_epoch_stopped_early_caches_nothing(shard):
    cache = ShardCache(limit_mb=1)
    it = cache.batches(shard, 16, DTYPES, None)
    next(it)
    it.close()
    assert not cache.cached
    assert ShardCache(0).limit == 0 and not ShardCache(None).limit
