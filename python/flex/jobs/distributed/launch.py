"""This process's place in a ``torchrun`` launch: torchrun's environment, the process group
(gloo on the CPU, nccl on CUDA) and the device of each rank (``cuda:LOCAL_RANK``, or the CPU).

torchrun (single node: ``--standalone --nproc-per-node N``; several nodes: ``--nnodes M
--nproc-per-node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT --rdzv-id JOB``) sets RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT; a process started
without them is a world of one and needs no process group.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping

import torch
import torch.distributed as dist

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class Launch:
    """rank / world_size over all nodes, local_rank / local_world_size on this node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Launch":
        """torchrun's variables (a world of one when WORLD_SIZE is not set)."""
        env = os.environ if env is None else env
        if "WORLD_SIZE" not in env:
            return cls()
        values = {}
        missing = {"RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": env["WORLD_SIZE"]}  # one node
        for name in ENV:
            text = env.get(name, missing.get(name))
            try:
                values[name.lower()] = int(text)
            except ValueError:
                raise ValueError(f"environment variable {name} must be an int, got {text!r}") from None
        launch = cls(**values)
        if launch.world_size < 1 or not 0 <= launch.rank < launch.world_size:
            raise ValueError(f"RANK ({launch.rank}) must lie in [0, WORLD_SIZE = {launch.world_size})")
        if launch.local_world_size < 1 or not 0 <= launch.local_rank < launch.local_world_size:
            raise ValueError(f"LOCAL_RANK ({launch.local_rank}) must lie in [0, LOCAL_WORLD_SIZE = "
                             f"{launch.local_world_size})")
        return launch

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def rank_device(launch: Launch, device: str = "auto") -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for "auto" / "cuda" when CUDA is there,
    else the CPU; an explicit "cpu" or "cuda:K" is kept."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if device in ("auto", "cuda"):
        count = torch.cuda.device_count()
        if launch.local_rank >= count:
            raise ValueError(f"LOCAL_RANK {launch.local_rank} has no GPU: this node has {count} "
                             f"(use torchrun --nproc-per-node {count} or fewer)")
        return torch.device("cuda", launch.local_rank)
    return torch.device(device)


def init_process_group(launch: Launch, device: torch.device, timeout_s: float = 1800.0) -> bool:
    """Join torchrun's process group (gloo for the CPU, nccl for CUDA); False in a world of one.

    The rendezvous (MASTER_ADDR / MASTER_PORT) is torchrun's; ``timeout_s`` bounds how long a
    collective waits for a rank that is gone."""
    if launch.world_size == 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=timeout_s)
    store, _, _ = next(dist.rendezvous("env://", launch.rank, launch.world_size, timeout=timeout))
    # After a torchrun restart (--max-restarts) the store still holds the addresses the dead
    # ranks published: a prefix per restart keeps the new ranks from connecting to them.
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.PrefixStore(f"flex-restart-{restart}", store)
    dist.init_process_group(backend, store=store, rank=launch.rank, world_size=launch.world_size, timeout=timeout)
    return True


def close_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def sequence_groups(launch: Launch, size: int):
    """Split the world into consecutive groups of ``size`` ranks for sequence parallel.

    Returns (this rank's group, its index, the number of groups): the groups generate
    different videos (prompt parallel), the ranks of one group one video together."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"sequence parallel size must be an int >= 1, got {size!r}")
    if launch.world_size % size:
        raise ValueError(f"sequence parallel size {size} must divide the number of processes "
                         f"(WORLD_SIZE = {launch.world_size})")
    n_groups = launch.world_size // size
    mine = None
    for g in range(n_groups):  # every rank creates every group, in the same order
        ranks = list(range(g * size, (g + 1) * size))
        group = dist.new_group(ranks) if launch.world_size > 1 else None
        if launch.rank in ranks:
            mine = group
    return mine, launch.rank // size, n_groups


__all__ = ["Launch", "close_process_group", "init_process_group", "rank_device", "sequence_groups"]
