"""Checks of a job's inputs that need no model: prompt files, lengths, output paths and folders,
the Wan folder, the device and the step list. Each raises a :class:`flex.errors.SettingsError`
naming the setting, so a bad setting fails in a second, not after minutes of loading."""
from __future__ import annotations

import math
import re
import sys
import tempfile
from numbers import Integral, Real
from pathlib import Path
from typing import Sequence

from ..errors import SettingsError

FPS = 16  # Wan2.1 / Self Forcing frame rate
SPATIAL = 16  # pixels per DiT token side: VAE 8x times patch 2
MAX_SIDE = 4096  # pixels; far beyond what Wan2.1 was trained for (832 x 480)
MAX_LATENT_FRAMES = 10**6  # ~69 hours of video at 16 fps
MAX_PROMPTS = 10**6
MAX_STEPS = 1000  # entries of the denoising step list
SEED_RANGE = (-(2**63), 2**64)  # what torch.Generator.manual_seed accepts, [low, high)
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
WEIGHTS = {"auto": None, "ema": True, "generator": False}  # -> load_dit(use_ema=...)
COMPILE = (False, True, "frozen")
MODULATIONS = ("fp32", "bf16")  # residual stream / modulation precision (CausalWanModel.fp32_modulation)
NOISES = ("ans", "upstream")



def read_prompt_file(path) -> tuple[str, ...]:
    """The prompts of a UTF-8 text file, one per line (blank lines skipped).

    ``path`` may be anything readable: a file, a pipe (``<(...)``), ``/dev/stdin``, or ``"-"``
    for standard input.
    """
    name = str(path)
    try:
        if name == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except FileNotFoundError:
        raise SettingsError("prompts", f"file {name!r} does not exist") from None
    except IsADirectoryError:
        raise SettingsError("prompts", f"file {name!r} is a folder, not a text file") from None
    except OSError as err:
        raise SettingsError("prompts", f"file {name!r} cannot be read: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SettingsError("prompts", f"file {name!r} is not UTF-8 text: {err}") from None
    prompts = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not prompts:
        raise SettingsError("prompts", f"file {name!r} has no prompts (only empty lines)")
    return prompts


def latent_frames(frames: int | None, seconds: float | None, chunk: int) -> tuple[int, str]:
    """(latent frames, sentence saying how they were chosen) from a frame count or a duration.

    ``frames`` is rounded up to whole chunks; ``seconds`` (at 16 fps; latent = (16 s + 3) / 4)
    to the nearest whole number of chunks, at least one.
    """
    if frames is not None:
        if not is_int(frames):
            raise SettingsError("frames", f"must be an int, got {frames!r}")
        if frames < 1:
            raise SettingsError("frames", f"must be >= 1, got {frames}")
        if frames > MAX_LATENT_FRAMES:
            raise SettingsError("frames", f"must be at most {MAX_LATENT_FRAMES} latent frames, got {frames}")
        n = math.ceil(frames / chunk) * chunk
        how = f"--frames {frames}" + (f" rounded up to {n} (whole chunks of {chunk})" if n != frames else "")
    else:
        if not isinstance(seconds, Real) or isinstance(seconds, bool) or not seconds > 0:
            raise SettingsError("seconds", f"must be > 0, got {seconds!r}")
        max_seconds = (4 * MAX_LATENT_FRAMES - 3) / FPS
        if not seconds <= max_seconds:  # also inf and nan
            raise SettingsError("seconds", f"must be at most {max_seconds:g} "
                                           f"({MAX_LATENT_FRAMES} latent frames), got {seconds!r}")
        exact = (seconds * FPS + 3) / 4
        n = max(1, round(exact / chunk)) * chunk
        how = f"--seconds {seconds:g} -> {n} latent frames ({n // chunk} chunks of {chunk})"
    if n > MAX_LATENT_FRAMES:
        which = "frames" if frames is not None else "seconds"
        raise SettingsError(which, f"gives {n} latent frames in whole chunks of {chunk}, more than {MAX_LATENT_FRAMES}")
    return n, how


def slug(text: str, max_len: int = 60) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:max_len].rstrip("-") or "video"


def output_paths(out, prompts: Sequence[str]) -> tuple[Path, ...]:
    """One mp4 path per prompt: ``out`` itself (a .mp4 name, one prompt) or ``out/NNN-<prompt>.mp4``."""
    out = Path(out)
    if out.suffix.lower() == ".mp4":
        if len(prompts) > 1:
            raise SettingsError("out", f"{str(out)!r} is one file but there are {len(prompts)} prompts: "
                                       f"give a folder")
        if out.is_dir():
            raise SettingsError("out", f"{str(out)!r} is an existing folder, not a file")
        if out.exists() and not out.is_file():
            raise SettingsError("out", f"{str(out)!r} exists and is not a regular file")
        return (out,)
    if out.suffix and not out.is_dir():
        raise SettingsError("out", f"must be a .mp4 file or a folder, got {str(out)!r}")
    if out.exists() and not out.is_dir():
        raise SettingsError("out", f"{str(out)!r} exists and is not a folder")
    return tuple(out / f"{i:03d}-{slug(p)}.mp4" for i, p in enumerate(prompts))


def check_writable_folder(folder: Path, setting: str = "out") -> None:
    """The folder exists and accepts new files, or can be created: checked without creating it."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise SettingsError(setting, f"{str(folder)!r} cannot be created: {str(existing)!r} is a file, not a folder")
    try:  # the real test: permissions, ACLs, read-only file systems, quotas on inodes
        with tempfile.TemporaryFile(dir=existing, prefix=".flex-write-test-"):
            pass
    except OSError as err:
        what = "written to" if existing == folder else f"created (in {str(existing)!r})"
        raise SettingsError(setting, f"{str(folder)!r} cannot be {what}: {err.strerror or err}") from None


def check_wan_dir(wan_dir) -> Path:
    """The Wan2.1 folder (text encoder, tokenizer, VAE): the original download or the Diffusers one."""
    from ..loading import check_wan_dir as folder_kind

    root = Path(wan_dir)
    try:
        folder_kind(root)
    except (FileNotFoundError, ValueError) as err:
        raise SettingsError("wan_dir", str(err), leads=False) from None
    return root


def resolve_device(name: str):
    """torch.device of ``name`` ("auto": cuda when available, else cpu); only cpu and cuda run FLEX."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise SettingsError("device", f"{name!r} is not a torch device: {err}") from None
    if device.type not in ("cpu", "cuda"):
        raise SettingsError("device", f"must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError("device", f"{name!r}: CUDA is not available on this machine (use cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SettingsError("device", f"{name!r}: only {torch.cuda.device_count()} CUDA devices")
    return device


def check_denoising_steps(steps) -> tuple[float, ...]:
    from ..schedule import FlowMatchSchedule

    steps = tuple(steps)
    if not 1 <= len(steps) <= MAX_STEPS or not all(isinstance(s, Real) and not isinstance(s, bool) for s in steps):
        raise SettingsError("denoising_steps", f"must be 1 to {MAX_STEPS} numbers, got {steps!r}")
    FlowMatchSchedule().timesteps_and_sigmas(steps)  # the schedule's own rules (range, whole steps)
    return tuple(float(s) for s in steps)


def is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


__all__ = [
    "COMPILE", "DTYPES", "FPS", "MAX_LATENT_FRAMES", "MAX_PROMPTS", "MAX_SIDE", "MAX_STEPS", "MODULATIONS", "NOISES",
    "SEED_RANGE", "SPATIAL", "WEIGHTS", "check_denoising_steps", "check_wan_dir", "check_writable_folder",
    "is_int", "latent_frames", "output_paths", "read_prompt_file", "resolve_device", "slug",
]
