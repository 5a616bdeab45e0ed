"""The generation job under ``torchrun``: prompt-parallel generation over the ranks,
optionally in sequence-parallel groups that make one video together.

    torchrun --standalone --nproc-per-node 8 -m flex generate --prompts prompts.txt --out videos/ ...
    torchrun --standalone --nproc-per-node 8 -m flex generate --sequence-parallel 4 --prompts ...  # 2 groups of 4

Every rank takes an equal share of the unfinished videos (see :mod:`flex.jobs.distributed.work`)
on its own device, records each finished video in ``<out>/manifest.jsonl`` and meets the
others only at the start and the end; rank 0 logs the progress of all of them. A rerun, or a
torchrun restart (``--max-restarts``), redoes only the videos not finished, whatever the
number of ranks. The output folder must be one the ranks share (one node, or a shared file
system across nodes).
"""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Callable

import torch.distributed as dist

from .launch import Launch, close_process_group, init_process_group, rank_device, sequence_groups
from ...errors import SettingsError
from ...sequence_parallel import ParallelPlan
from .work import MANIFEST_NAME, Manifest, Progress, generation_items, pending_items, share, stderr_log


def world_size() -> int:
    """WORLD_SIZE of the torchrun launch (1 when not launched by torchrun)."""
    return Launch.from_env().world_size


def wants_distributed(args=None) -> bool:
    """Whether ``flex generate`` should call :func:`run_generate` rather than generate_videos."""
    return world_size() > 1 or getattr(args, "sequence_parallel", 1) != 1


def manifest_path(settings) -> Path:
    out = Path(settings.out)
    return (out.parent if out.suffix.lower() == ".mp4" else out) / MANIFEST_NAME


def check_sequence_parallel(size, launch: Launch, settings=None) -> int:
    """The ``--sequence-parallel`` rules of the generation job; returns the group size."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise SettingsError("sequence_parallel", f"must be an int >= 1, got {size!r}")
    if launch.world_size % size:
        raise SettingsError("sequence_parallel", f"({size}) must divide the number of processes (WORLD_SIZE = "
                                                 f"{launch.world_size}); start it with torchrun --nproc-per-node N")
    if size > 1 and settings is not None:
        from ...sequence_parallel import check_step_options

        try:
            check_step_options(settings.compile, settings.cuda_graphs)
        except SettingsError as err:  # a rule of the pair: named here by the flag that asked for it
            raise SettingsError("sequence_parallel", err.render(err.fields), leads=False) from None
    return size


def run_generate(settings, args=None, *, log: Callable[[str], None] | None = None,
                 on_video: Callable | None = None, progress_interval_s: float = 10.0):
    """Prompt-parallel :func:`flex.jobs.generate.generate_videos` over torchrun's ranks.

    Returns this rank's results (videos made or found finished). Raises RuntimeError on rank 0
    when another rank did not reach the end (its unfinished videos are made by a rerun).
    """
    from ..generate import generate_videos

    log = log or stderr_log
    launch = Launch.from_env()
    size = check_sequence_parallel(getattr(args, "sequence_parallel", 1), launch, settings)
    device = rank_device(launch, settings.device)
    if str(device) != settings.device:
        settings = dataclasses.replace(settings, device=str(device))  # same hash: only the type counts
    joined = init_process_group(launch, device)
    prefix = f"rank {launch.rank}/{launch.world_size}: " if launch.world_size > 1 else ""

    def rank_log(msg: str) -> None:
        log(prefix + msg)

    try:
        # Groups of `size` ranks make one video together; the groups split the videos.
        parallel, writer = None, True
        group_index, n_groups = launch.rank, launch.world_size
        if size > 1:
            group, group_index, n_groups = sequence_groups(launch, size)
            parallel = ParallelPlan.from_group(group)
            writer = parallel.rank == 0  # the group's first rank decodes, writes and records
        items = generation_items(settings)
        manifest = Manifest(manifest_path(settings))
        # Meeting 1: rank 0 decides what is left, so every rank splits the same list.
        todo = None
        if launch.is_main:
            todo = [item.index for item in pending_items(items, manifest, lambda it: settings.is_done(it.index),
                                                         settings.overwrite)]
        if joined:
            box = [todo]
            dist.broadcast_object_list(box, src=0)
            todo = box[0]
        mine = share([items[i] for i in todo], group_index, n_groups)
        if launch.is_main:
            how = f"{n_groups} group(s) of {size} rank(s)" if size > 1 else f"{launch.world_size} rank(s)"
            rank_log(f"{len(items) - len(todo)} of {len(items)} videos finished before; {len(todo)} left, "
                     f"split over {how} (this one takes {len(mine)}), manifest {manifest.path}")
        by_index = {item.index: item for item in mine}

        def record(result) -> None:
            item = by_index[result.index]
            if not result.skipped or item.key not in manifest.finished_keys():
                manifest.append(item, launch.rank, None if result.skipped else round(result.seconds, 3))
            if on_video is not None:
                on_video(result)

        results = []
        # Rank 0 shows every rank's progress until all have reached the end (the barrier).
        shown = Progress(manifest, items, len(items) - len(todo), rank_log, progress_interval_s) \
            if launch.is_main and n_groups > 1 else contextlib.nullcontext()
        with shown:
            if mine:
                run = dict(log=rank_log if writer else (lambda msg: None), on_video=record if writer else None,
                           indices=[item.index for item in mine], parallel=parallel, write=writer)
                results = generate_videos(settings, progress=launch.is_main and n_groups == 1, **run)
            # Meeting 2: the end. A rank that died makes it fail (gloo: its connection closed).
            if joined:
                try:
                    dist.barrier()
                except RuntimeError as err:
                    if launch.is_main:
                        raise RuntimeError(f"a rank did not finish its share ({err}); rerun the same command "
                                           f"to make the missing videos (finished ones are kept)") from None
                    raise
        if launch.is_main:
            done = len({i.key for i in items} & manifest.finished_keys())
            rank_log(f"{done}/{len(items)} videos finished")
        return results
    finally:
        close_process_group()


__all__ = ["check_sequence_parallel", "manifest_path", "run_generate", "wants_distributed", "world_size"]
