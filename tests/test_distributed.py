"""roli.distributed: global batches sliced per rank, exactly as one process would see them."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from roli.config import ConfigError
from roli.data.base import make_loader
from roli.distributed import ShardedBatches, World, check_batch, global_batches, local_slice, sharded_loader

pytestmark = pytest.mark.timeout(60)  # in-process index arithmetic: milliseconds


def test_one_process_sees_the_global_batches_and_the_order_depends_on_the_seed_only():
    ds = TensorDataset(torch.arange(103))
    ours = [b[0].tolist() for b in sharded_loader(ds, 10, shuffle=True, seed=7, w=World())]
    assert ours == global_batches(103, 10, shuffle=True, seed=7) and len(ours) == 11
    assert ours == [b[0].tolist() for b in sharded_loader(ds, 10, shuffle=True, seed=7, w=World())]
    assert ours != [b[0].tolist() for b in sharded_loader(ds, 10, shuffle=True, seed=8, w=World())]
    assert sorted(sum(ours, [])) == list(range(103))
    # ... and they are exactly a single-process DataLoader's (so one process runs as it always did)
    assert ours == [b[0].tolist() for b in make_loader(ds, 10, shuffle=True, seed=7)]


@pytest.mark.parametrize("size", [2, 3, 4])
def test_ranks_split_every_global_batch_contiguously(size):
    n, batch = 50, 8
    per_rank = [ShardedBatches(n, batch, shuffle=True, seed=3, w=World(rank=r, size=size)) for r in range(size)]
    for g, global_batch in enumerate(global_batches(n, batch, shuffle=True, seed=3)):
        joined, starts = [], []
        for s in per_rank:
            for b, shard in zip(s.batches, s.shards):
                if b[0] in global_batch:
                    joined += b
                    starts.append(shard.start)
                    assert shard.size == len(global_batch)
        assert joined == global_batch, g  # each example once, in the global order
        assert starts == sorted(starts)


def test_local_slices_differ_by_at_most_one_and_cover_the_batch():
    for size in range(1, 6):
        for n in range(13):
            parts = [local_slice(n, World(rank=r, size=size)) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            lens = [b - a for a, b in parts]
            assert max(lens) - min(lens) <= 1


def test_the_batch_is_global_and_must_divide():
    check_batch(64, World(rank=0, size=2))
    with pytest.raises(ConfigError, match="does not divide over 3 processes"):
        check_batch(64, World(rank=0, size=3))
