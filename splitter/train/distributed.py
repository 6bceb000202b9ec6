"""Process-group plumbing for fitting under ``torchrun`` (``WORLD_SIZE`` > 1).

gloo on CPU, nccl on GPU; one process per device. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from splitter.errors import ConfigError

__all__ = ["Context", "setup", "broadcast_state"]


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def setup(device: str | torch.device | None = None) -> Context:
    """The rank, world size and device of this process; joins the group ``torchrun`` set up.

    ``device``: ``None``/``"auto"`` picks ``cuda:LOCAL_RANK`` when CUDA is there, else CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device in (None, "auto"):
        dev = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ConfigError(f"device={device!r} is not a torch device; use 'cpu', 'cuda', "
                              f"'cuda:N' or 'auto'") from e
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} but no CUDA GPU is visible here "
                              f"(torch.cuda.is_available() is False); use device='cpu', or "
                              f"'auto' to take a GPU only where there is one")
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local}")
    if world <= 1:
        return Context(0, 1, dev, False)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
        owns = True
    return Context(dist.get_rank(), dist.get_world_size(), dev, owns)


def broadcast_state(module: nn.Module, ctx: Context) -> None:
    """Make every rank hold rank 0's parameters and buffers (BatchNorm running stats drift
    apart under DDP, which only broadcasts buffers at the start of each forward)."""
    if not ctx.distributed:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.numel():
                dist.broadcast(t.data, src=0)
