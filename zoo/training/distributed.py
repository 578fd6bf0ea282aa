"""``torch.distributed`` setup for runs under ``torchrun``: gloo on CPU, NCCL on CUDA.

The trainer never launches processes itself: ``torchrun --nproc_per_node=N`` starts them and sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup` reads them.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank, world size, device and backend (None when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """``auto``/None -> CUDA when available else CPU; plain ``cuda`` under torchrun -> ``cuda:LOCAL_RANK``."""
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def setup(device: str | None = None) -> DistContext:
    """Initialise the process group when launched by torchrun (world size > 1); else a single process."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistContext(device=resolve_device(device))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = resolve_device(device, local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local_rank, dev, backend)


def teardown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def collective_device(ctx: DistContext) -> torch.device:
    """Tensors in collectives must live on CUDA for NCCL and on CPU for gloo."""
    return ctx.device if ctx.backend == "nccl" else torch.device("cpu")


def all_max(ctx: DistContext, values: list[float]) -> list[float]:
    """Element-wise maximum of small flag vectors over all ranks (identity when not distributed)."""
    if not ctx.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=collective_device(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def gather_bytes(ctx: DistContext, tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's copy of a uint8 tensor of the same length (e.g. an RNG state), on CPU."""
    tensor = tensor.contiguous()
    if not ctx.distributed:
        return [tensor.cpu()]
    local = tensor.to(collective_device(ctx))
    parts = [torch.empty_like(local) for _ in range(ctx.world_size)]
    dist.all_gather(parts, local)
    return [p.cpu() for p in parts]


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()
