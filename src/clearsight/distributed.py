"""Data-parallel training across processes started by `torchrun` (gloo on CPU, nccl on CUDA).

Gradients are averaged with one coalesced all-reduce after each backward pass instead of wrapping the model in
DistributedDataParallel: DDP's reducer does not support double backpropagation (`torch.autograd.grad` with
`create_graph=True`) nor the repeated forward passes of an attack inside a training step, and half of
clearsight's objectives need one or the other. Averaging gradients of identical replicas is what DDP computes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    owns_group: bool = False  # we initialized the process group, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def join(device: torch.device) -> World:
    """Join the process group torchrun describes in the environment; a single process is a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or not dist.is_available():
        return World()
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owns = True
    return World(dist.get_rank(), dist.get_world_size(), owns)


def leave(world: World) -> None:
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_state(model: nn.Module, world: World) -> None:
    """Copy rank 0's parameters and buffers to every rank (identical replicas)."""
    if world.size > 1:
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)


def average_gradients(params: list[nn.Parameter], world: World) -> None:
    """Replace each gradient by its mean over ranks (missing gradients count as zero)."""
    if world.size <= 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def gather(obj: object, world: World) -> list[object]:
    """Every rank's `obj`, ordered by rank."""
    if world.size <= 1:
        return [obj]
    out: list[object] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()
