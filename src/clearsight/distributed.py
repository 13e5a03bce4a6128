"""Data-parallel training across processes started by `torchrun` (gloo on CPU, nccl on CUDA).

Gradients are averaged with one coalesced all-reduce after each backward pass instead of wrapping the model in
DistributedDataParallel: DDP's reducer does not support double backpropagation (`torch.autograd.grad` with
`create_graph=True`) nor the repeated forward passes of an attack inside a training step, and half of
clearsight's objectives need one or the other. Averaging gradients of identical replicas is what DDP computes.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

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


def join(device: torch.device, *, timeout: datetime.timedelta | None = None) -> World:
    """Join the process group torchrun describes in the environment; a single process is a world of one.

    `timeout` bounds how long a collective waits for the other ranks (torch's default: 30 minutes); a study
    whose rank 0 evaluates while the others wait for the next cell passes a longer one.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or not dist.is_available():
        return World()
    owns = False
    if device.type == "cuda":  # this process's GPU for nccl's communicator and every collective's buffers
        torch.cuda.set_device(local_device(device))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if timeout is None:
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, timeout=timeout)
        owns = True
    return World(dist.get_rank(), dist.get_world_size(), owns)


def local_device(device: torch.device) -> torch.device:
    """A bare "cuda" under torchrun means this process's GPU, cuda:LOCAL_RANK (else every rank would share
    cuda:0); any other device as given."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def leave(world: World, *, wait: bool = True) -> None:
    """Tear down the group if `join` set it up: after every rank has come here (`wait`; a rank destroying it
    while another still talks to it aborts the process), or at once on an error (a barrier then would hang on
    ranks that are still training; torchrun stops them when this process exits)."""
    if world.owns_group and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


@contextmanager
def joined(device: torch.device, *, timeout: datetime.timedelta | None = None) -> Iterator[World]:
    """`join` for the block, then `leave` (without waiting for the others if the block raised)."""
    world = join(device, timeout=timeout)
    try:
        yield world
    except BaseException:
        leave(world, wait=False)
        raise
    leave(world)


def broadcast_state(model: nn.Module, world: World) -> None:
    """Copy rank 0's parameters and buffers to every rank (identical replicas)."""
    if world.size > 1:
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)


def average_gradients(params: list[nn.Parameter], world: World, *, failed: bool = False) -> int:
    """Replace each gradient by its mean over ranks (missing gradients count as zero). Returns how many ranks
    passed `failed` (their loss diverged; then the gradients are left as they were): the flag rides in the same
    all-reduce, so agreeing costs no collective."""
    if world.size <= 1:
        return int(failed)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flag = torch.tensor([float(failed)], dtype=grads[0].dtype, device=grads[0].device)
    flat = torch.cat([*(g.reshape(-1) for g in grads), flag])
    dist.all_reduce(flat)
    if bool(flat[-1] > 0):
        return round(float(flat[-1]))
    flat /= world.size
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n
    return 0


def gather(obj: object, world: World) -> list[object]:
    """Every rank's `obj`, ordered by rank."""
    if world.size <= 1:
        return [obj]
    out: list[object] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, world: World) -> Any:
    """Rank 0's `obj` (plain JSON data) on every rank; the others pass anything, e.g. None. Sent as JSON text in a
    byte tensor, not pickled (torch's broadcast_object_list unpickles what it receives)."""
    if world.size <= 1:
        return obj
    # nccl moves only CUDA tensors
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    data = json.dumps(obj).encode() if world.is_main else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    buffer = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device) if world.is_main else
              torch.empty(int(size), dtype=torch.uint8, device=device))
    dist.broadcast(buffer, src=0)
    return obj if world.is_main else json.loads(buffer.cpu().numpy().tobytes().decode())


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()
