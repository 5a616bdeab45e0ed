"""The generation job: text prompts -> mp4 videos, from Python (``flex generate`` is a thin front end).

    settings = GenerationSettings(dit="self_forcing_dmd.pt", wan_dir="Wan2.1-T2V-1.3B-Diffusers",
                                  prompts=("a red fox runs through fresh snow",), out="fox.mp4", seconds=30)
    results = generate_videos(settings)

:class:`flex.jobs.settings.GenerationSettings` checks everything that can be checked without
loading a model; :func:`generate_videos` then loads the run once (:func:`flex.jobs.runtime.load_runtime`)
and makes each video chunk by chunk, decoded and written chunk by chunk (constant memory in the
video length).

Videos are written atomically (see :mod:`flex.video`) with the record of what made them
(:mod:`flex.jobs.records`): a rerun skips exactly the videos finished with the same settings
(``overwrite=True`` redoes them); a changed setting, seed or prompt regenerates. Temporary files
that killed runs left next to an output are removed when the job starts (only those of this
job's outputs).
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..errors import SettingsError
from .inputs import FPS, is_int
from .runtime import load_runtime
from .settings import GenerationSettings

logger = logging.getLogger(__name__)


@dataclass
class VideoResult:
    """One video of a job: where it is and how long it took (``skipped``: it was already done)."""

    index: int  # position of its prompt in the settings
    path: Path
    prompt: str
    seed: int
    frames: int  # pixel frames
    latent_frames: int
    chunks: int
    seconds: float  # wall time of generation + VAE decode + encoding; 0 when skipped
    peak_memory: str
    skipped: bool = False

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        if self.skipped:
            return f"{self.path}: already generated with these settings (skipped)"
        return (f"{self.path}: {self.frames} frames ({self.frames / FPS:.2f} s at {FPS} fps, {self.latent_frames} "
                f"latent frames, {self.chunks} chunks) in {self.seconds:.1f} s = {self.fps:.2f} FPS "
                f"(generation + VAE decode + encoding), {self.peak_memory}")


def _peak_memory(device) -> str:
    import torch

    if device.type == "cuda":
        return f"peak CUDA memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    try:
        import resource
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return f"peak RSS {kib / 2**20:.2f} GiB"
    except (ImportError, AttributeError):
        return "peak memory n/a"


def generate_videos(
    settings: GenerationSettings,
    *,
    log: Callable[[str], None] | None = None,
    on_video: Callable[[VideoResult], None] | None = None,
    progress: bool = True,
    indices: Sequence[int] | None = None,
    parallel=None,
    write: bool = True,
) -> list[VideoResult]:
    """Run the job: one mp4 per prompt of ``settings`` (see the module docstring). Returns the results.

    log       receives one line per step (default: the ``flex.jobs.generate`` logger at INFO)
    on_video  called with each video's result as soon as it is finished (or skipped)
    progress  a tqdm bar per video on stderr
    indices   only these prompts (positions in ``settings.prompts``; seeds and file names stay
              those of the whole list), e.g. one share of the prompts per process; default all
    parallel  a :class:`flex.sequence_parallel.ParallelPlan`: every rank of its group runs this call
              with the same ``indices`` and makes the same videos together (sequence parallel)
    write     False on the group's other ranks: they take part in every stream but decode and
              write nothing, and make exactly ``indices`` (the writing rank decided what is left)

    Errors of the models or files raise (CheckpointError, OSError, ...); KeyboardInterrupt and
    :class:`flex.jobs.interrupt.Terminated` leave no partial video (the previous file of that name, if any, stays).
    """
    from ..decoders import pixel_frames
    from ..video import remove_stale_parts

    log = log or logger.info
    cfg, frames = settings.flex, settings.latent_frames
    device = settings.torch_device
    results: list[VideoResult] = []

    def done(result: VideoResult) -> None:
        results.append(result)
        if on_video is not None:
            on_video(result)

    n = len(settings.prompts)
    wanted = list(range(n)) if indices is None else list(dict.fromkeys(indices))
    if any(not is_int(i) or not 0 <= i < n for i in wanted):
        raise SettingsError("indices", f"must be positions in the {n} prompts, got {indices!r}")
    if not isinstance(write, bool):
        raise SettingsError("write", f"must be a bool, got {write!r}")
    if write:
        for i in wanted:
            for part in remove_stale_parts(settings.outputs[i]):
                log(f"removed {part.name}, left by an earlier run that was killed")
    todo = [i for i in wanted if not write or settings.overwrite or not settings.is_done(i)]
    n_chunks = frames // cfg.chunk_frames
    todo_set = set(todo)
    for i in wanted:
        if i not in todo_set:
            done(VideoResult(i, settings.outputs[i], settings.prompts[i], settings.seed + i, pixel_frames(frames),
                             frames, n_chunks, 0.0, "", skipped=True))
    if not todo:
        log(f"all {len(wanted)} video(s) are already generated with these settings (overwrite to redo them)")
        return results
    position = {i: k for k, i in enumerate(wanted)}
    if len(todo) < len(wanted):
        log(f"{len(wanted) - len(todo)} video(s) already generated with these settings are skipped")

    from tqdm.auto import tqdm

    from ..decoders import DecodeWorker
    from ..video import VideoWriter

    log(f"{len(todo)} prompt(s); {settings.frames_how}; {pixel_frames(frames)} frames "
        f"= {pixel_frames(frames) / FPS:.2f} s at {settings.width}x{settings.height}; device {device}, "
        f"{settings.dtype}")
    log(f"FLEX: rope {cfg.strategy} (alpha {cfg.alpha:g}, beta {cfg.beta:g}, L_train {cfg.l_train}), "
        f"rho {cfg.rho:g}, sink {cfg.sink_frames} + window {cfg.window_frames} frames, chunk {cfg.chunk_frames}")
    switches = {}  # prompt i -> its later prompts [(first latent frame, text)]
    if settings.schedules is not None:
        from ..prompt_schedule import switch_frames

        for i in todo:
            if settings.schedules[i] is not None:
                switches[i] = switch_frames(settings.schedules[i], FPS, frames)[1:]
    needed = [settings.prompts[i] for i in todo] + [e[1] for i in todo for e in switches.get(i, ())]
    runtime = load_runtime(settings, prompts=list(dict.fromkeys(needed)), decoder=write, parallel=parallel,
                           log=log)
    vae = runtime.decoder

    for k, i in enumerate(todo):
        out = settings.outputs[i]
        later = [(f, runtime.encode(p), *mode) for f, p, *mode in switches.get(i, ())]  # mode: per switch
        start = time.perf_counter()
        bar = tqdm(total=n_chunks, unit="chunk", desc=f"[{k + 1}/{len(todo)}] {out.name}",
                   disable=not progress, file=sys.stderr)
        chunks = runtime.open_stream(runtime.encode(settings.prompts[i]), settings.seed + i, switches=later)
        try:
            if not write:  # a sequence-parallel rank that only helps: the writing rank decodes
                for _ in chunks:
                    bar.update(1)
                continue
            # The VAE decodes chunk k in a worker thread while the DiT makes chunk k + 1.
            with VideoWriter(out, fps=FPS, crf=settings.crf, comment=settings.video_comment(i)) as writer, \
                    DecodeWorker(vae.stream().decode, writer.append) as decoder:
                for latents in chunks:
                    decoder.submit(latents)
                    elapsed = time.perf_counter() - start
                    bar.set_postfix(frames=writer.frames_written, fps=f"{writer.frames_written / elapsed:.2f}")
                    bar.update(1)
        finally:
            bar.close()
        done(VideoResult(i, out, settings.prompts[i], settings.seed + i, writer.frames_written, frames, n_chunks,
                         time.perf_counter() - start, _peak_memory(device)))
    return sorted(results, key=lambda r: position[r.index])


__all__ = ["VideoResult", "generate_videos"]
