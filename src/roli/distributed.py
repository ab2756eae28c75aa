"""Data parallelism with PyTorch's own engine: `torchrun --nproc-per-node N -m roli run RECIPE` (NCCL on GPUs, gloo
on CPU), for one node or many (torchrun's rendezvous). No launcher of roli's own.

The configured batch is the *global* batch. Every rank walks the same global batches in the same order (a
permutation drawn from (seed, epoch), as in a single-process run) and takes its contiguous slice of each, so N
processes see exactly the examples one process would, batch by batch. Every rank also keeps the same global RNG
state and draws the attack's random start for the whole global batch (`Shard`), then keeps its rows: the adversarial
examples equal the single-process ones. Each rank attacks its slice with the unwrapped model (no gradient all-reduce
during attack steps); the training step's gradients are all-reduced once by DistributedDataParallel. Evaluation
counts (correct, n) are summed over ranks, so accuracies are exact.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from roli.config import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    """Where a rank's local batch sits in the global batch: rows [start, start + local) of `size` rows."""

    start: int
    size: int


@dataclass(frozen=True)
class World:
    """This process's place in the job; `World()` is the single-process case."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0, the one process that writes the run's files (checkpoints, metrics, results)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.size > 1


def world() -> World:
    """The current job's world (initialised process group), else the single-process world."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World()


def launched_by_torchrun() -> bool:
    """Whether torchrun started this process as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str = "auto", timeout_s: float = 1800) -> tuple[World, torch.device]:
    """Join the process group torchrun describes (env RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) once; returns
    this rank's world and device: cuda:LOCAL_RANK with NCCL when CUDA is used, else CPU with gloo; in one process,
    `pick_device(device)`."""
    from roli.device import pick_device

    single = pick_device(device)  # `cuda` without a GPU: a clear DeviceError
    use_cuda = single.type == "cuda"
    if launched_by_torchrun() and not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
        log.info("joined process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(),
                 dist.get_backend())
    w = world()
    return w, torch.device("cuda", w.local_rank) if use_cuda and w.distributed else single


def global_batches(n: int, batch_size: int, *, shuffle: bool, seed: int) -> list[list[int]]:
    """The global batches of a single-process DataLoader(shuffle, generator=Generator().manual_seed(seed)): the same
    order (the DataLoader draws one base seed from the generator before its sampler's permutation)."""
    if not shuffle:
        order = list(range(n))
    else:
        gen = torch.Generator().manual_seed(seed)
        torch.empty((), dtype=torch.int64).random_(generator=gen)  # the DataLoader's base-seed draw
        order = torch.randperm(n, generator=gen).tolist()
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def local_slice(size: int, w: World) -> tuple[int, int]:
    """Rank `w.rank`'s contiguous [start, stop) of a global batch of `size` rows (sizes differ by at most 1)."""
    base, extra = divmod(size, w.size)
    start = w.rank * base + min(w.rank, extra)
    return start, start + base + (1 if w.rank < extra else 0)


class ShardedBatches(Sampler[list[int]]):
    """Yields this rank's slice of every global batch; `shards` tells where each slice sits (for the attack)."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, seed: int, w: World) -> None:
        self.batches: list[list[int]] = []
        self.shards: list[Shard] = []
        for batch in global_batches(n, batch_size, shuffle=shuffle, seed=seed):
            start, stop = local_slice(len(batch), w)
            if stop > start:  # a last batch smaller than the world gives some ranks nothing
                self.batches.append(batch[start:stop])
                self.shards.append(Shard(start, len(batch)))

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def sharded_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, num_workers: int = 0,
                   pin_memory: bool = False, w: World | None = None) -> DataLoader:
    """A DataLoader over this rank's slices of the global batches; `loader.batch_sampler.shards` per batch."""
    from roli.data.base import Loader  # workers start when iterated and stop at once (see Loader)

    sampler = ShardedBatches(len(dataset), batch_size, shuffle=shuffle, seed=seed, w=w or world())
    return Loader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory)


def check_batch(batch_size: int, w: World) -> None:
    """The configured batch is global: each rank takes batch / world size."""
    if batch_size % w.size:
        raise ConfigError(f"data.batch_size {batch_size} does not divide over {w.size} processes; the batch is "
                          f"global (each rank takes batch / world size): use a multiple of {w.size}")


def sum_over_ranks(values: Sequence[float], device: torch.device | None = None) -> list[float]:
    """Element-wise sum over ranks (exact for counts: float64)."""
    if not world().distributed:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank (one rank stopping alone would leave the others waiting)."""
    ok = torch.isfinite(loss.detach()).all()
    if world().distributed:
        flag = ok.to(torch.float32).reshape(1)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())
    return bool(ok)


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (e.g. a decision only rank 0 can take, such as which stage-1 run to use)."""
    if not world().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(items: list) -> list:
    """Every rank's `items` concatenated (in rank order), on every rank."""
    if not world().distributed:
        return list(items)
    out: list = [None] * world().size
    dist.all_gather_object(out, list(items))
    return [x for part in out for x in part]


def barrier() -> None:
    """Wait for every rank (a no-op in one process)."""
    if world().distributed:
        dist.barrier()


def data_parallel(model: torch.nn.Module, cfg, device: torch.device) -> torch.nn.Module:
    """The module the training step runs: DistributedDataParallel over ranks (gradients all-reduced once per step),
    or `model` itself in one process. `run.sync_bn` turns trainable BatchNorm into SyncBatchNorm first."""
    if not world().distributed or not any(p.requires_grad for p in model.parameters()):
        return model
    if cfg.run.sync_bn:
        model.net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.net)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
