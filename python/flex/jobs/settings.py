"""The settings of a generation job, checked when built (no model is loaded for that).

:class:`GenerationSettings` checks everything that can be checked without loading a model
(arguments, files, output folders), so a bad setting fails in a second, not after minutes of
loading; a :class:`flex.errors.SettingsError` names the setting at fault. Every entry point
(``flex generate``, ``flex serve``, ``flex experiment``, torchrun jobs) builds its run from one
of these through :func:`flex.jobs.runtime.load_runtime`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..config import FlexConfig
from ..errors import SettingsError
from .inputs import (
    COMPILE, DTYPES, FPS, MAX_PROMPTS, MAX_SIDE, MODULATIONS, NOISES, SEED_RANGE, SPATIAL, WEIGHTS, check_denoising_steps,
    check_wan_dir, check_writable_folder, is_int, latent_frames, output_paths, resolve_device,
)
from . import records

# A model preset's fields, named as the settings of a job that set them.
PRESET_SETTINGS = {"name": "model", "warp_denoising_step": "warp"}


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
        import torch

        from .. import ops
        from ..chunk_step import check_step_options
        from ..loading import check_lora_factors
        from ..models.config import WAN_PRESETS
        from ..presets import model_preset
        from ..quant import check_quant

        prompts = self.prompts
        if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
            raise SettingsError("prompts", f"must be a non-empty sequence of strings, got {prompts!r}")
        if len(prompts) > MAX_PROMPTS:
            raise SettingsError("prompts", f"at most {MAX_PROMPTS}, got {len(prompts)}", leads=False)
        for i, p in enumerate(prompts):
            which = f"{i} " if len(prompts) > 1 else ""  # "prompt 3 is empty" / "prompt is empty"
            if not isinstance(p, str):
                raise SettingsError("prompt", f"{which}must be a string, got {type(p).__name__}")
            if not p.strip():
                raise SettingsError("prompt", f"{which}is empty")
        object.__setattr__(self, "prompts", tuple(p.strip() for p in prompts))
        try:
            preset = model_preset(self.model)
            if self.denoising_steps is not None:
                preset = preset.replace(denoising_steps=check_denoising_steps(self.denoising_steps))
            if self.shift is not None:
                preset = preset.replace(shift=self.shift)
            if self.warp is not None:
                preset = preset.replace(warp_denoising_step=self.warp)
            preset.schedule()  # the step list must fit the (shifted, warped or raw) table
        except SettingsError as err:  # the preset's fields, named as this job's settings
            raise err.renamed(PRESET_SETTINGS) from None
        object.__setattr__(self, "model_preset", preset)
        object.__setattr__(self, "denoising_steps", tuple(float(t) for t in preset.denoising_steps))
        if self.modulation not in MODULATIONS:
            raise SettingsError("modulation", f"must be one of {MODULATIONS}, got {self.modulation!r}")
        if self.noise not in NOISES:
            raise SettingsError("noise", f"must be one of {NOISES}, got {self.noise!r}")
        if self.schedules is not None:
            object.__setattr__(self, "schedules", self._check_schedules())
        from ..switching import RECACHE_MODES

        if self.recache is not None and self.recache not in RECACHE_MODES:
            raise SettingsError("recache", f"must be one of {RECACHE_MODES}, got {self.recache!r}")
        if self.global_sink not in (None, True, False):
            raise SettingsError("global_sink", f"must be True, False or None, got {self.global_sink!r}")
        if not isinstance(self.flex, FlexConfig):
            raise SettingsError("flex", f"must be a FlexConfig, got {type(self.flex).__name__}")
        from ..switching import SwitchError, check_switch_settings

        try:  # the switch rules of the stream this job will open, before any model loads
            check_switch_settings(self.flex, self.recache or preset.recache,
                                  preset.global_sink if self.global_sink is None else self.global_sink)
        except SwitchError as err:
            raise SettingsError(err.setting, str(err), leads=False) from None
        if not Path(self.dit).exists():
            raise SettingsError("dit", f"{str(self.dit)!r} does not exist")
        if self.lora is not None and not Path(self.lora).is_file():
            raise SettingsError("lora", f"{str(self.lora)!r} does not exist"
                                if not Path(self.lora).exists() else f"{str(self.lora)!r} is not a file")
        check_wan_dir(self.wan_dir)
        self._check_vae()
        for name in ("height", "width"):
            v = getattr(self, name)
            if not is_int(v) or not SPATIAL <= v <= MAX_SIDE or v % SPATIAL:
                raise SettingsError(name, f"must be a positive multiple of {SPATIAL} up to {MAX_SIDE}, "
                                          f"got {v!r}")
        if not is_int(self.crf) or not 0 <= self.crf <= 51:
            raise SettingsError("crf", f"must be an int in [0, 51], got {self.crf!r}")
        n_seeds = len(self.prompts)
        low, high = SEED_RANGE
        if not is_int(self.seed) or not low <= self.seed <= high - n_seeds:
            raise SettingsError("seed", f"must be an int in [-2**63, 2**64 - {n_seeds}] (prompt i uses "
                                        f"seed + i; torch seeds lie in [-2**63, 2**64)), got {self.seed!r}")
        if self.preset is not None and self.preset not in WAN_PRESETS:
            raise SettingsError("preset", f"must be one of {sorted(WAN_PRESETS)}, got {self.preset!r}")
        if self.weights not in WEIGHTS:
            raise SettingsError("weights", f"must be one of {tuple(WEIGHTS)}, got {self.weights!r}")
        check_lora_factors(self.lora_alpha, self.lora_scale)
        for name in ("trust_checkpoint", "cuda_graphs", "overwrite"):
            if not isinstance(getattr(self, name), bool):
                raise SettingsError(name, f"must be a bool, got {getattr(self, name)!r}")
        ops.backend_per_op(self.backend)
        if self.dtype not in DTYPES:
            raise SettingsError("dtype", f"must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if not (self.compile is False or self.compile is True or self.compile == "frozen"):
            raise SettingsError("compile", f"must be one of {COMPILE}, got {self.compile!r}")
        frames, how = latent_frames(self.frames, self.seconds, self.flex.chunk_frames)
        if self.schedules is not None:
            from ..prompt_schedule import ScheduleError, switch_frames
            from ..switching import SwitchError, switch_starts

            recache = self.recache or self.model_preset.recache
            for i, sched in enumerate(self.schedules):
                if sched is not None:
                    try:
                        switch_starts([f for f, *_ in switch_frames(sched, FPS, frames)[1:]],
                                      self.flex.chunk_frames, recache, frames)
                    except (ScheduleError, SwitchError) as err:
                        raise SettingsError("schedules", f"(prompt {i}): {err}") from None
        device = resolve_device(self.device)
        check_step_options(device, self.flex, self.compile, self.cuda_graphs)
        check_quant(self.quant, device, getattr(torch, DTYPES[self.dtype]), self.compile)
        outputs = output_paths(self.out, self.prompts)
        for folder in dict.fromkeys(p.parent for p in outputs):  # last: the cheap checks fail first
            check_writable_folder(folder)
        return dict(outputs=outputs, latent_frames=frames, frames_how=how, torch_device=device)

    def _check_vae(self) -> None:
        from ..decoders import VAES, WEIGHTS_NAME, find_tiny_vae_weights

        if self.vae not in VAES:
            raise SettingsError("vae", f"must be one of {VAES}, got {self.vae!r}")
        if self.vae_weights is not None:
            if self.vae != "tiny":
                raise SettingsError("vae_weights", "is the tiny decoder's weights file: it needs vae tiny")
            if not Path(self.vae_weights).is_file():
                raise SettingsError("vae_weights", f"{str(self.vae_weights)!r} is not a file")
        elif self.vae == "tiny" and find_tiny_vae_weights(self.wan_dir) is None:
            raise SettingsError("vae_weights", f"vae tiny needs the TAEHV weights file {WEIGHTS_NAME} "
                                               f"(madebyollin/taehv): give vae_weights or put it in the wan_dir", leads=False)

    def vae_weights_path(self) -> str | None:
        """The tiny decoder's weights file (given, or found in the Wan folder); None for the Wan VAE."""
        from ..decoders import find_tiny_vae_weights

        if self.vae != "tiny":
            return None
        return str(self.vae_weights if self.vae_weights is not None else find_tiny_vae_weights(self.wan_dir))

    def _check_schedules(self) -> tuple:
        from ..prompt_schedule import ScheduleError, check_schedule

        scheds = self.schedules
        if isinstance(scheds, (str, bytes)) or not isinstance(scheds, Sequence) or len(scheds) != len(self.prompts):
            raise SettingsError("schedules", f"must hold one entry (None or a schedule) per prompt "
                                             f"({len(self.prompts)}), got {scheds!r:.80}")
        out = []
        for i, sched in enumerate(scheds):
            if sched is None:
                out.append(None)
                continue
            try:
                sched = check_schedule(sched, f"schedule of prompt {i}")
            except (ScheduleError, TypeError, ValueError) as err:
                raise SettingsError("schedules", str(err), leads=False) from None
            if sched[0][1] != self.prompts[i]:
                raise SettingsError("schedules", f"prompt {i} is {self.prompts[i]!r:.40} but its schedule "
                                                 f"starts with {sched[0][1]!r:.40}", leads=False)
            out.append(sched)
        return tuple(out)

    # ------------------------------------------------------------ what produced a video (flex.jobs.records)

    def video_record(self, i: int) -> dict:
        """Everything that determines video ``i`` (its bytes), as JSON-ready values."""
        return records.video_record(self, i)

    def video_hash(self, i: int) -> str:
        return records.video_hash(self, i)

    def video_comment(self, i: int) -> str:
        """The mp4 comment that marks video ``i`` as made with these settings."""
        return records.video_comment(self, i)

    def is_done(self, i: int) -> bool:
        """Video ``i`` exists and its record says it was made with these settings."""
        return records.is_done(self, i)


__all__ = ["GenerationSettings", "PRESET_SETTINGS", "SettingsError"]
