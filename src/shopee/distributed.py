"""Data-parallel training over processes launched by torchrun (``torch.distributed``).

``torchrun --nproc_per_node N exp/exp001.py --fold 0`` starts N copies of the experiment; each
reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment (``Dist.from_env``) and
joins one process group (process k on ``cuda:k`` of its node). NCCL serves CUDA tensors only, so
on GPUs the group maps each device type to its backend (``backend_for``): CUDA tensors (the
per-step losses, DDP's gradients) go over NCCL, CPU ones (Python objects, barriers) over gloo; on
CPUs gloo serves all. Multi-node runs use torchrun's own rendezvous (``--nnodes``,
``--rdzv-endpoint``).

- **The epoch order is global**: every rank draws the same epoch order (seeded by seed and
  epoch, as in one process) and takes its slice of each global batch (``shard``): whatever N, a
  step sees the same rows as a one-process step with the same global batch. Sample weights and
  balanced resampling shape that global order, so they hold whatever N.
- **Embedding** is sharded in contiguous row blocks (``row_block``) and gathered back in the
  original order, padding removed (``gather_rows``).
- Only rank 0 writes outputs, logs and checkpoints; a rank that fails makes the others stop.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from shopee.config import ConfigError

TIMEOUT = datetime.timedelta(minutes=30)  # a collective waits this long for a rank that is gone


def backend_for(cuda: bool) -> str:
    """The process group's backends by device type: NCCL raises "No backend type associated with
    device type cpu" on a CPU tensor, and object collectives and barriers pickle to CPU tensors,
    so a GPU group serves the CPU through gloo beside NCCL."""
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def convert_sync_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """BatchNorm layers computing their statistics over every process's rows (``sync_bn``).

    timm's conversion, not torch's: ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` turns timm's
    ``BatchNormAct2d`` (BatchNorm with its activation and drop inside) into a plain SyncBatchNorm,
    so the network would train without those activations and then embed with them."""
    from timm.layers import convert_sync_batchnorm as timm_convert

    return timm_convert(model)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1  # processes of this run on this machine

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Dist:
        """The process group torchrun set up (joined here), or a single process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        if not dist.is_initialized():
            cuda = torch.cuda.is_available()
            if cuda:
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend_for(cuda), timeout=TIMEOUT)
        return cls(rank, world, local_rank, local_world)

    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def per_process(self, global_batch: int, pairs: bool = False) -> int:
        """The batch each process takes of a global batch; the global batch must split evenly, and
        with ``pairs`` (head "neg_sampling": batches of two rows of one group) into even slices, so
        that no pair is torn apart (a row whose positive went to another process has none)."""
        step = 2 * self.world if pairs else self.world
        if global_batch % step:
            why = "into even per-process batches (head 'neg_sampling' takes pairs)" if pairs else ""
            raise ConfigError(
                f"batch_size={global_batch} (the global batch) does not split over {self.world} processes"
                f"{' ' + why if why else ''}; use a multiple of {step}"
            )
        return global_batch // self.world

    def shard(self, indices: np.ndarray, global_batch: int) -> np.ndarray:
        """This rank's rows of each full global batch of ``indices``, in order (see module doc)."""
        per = self.per_process(global_batch)
        steps = len(indices) // global_batch
        batches = np.asarray(indices[: steps * global_batch]).reshape(steps, global_batch)
        return batches[:, self.rank * per : (self.rank + 1) * per].reshape(-1)

    def row_block(self, n: int) -> np.ndarray:
        """This rank's contiguous block of ``n`` rows (every block ceil(n / world) long, the last
        padded by repeating its last row, so that gathering is a plain concatenation)."""
        size = -(-n // self.world)
        rows = np.arange(self.rank * size, (self.rank + 1) * size)
        return np.minimum(rows, max(n - 1, 0))

    def gather_rows(self, block: np.ndarray, n: int) -> np.ndarray:
        """Every rank's ``row_block`` results, concatenated in rank order, padding removed."""
        if not self.enabled:
            return block
        parts: list[np.ndarray | None] = [None] * self.world
        dist.all_gather_object(parts, block)
        return np.concatenate(parts)[:n]

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise mean of ``values`` over ranks, reduced on the device they live on (one
        collective for a whole epoch's losses); a one-process value as it is."""
        if not self.enabled:
            return values
        total = values.detach().to(torch.float64).clone()
        dist.all_reduce(total)
        return total / self.world

    def same_everywhere(self, value: float) -> bool:
        """Whether every rank holds the same number (a checksum of the weights, say)."""
        if not self.enabled:
            return True
        values: list[float | None] = [None] * self.world
        dist.all_gather_object(values, value)
        return all(v == values[0] for v in values)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
