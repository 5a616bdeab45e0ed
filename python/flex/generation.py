"""The generation job: text prompts -> mp4 videos, from Python (``flex generate`` is a thin front end).

    settings = GenerationSettings(dit="self_forcing_dmd.pt", wan_dir="Wan2.1-T2V-1.3B-Diffusers",
                                  prompts=("a red fox runs through fresh snow",), out="fox.mp4", seconds=30)
    results = generate_videos(settings)

:class:`GenerationSettings` checks everything that can be checked without loading a model
when it is built (arguments, files, output folders), so a bad setting fails in a second,
not after minutes of loading. A :class:`SettingsError` names the setting at fault.

:func:`generate_videos` then does the work, in the order that keeps peak GPU memory low:
the DiT weights are read (memory-mapped, on the CPU), the prompts are encoded and the text
encoder is freed, then the DiT and the VAE go to the device and each video is generated chunk
by chunk, decoded and written chunk by chunk (constant memory in the video length).

Videos are written atomically (see :mod:`flex.video`). Each video carries, in its mp4
"comment" metadata, a hash of everything that produced it (settings, prompt, seed, the
weights' file identity, the FLEX version, the encoder settings). Since the record is part of
the file that appears atomically, a video is either absent or complete with its record, and a
rerun skips exactly the videos finished with the same settings (``overwrite=True`` redoes
them); a changed setting, seed or prompt regenerates. Temporary files that killed runs left
next to an output are removed when the job starts (only those of this job's outputs).

:func:`terminate_as_interrupt` turns SIGTERM into a :class:`Terminated` exception (a
KeyboardInterrupt), so a terminated job cleans up like an interrupted one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Callable, Sequence

from .config import FlexConfig

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
RECORD_PREFIX = "flex-settings-sha256:"  # the mp4 comment of a finished video: this + its hash

logger = logging.getLogger(__name__)


class SettingsError(ValueError):
    """A setting that cannot work; ``fields`` names it (or them), ``str()`` is the whole sentence."""

    def __init__(self, fields: str | tuple[str, ...], message: str):
        self.fields = (fields,) if isinstance(fields, str) else tuple(fields)
        self.message = message  # starts with " / ".join(fields) when it is about their values
        super().__init__(message)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (see :func:`terminate_as_interrupt`)."""


@contextmanager
def terminate_as_interrupt():
    """While active (in the main thread), SIGTERM raises :class:`Terminated` like Ctrl-C raises
    KeyboardInterrupt, so ``finally`` blocks and the video writer's clean-up run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:  # None: a handler not set from Python, which cannot be put back; the default then
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


# ---------------------------------------------------------------- checks that need no model


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
        raise SettingsError("prompts", f"prompts file {name!r} does not exist") from None
    except IsADirectoryError:
        raise SettingsError("prompts", f"prompts file {name!r} is a folder, not a text file") from None
    except OSError as err:
        raise SettingsError("prompts", f"prompts file {name!r} cannot be read: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SettingsError("prompts", f"prompts file {name!r} is not UTF-8 text: {err}") from None
    prompts = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not prompts:
        raise SettingsError("prompts", f"prompts file {name!r} has no prompts (only empty lines)")
    return prompts


def latent_frames(frames: int | None, seconds: float | None, chunk: int) -> tuple[int, str]:
    """(latent frames, sentence saying how they were chosen) from a frame count or a duration.

    ``frames`` is rounded up to whole chunks; ``seconds`` (at 16 fps; latent = (16 s + 3) / 4)
    to the nearest whole number of chunks, at least one.
    """
    if frames is not None:
        if not _is_int(frames):
            raise SettingsError("frames", f"frames must be an int, got {frames!r}")
        if frames < 1:
            raise SettingsError("frames", f"frames must be >= 1, got {frames}")
        if frames > MAX_LATENT_FRAMES:
            raise SettingsError("frames", f"frames must be at most {MAX_LATENT_FRAMES} latent frames, got {frames}")
        n = math.ceil(frames / chunk) * chunk
        how = f"--frames {frames}" + (f" rounded up to {n} (whole chunks of {chunk})" if n != frames else "")
    else:
        if not isinstance(seconds, Real) or isinstance(seconds, bool) or not seconds > 0:
            raise SettingsError("seconds", f"seconds must be > 0, got {seconds!r}")
        max_seconds = (4 * MAX_LATENT_FRAMES - 3) / FPS
        if not seconds <= max_seconds:  # also inf and nan
            raise SettingsError("seconds", f"seconds must be at most {max_seconds:g} "
                                           f"({MAX_LATENT_FRAMES} latent frames), got {seconds!r}")
        exact = (seconds * FPS + 3) / 4
        n = max(1, round(exact / chunk)) * chunk
        how = f"--seconds {seconds:g} -> {n} latent frames ({n // chunk} chunks of {chunk})"
    if n > MAX_LATENT_FRAMES:
        raise SettingsError("frames" if frames is not None else "seconds",
                            f"{'frames' if frames is not None else 'seconds'} gives {n} latent frames in whole "
                            f"chunks of {chunk}, more than {MAX_LATENT_FRAMES}")
    return n, how


def slug(text: str, max_len: int = 60) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:max_len].rstrip("-") or "video"


def output_paths(out, prompts: Sequence[str]) -> tuple[Path, ...]:
    """One mp4 path per prompt: ``out`` itself (a .mp4 name, one prompt) or ``out/NNN-<prompt>.mp4``."""
    out = Path(out)
    if out.suffix.lower() == ".mp4":
        if len(prompts) > 1:
            raise SettingsError("out", f"out {str(out)!r} is one file but there are {len(prompts)} prompts: "
                                       f"give a folder")
        if out.is_dir():
            raise SettingsError("out", f"out {str(out)!r} is an existing folder, not a file")
        if out.exists() and not out.is_file():
            raise SettingsError("out", f"out {str(out)!r} exists and is not a regular file")
        return (out,)
    if out.suffix and not out.is_dir():
        raise SettingsError("out", f"out must be a .mp4 file or a folder, got {str(out)!r}")
    if out.exists() and not out.is_dir():
        raise SettingsError("out", f"out {str(out)!r} exists and is not a folder")
    return tuple(out / f"{i:03d}-{slug(p)}.mp4" for i, p in enumerate(prompts))


def check_writable_folder(folder: Path, setting: str = "out") -> None:
    """The folder exists and accepts new files, or can be created: checked without creating it."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise SettingsError(setting, f"{setting} {str(folder)!r} cannot be created: {str(existing)!r} "
                                     f"is a file, not a folder")
    try:  # the real test: permissions, ACLs, read-only file systems, quotas on inodes
        with tempfile.TemporaryFile(dir=existing, prefix=".flex-write-test-"):
            pass
    except OSError as err:
        what = "written to" if existing == folder else f"created (in {str(existing)!r})"
        raise SettingsError(setting, f"{setting} {str(folder)!r} cannot be {what}: "
                                     f"{err.strerror or err}") from None


def check_wan_dir(wan_dir) -> Path:
    """The Wan2.1 folder (text encoder, tokenizer, VAE): the original download or the Diffusers one."""
    from .loading import check_wan_dir as folder_kind

    root = Path(wan_dir)
    try:
        folder_kind(root)
    except (FileNotFoundError, ValueError) as err:
        raise SettingsError("wan_dir", f"wan_dir: {err}") from None
    return root


def resolve_device(name: str):
    """torch.device of ``name`` ("auto": cuda when available, else cpu); only cpu and cuda run FLEX."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise SettingsError("device", f"device {name!r} is not a torch device: {err}") from None
    if device.type not in ("cpu", "cuda"):
        raise SettingsError("device", f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError("device", f"device {name!r}: CUDA is not available on this machine (use cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SettingsError("device", f"device {name!r}: only {torch.cuda.device_count()} CUDA devices")
    return device


def check_step_options(device, config: FlexConfig, compile, cuda_graphs: bool) -> None:
    """flex.chunk_step's rules for the compile / cuda_graphs options, as a SettingsError."""
    from .chunk_step import check_step_options as rules

    try:
        rules(device, config, compile, cuda_graphs)
    except ValueError as err:
        name = "cuda_graphs" if str(err).startswith("cuda_graphs") else ("compile", "cuda_graphs")
        raise SettingsError(name, str(err)) from None


def check_denoising_steps(steps) -> tuple[float, ...]:
    from .schedule import FlowMatchSchedule

    steps = tuple(steps)
    if not 1 <= len(steps) <= MAX_STEPS or not all(isinstance(s, Real) and not isinstance(s, bool) for s in steps):
        raise SettingsError("denoising_steps", f"denoising_steps must be 1 to {MAX_STEPS} numbers, got {steps!r}")
    try:
        FlowMatchSchedule().timesteps_and_sigmas(steps)  # the schedule's own rules (range, whole steps)
    except ValueError as err:
        raise SettingsError("denoising_steps", str(err)) from None
    return tuple(float(s) for s in steps)


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _file_identity(path) -> dict:
    """What tells one weights file from another without reading it: resolved path, size, mtime."""
    p = Path(path)
    identity = {"path": str(p.resolve())}
    if p.is_file():
        st = p.stat()
        identity.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
    return identity


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class GenerationSettings:
    """Everything a generation job needs, checked when built (no model is loaded for that).

    dit, wan_dir     generator checkpoint (file or Wan folder), Diffusers-format Wan2.1 folder
    prompts          the text prompts (see :func:`read_prompt_file`)
    out              a .mp4 path (one prompt) or a folder receiving NNN-<prompt>.mp4
    frames/seconds   length: latent frames (rounded up to whole chunks) or seconds at 16 fps
    seed             prompt i uses seed + i
    height, width    pixels, multiples of 16; crf: x264 quality 0-51
    flex             the FLEX switches
    preset, weights  architecture name (None: from config.json / shapes); "auto" | "ema" | "generator"
    lora, lora_alpha, lora_scale, trust_checkpoint   as for flex.loading.load_dit
    model            the released model whose inference settings apply (flex.presets:
                     self-forcing, causvid, longlive, krea-14b): its schedule, weights entry
    denoising_steps, shift, warp   override the model's step list / schedule shift / whether
                     the steps are warped through the shifted table (None: the model's)
    modulation       "fp32" (Wan's convention) or "bf16" (Self Forcing's all-bf16 generator)
    noise            "ans" (per chunk, antiphase) or "upstream" (Self Forcing's own draws)
    schedules        per prompt, None or a prompt schedule ((seconds, text), ...) starting at 0 s
                     (flex.prompt_schedule); the prompt switches while that video streams
    recache          what a switch does to the cached K/V by default (flex.switching.SWITCH_MODES;
                     None: the model's, "longlive" for LongLive, else "window")
    global_sink      whether the sink survives re-encoding switches (None: the model's, True)
    backend, dtype, device, compile, cuda_graphs     runtime: flex.ops backend, "bf16" | "fp16" |
                     "fp32", "auto" | torch device, False | True | "frozen", bool
    overwrite        regenerate videos that are already finished with the same settings

    Derived when built: ``outputs`` (one path per prompt), ``latent_frames``, ``frames_how``,
    ``torch_device``.
    """

    dit: str
    wan_dir: str
    prompts: tuple[str, ...]
    out: str = "outputs"
    frames: int | None = None
    seconds: float | None = 30.0
    seed: int = 0
    height: int = 480
    width: int = 832
    crf: int = 18
    flex: FlexConfig = field(default_factory=FlexConfig)
    preset: str | None = None
    weights: str = "auto"
    lora: str | None = None
    lora_alpha: float | None = None
    lora_scale: float = 1.0
    trust_checkpoint: bool = False
    model: str = "self-forcing"
    denoising_steps: tuple[float, ...] | None = None
    shift: float | None = None
    warp: bool | None = None
    modulation: str = "fp32"
    noise: str = "ans"
    schedules: tuple | None = None
    recache: str | None = None
    global_sink: bool | None = None
    vae: str = "wan"
    vae_weights: str | None = None
    quant: str = "none"
    backend: str = "auto"
    dtype: str = "bf16"
    device: str = "auto"
    compile: bool | str = False
    cuda_graphs: bool = False
    overwrite: bool = False

    model_preset: object = field(init=False, repr=False, compare=False)
    outputs: tuple[Path, ...] = field(init=False, repr=False, compare=False)
    latent_frames: int = field(init=False, repr=False, compare=False)
    frames_how: str = field(init=False, repr=False, compare=False)
    torch_device: object = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        derived = self._check()
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    def _check(self) -> dict:
        from . import ops
        from .loading import check_lora_factors
        from .models.config import WAN_PRESETS

        prompts = self.prompts
        if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
            raise SettingsError("prompts", f"prompts must be a non-empty sequence of strings, got {prompts!r}")
        if len(prompts) > MAX_PROMPTS:
            raise SettingsError("prompts", f"prompts: at most {MAX_PROMPTS}, got {len(prompts)}")
        for i, p in enumerate(prompts):
            which = f"prompt {i}" if len(prompts) > 1 else "prompt"
            if not isinstance(p, str):
                raise SettingsError("prompt", f"{which} must be a string, got {type(p).__name__}")
            if not p.strip():
                raise SettingsError("prompt", f"{which} is empty")
        object.__setattr__(self, "prompts", tuple(p.strip() for p in prompts))
        from .presets import model_preset

        try:
            preset = model_preset(self.model)
            if self.denoising_steps is not None:
                preset = preset.replace(denoising_steps=check_denoising_steps(self.denoising_steps))
            if self.shift is not None:
                preset = preset.replace(shift=self.shift)
            if self.warp is not None:
                preset = preset.replace(warp_denoising_step=self.warp)
            preset.schedule()  # the step list must fit the (shifted, warped or raw) table
        except SettingsError:
            raise
        except ValueError as err:
            name = str(err).split(" ", 1)[0]
            name = {"warp_denoising_step": "warp", "name": "model"}.get(name, name)
            raise SettingsError(name if name in ("model", "shift", "warp", "denoising_steps") else "model",
                                str(err).replace("warp_denoising_step", "warp", 1)) from None
        object.__setattr__(self, "model_preset", preset)
        object.__setattr__(self, "denoising_steps", tuple(float(t) for t in preset.denoising_steps))
        if self.modulation not in MODULATIONS:
            raise SettingsError("modulation", f"modulation must be one of {MODULATIONS}, got {self.modulation!r}")
        if self.noise not in NOISES:
            raise SettingsError("noise", f"noise must be one of {NOISES}, got {self.noise!r}")
        if self.schedules is not None:
            object.__setattr__(self, "schedules", self._check_schedules())
        from .pipeline import RECACHE_MODES

        if self.recache is not None and self.recache not in RECACHE_MODES:
            raise SettingsError("recache", f"recache must be one of {RECACHE_MODES}, got {self.recache!r}")
        if self.global_sink not in (None, True, False):
            raise SettingsError("global_sink", f"global_sink must be True, False or None, got {self.global_sink!r}")
        if not isinstance(self.flex, FlexConfig):
            raise SettingsError("flex", f"flex must be a FlexConfig, got {type(self.flex).__name__}")
        if not Path(self.dit).exists():
            raise SettingsError("dit", f"dit {str(self.dit)!r} does not exist")
        if self.lora is not None and not Path(self.lora).is_file():
            raise SettingsError("lora", f"lora {str(self.lora)!r} does not exist"
                                if not Path(self.lora).exists() else f"lora {str(self.lora)!r} is not a file")
        check_wan_dir(self.wan_dir)
        self._check_vae()
        for name in ("height", "width"):
            v = getattr(self, name)
            if not _is_int(v) or not SPATIAL <= v <= MAX_SIDE or v % SPATIAL:
                raise SettingsError(name, f"{name} must be a positive multiple of {SPATIAL} up to {MAX_SIDE}, "
                                          f"got {v!r}")
        if not _is_int(self.crf) or not 0 <= self.crf <= 51:
            raise SettingsError("crf", f"crf must be an int in [0, 51], got {self.crf!r}")
        n_seeds = len(self.prompts)
        low, high = SEED_RANGE
        if not _is_int(self.seed) or not low <= self.seed <= high - n_seeds:
            raise SettingsError("seed", f"seed must be an int in [-2**63, 2**64 - {n_seeds}] (prompt i uses "
                                        f"seed + i; torch seeds lie in [-2**63, 2**64)), got {self.seed!r}")
        if self.preset is not None and self.preset not in WAN_PRESETS:
            raise SettingsError("preset", f"preset must be one of {sorted(WAN_PRESETS)}, got {self.preset!r}")
        if self.weights not in WEIGHTS:
            raise SettingsError("weights", f"weights must be one of {tuple(WEIGHTS)}, got {self.weights!r}")
        try:
            check_lora_factors(self.lora_alpha, self.lora_scale)
        except ValueError as err:
            raise SettingsError("lora_alpha" if str(err).startswith("lora_alpha") else "lora_scale", str(err)) \
                from None
        for name in ("trust_checkpoint", "cuda_graphs", "overwrite"):
            if not isinstance(getattr(self, name), bool):
                raise SettingsError(name, f"{name} must be a bool, got {getattr(self, name)!r}")
        try:
            ops.backend_per_op(self.backend)
        except ValueError as err:
            raise SettingsError("backend", str(err)) from None
        if self.dtype not in DTYPES:
            raise SettingsError("dtype", f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if not (self.compile is False or self.compile is True or self.compile == "frozen"):
            raise SettingsError("compile", f"compile must be one of {COMPILE}, got {self.compile!r}")
        frames, how = latent_frames(self.frames, self.seconds, self.flex.chunk_frames)
        if self.schedules is not None:
            from .prompt_schedule import ScheduleError, switch_frames
            from .switching import SwitchError, switch_starts

            recache = self.recache or self.model_preset.recache
            for i, sched in enumerate(self.schedules):
                if sched is not None:
                    try:
                        switch_starts([f for f, *_ in switch_frames(sched, FPS, frames)[1:]],
                                      self.flex.chunk_frames, recache, frames)
                    except (ScheduleError, SwitchError) as err:
                        raise SettingsError("schedules", f"schedules (prompt {i}): {err}") from None
        device = resolve_device(self.device)
        check_step_options(device, self.flex, self.compile, self.cuda_graphs)
        import torch

        from .quant import check_quant

        try:
            check_quant(self.quant, device, getattr(torch, DTYPES[self.dtype]), self.compile)
        except ValueError as err:
            raise SettingsError("quant", str(err)) from None
        outputs = output_paths(self.out, self.prompts)
        for folder in dict.fromkeys(p.parent for p in outputs):  # last: the cheap checks fail first
            check_writable_folder(folder)
        return dict(outputs=outputs, latent_frames=frames, frames_how=how, torch_device=device)

    def _check_vae(self) -> None:
        from .tiny_vae import WEIGHTS_NAME, find_tiny_vae_weights
        from .vae import VAES

        if self.vae not in VAES:
            raise SettingsError("vae", f"vae must be one of {VAES}, got {self.vae!r}")
        if self.vae_weights is not None:
            if self.vae != "tiny":
                raise SettingsError("vae_weights", "vae_weights is the tiny decoder's weights file: it needs vae tiny")
            if not Path(self.vae_weights).is_file():
                raise SettingsError("vae_weights", f"vae_weights {str(self.vae_weights)!r} is not a file")
        elif self.vae == "tiny" and find_tiny_vae_weights(self.wan_dir) is None:
            raise SettingsError("vae_weights", f"vae tiny needs the TAEHV weights file {WEIGHTS_NAME} "
                                               f"(madebyollin/taehv): give vae_weights or put it in the wan_dir")

    def vae_weights_path(self) -> str | None:
        """The tiny decoder's weights file (given, or found in the Wan folder); None for the Wan VAE."""
        from .tiny_vae import find_tiny_vae_weights

        if self.vae != "tiny":
            return None
        return str(self.vae_weights if self.vae_weights is not None else find_tiny_vae_weights(self.wan_dir))

    def _check_schedules(self) -> tuple:
        from .prompt_schedule import ScheduleError, check_schedule

        scheds = self.schedules
        if isinstance(scheds, (str, bytes)) or not isinstance(scheds, Sequence) or len(scheds) != len(self.prompts):
            raise SettingsError("schedules", f"schedules must hold one entry (None or a schedule) per prompt "
                                             f"({len(self.prompts)}), got {scheds!r:.80}")
        out = []
        for i, sched in enumerate(scheds):
            if sched is None:
                out.append(None)
                continue
            try:
                sched = check_schedule(sched, f"schedule of prompt {i}")
            except (ScheduleError, TypeError, ValueError) as err:
                raise SettingsError("schedules", f"schedules: {err}") from None
            if sched[0][1] != self.prompts[i]:
                raise SettingsError("schedules", f"schedules: prompt {i} is {self.prompts[i]!r:.40} but its schedule "
                                                 f"starts with {sched[0][1]!r:.40}")
            out.append(sched)
        return tuple(out)

    # ------------------------------------------------------------ what produced a video

    def video_record(self, i: int) -> dict:
        """Everything that determines video ``i`` (its bytes), as JSON-ready values."""
        from . import __version__
        from .video import ENCODER_THREADS, X264_PARAMS

        return {
            "flex_version": __version__,
            "prompt": self.prompts[i],
            "seed": self.seed + i,
            "dit": _file_identity(self.dit),
            "wan_dir": str(Path(self.wan_dir).resolve()),
            "lora": None if self.lora is None else _file_identity(self.lora),
            "preset": self.preset, "weights": self.weights,
            "lora_alpha": self.lora_alpha, "lora_scale": self.lora_scale,
            "latent_frames": self.latent_frames, "height": self.height, "width": self.width,
            "flex": asdict(self.flex),
            "model": self.model, "denoising_steps": list(self.denoising_steps),
            "shift": self.model_preset.shift, "warp": self.model_preset.warp_denoising_step,
            "context_noise": self.model_preset.context_noise, "modulation": self.modulation, "noise": self.noise,
            "schedule": None if self.schedules is None or self.schedules[i] is None else list(self.schedules[i]),
            "recache": self.recache or self.model_preset.recache,
            **({} if self.global_sink in (None, self.model_preset.global_sink) else {"global_sink": self.global_sink}),
            "vae": self.vae if self.vae == "wan" else {"tiny": _file_identity(self.vae_weights_path())},
            "quant": self.quant,
            "backend": self.backend, "dtype": self.dtype, "device": self.torch_device.type,
            "compile": self.compile, "cuda_graphs": self.cuda_graphs,
            "video": {"fps": FPS, "crf": self.crf, "codec": "libx264", "threads": ENCODER_THREADS,
                      "x264_params": X264_PARAMS},
        }

    def video_hash(self, i: int) -> str:
        text = json.dumps(self.video_record(i), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def video_comment(self, i: int) -> str:
        """The mp4 comment that marks video ``i`` as made with these settings."""
        return RECORD_PREFIX + self.video_hash(i)

    def is_done(self, i: int) -> bool:
        """Video ``i`` exists and its record says it was made with these settings."""
        from .video import read_comment

        return read_comment(self.outputs[i]) == self.video_comment(i)


# ---------------------------------------------------------------- the job


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


def _quiet_library_progress() -> None:
    """transformers / diffusers weight-loading bars would interleave with ours."""
    for name in ("transformers", "diffusers"):
        try:
            module = __import__(name)
            module.utils.logging.disable_progress_bar()
        except (ImportError, AttributeError):
            pass


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

    log       receives one line per step (default: the ``flex.generation`` logger at INFO)
    on_video  called with each video's result as soon as it is finished (or skipped)
    progress  a tqdm bar per video on stderr
    indices   only these prompts (positions in ``settings.prompts``; seeds and file names stay
              those of the whole list), e.g. one share of the prompts per process; default all
    parallel  a :class:`flex.distributed.ParallelPlan`: every rank of its group runs this call
              with the same ``indices`` and makes the same videos together (sequence parallel)
    write     False on the group's other ranks: they take part in every stream but decode and
              write nothing, and make exactly ``indices`` (the writing rank decided what is left)

    Errors of the models or files raise (CheckpointError, OSError, ...); KeyboardInterrupt and
    :class:`Terminated` leave no partial video (the previous file of that name, if any, stays).
    """
    from .vae import pixel_frames
    from .video import remove_stale_parts

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
    if any(not _is_int(i) or not 0 <= i < n for i in wanted):
        raise SettingsError("indices", f"indices must be positions in the {n} prompts, got {indices!r}")
    if not isinstance(write, bool):
        raise SettingsError("write", f"write must be a bool, got {write!r}")
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

    import torch

    from .decode_worker import DecodeWorker
    from .loading import load_dit
    from .noise import UpstreamNoise
    from .pipeline import Pipeline
    from .text import WanTextEncoder
    from .vae import load_decoder
    from .video import VideoWriter

    _quiet_library_progress()
    dtype = getattr(torch, DTYPES[settings.dtype])
    h, w = settings.height // 8, settings.width // 8
    log(f"{len(todo)} prompt(s); {settings.frames_how}; {pixel_frames(frames)} frames "
        f"= {pixel_frames(frames) / FPS:.2f} s at {settings.width}x{settings.height}; device {device}, "
        f"{settings.dtype}")
    log(f"FLEX: rope {cfg.strategy} (alpha {cfg.alpha:g}, beta {cfg.beta:g}, L_train {cfg.l_train}), "
        f"rho {cfg.rho:g}, sink {cfg.sink_frames} + window {cfg.window_frames} frames, chunk {cfg.chunk_frames}")

    # 1. DiT weights, memory-mapped on the CPU: their config tells the text length and width.
    preset = settings.model_preset
    # The model's weights entry and LoRA alpha unless given; the architecture comes from the
    # file (config.json or the tensor shapes) unless --preset names it.
    defaults = preset.load_kwargs()
    use_ema = WEIGHTS[settings.weights] if settings.weights != "auto" else (
        defaults["use_ema"] if settings.lora is None else None)
    model, info = load_dit(settings.dit, settings.preset, use_ema=use_ema, lora=settings.lora,
                           lora_alpha=settings.lora_alpha if settings.lora_alpha is not None else
                           defaults["lora_alpha"], lora_scale=settings.lora_scale,
                           trust_pickle=settings.trust_checkpoint, fp32_modulation=settings.modulation == "fp32")
    mcfg = model.config
    log(f"DiT: {info['source']} [{info['entry']}], {info['config_source']}"
        + (f", LoRA {info['lora']} merged" if "lora" in info else ""))

    # 2. Prompts -> embeddings; the text encoder is freed before the DiT goes to the device.
    text_enc = WanTextEncoder.from_pretrained(settings.wan_dir, device, dtype, text_len=mcfg.text_len)
    if text_enc.d_model != mcfg.text_dim:
        raise ValueError(f"the text encoder in {str(settings.wan_dir)!r} gives {text_enc.d_model}-wide embeddings "
                         f"but the DiT expects text_dim {mcfg.text_dim}")
    embeddings = {i: text_enc.encode([settings.prompts[i]]).cpu() for i in todo}
    switches = {}  # prompt i -> [(first latent frame, embeddings)] of its later prompts
    if settings.schedules is not None:
        from .prompt_schedule import switch_frames

        for i in todo:
            if settings.schedules[i] is not None:
                switches[i] = [(f, text_enc.encode([p]).cpu(), *mode) for f, p, *mode in
                               switch_frames(settings.schedules[i], FPS, frames)[1:]]
    del text_enc
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    # 3. DiT and VAE on the device.
    model = model.to(device=device, dtype=dtype)
    if settings.quant != "none":
        from .quant import quantize, quantized_linears

        quantize(model, settings.quant)
        log(f"quantised {len(quantized_linears(model))} linear layers of the DiT to {settings.quant} (torchao)")
    vae = load_decoder(settings.vae, settings.wan_dir, settings.vae_weights_path(), device, dtype) if write else None
    pipe = Pipeline(model, cfg, **preset.pipeline_kwargs(), backend=settings.backend,
                    compile=settings.compile, cuda_graphs=settings.cuda_graphs, parallel=parallel)

    from tqdm.auto import tqdm

    for k, i in enumerate(todo):
        out = settings.outputs[i]
        if settings.noise == "upstream":  # Self Forcing's draws: on the model's device, in its dtype
            noise = dict(noise=UpstreamNoise(settings.seed + i))
        else:  # per chunk from a CPU generator: the same noise on every device
            noise = dict(generator=torch.Generator("cpu").manual_seed(settings.seed + i))
        schedule = dict(prompts=[(0, embeddings[i])] + switches[i], text=None, recache=settings.recache,
                        global_sink=settings.global_sink) \
            if i in switches else dict(text=embeddings[i])
        start = time.perf_counter()
        bar = tqdm(total=n_chunks, unit="chunk", desc=f"[{k + 1}/{len(todo)}] {out.name}",
                   disable=not progress, file=sys.stderr)
        chunks = pipe.stream(num_frames=frames, latent_size=(h, w), **schedule, **noise)
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


__all__ = [
    "FPS", "GenerationSettings", "MAX_LATENT_FRAMES", "MAX_SIDE", "SettingsError", "Terminated", "VideoResult",
    "generate_videos", "latent_frames", "output_paths", "read_prompt_file", "terminate_as_interrupt",
]
