"""Model presets: the released AR Wan models FLEX runs on, with their inference settings.

``MODEL_PRESETS[name]`` (or :func:`model_preset`) is a frozen :class:`ModelPreset` holding, for
one released model, what its own inference code does -- denoising steps, the shift schedule,
the clean-pass timestep, which weights of the checkpoint it reads, its chunk size and its
attention window -- plus FLEX's settings for it. Every value is taken from that project's
released inference code or config (the file is named next to the value):

* Self Forcing  github.com/guandeh17/Self-Forcing   (configs/self_forcing_dmd.yaml,
  configs/default_config.yaml, inference.py, demo.py, pipeline/causal_inference.py,
  wan/modules/causal_model.py)
* CausVid       github.com/tianweiy/CausVid        (configs/wan_causal_dmd.yaml,
  causvid/models/wan/causal_inference.py, causvid/models/wan/wan_wrapper.py,
  minimal_inference/autoregressive_inference.py)
* LongLive      github.com/NVlabs/LongLive, branch v1.0 (configs/longlive_inference.yaml,
  configs/longlive_train_long.yaml, inference.py, wan/modules/causal_model.py)
* Causal Forcing github.com/thu-ml/Causal-Forcing, commit 1fc7bbc (configs/causal_forcing_dmd_chunkwise.yaml,
  configs/default_config.yaml, inference.py, utils/wan_wrapper.py, README.md), weights
  zhuhz22/Causal-Forcing chunkwise/causal_forcing.pt (the chunk-wise 4-step model)
* Krea Realtime 14B  github.com/krea-ai/realtime-video (configs/self_forcing_server_14b.yaml,
  configs/default_config.yaml, release_server.py, v2v.py), weights krea/krea-realtime-video

Two FLEX configurations per model:

* ``flex_config()``: FLEX on with the paper's settings for the model (alpha 0.1, beta 2.5,
  L_train 21 for Self Forcing; alpha 1.0, beta 15.0, L_train 240 for LongLive; antiphase noise
  rho -1; a 3-frame sink). CausVid and Krea are trained on 21 latent frames with Wan's RoPE,
  like Self Forcing, so they get Self Forcing's settings: the gate is in units of rotations
  seen in training, r_m = L_train theta_m / (2 pi), so the same L_train and thetas give the
  same r_m, and the same alpha / beta split the same planes into extrapolated, ramped and
  interpolated ones.
* ``baseline_config()``: "no FLEX", i.e. the model's own upstream behaviour (plain RoPE, i.i.d.
  noise, its own cache). Where upstream cannot generate past its cache (Self Forcing and
  CausVid keep a fixed 21-frame cache, 32760 tokens at 480x832, and never evict: the 8th chunk's
  write ``kv_cache["k"][:, 32760:37440] = k`` is an empty slice and torch raises a size
  mismatch, so upstream stops at 21 latent frames = 81 video frames), the baseline is the
  21-frame sliding window without sink that upstream's own eviction gives with
  ``local_attn_size=21``; it equals upstream exactly for the first 21 frames.

``pipeline_kwargs()`` are :class:`flex.pipeline.Pipeline`'s schedule arguments; ``load_kwargs()``
are :func:`flex.loading.load_dit`'s (architecture, EMA or raw weights, LoRA alpha).
``preset.replace(shift=..., warp_denoising_step=False, ...)`` gives a validated variant.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Mapping

from .checks import check_bool, check_choice, check_float, check_int
from .config import FlexConfig
from .models.config import WAN_PRESETS
from .schedule import FlowMatchSchedule

# Checkpoint entry each model's inference reads; None: the file is a bare state dict.
WEIGHT_ENTRIES = ("generator_ema", "generator", None)
_USE_EMA = {"generator_ema": True, "generator": False, None: None}


@dataclass(frozen=True)
class ModelPreset:
    """Inference settings of one released AR Wan model, and FLEX's settings for it.

    name                 the preset's name (CLI ``--model``)
    architecture         the Wan architecture (a ``flex.models.WAN_PRESETS`` name)
    denoising_steps      the model's denoising step list
    warp_denoising_step  steps are mapped through the shifted table (Self Forcing's
                         ``warp_denoising_step``) or used as raw timesteps
    shift                shift of the flow-matching table (sigmas, warping)
    context_noise        timestep of the clean pass that stores each chunk's keys / values
    weights              checkpoint entry upstream loads ("generator_ema", "generator", or None
                         for a bare state dict)
    flex                 FLEX on, the paper's settings for this model
    baseline             FLEX off: this model's own upstream behaviour
    lora_rank, lora_alpha  the LoRA its release merges into the weights (LongLive), else None
    final_step_at_t0     upstream runs one more denoising pass at t = 0 after the listed steps
                         (Krea); :class:`flex.pipeline.Pipeline` does not run it
    """

    name: str
    architecture: str
    denoising_steps: tuple[float, ...]
    warp_denoising_step: bool
    shift: float
    context_noise: float
    weights: str | None
    flex: FlexConfig
    baseline: FlexConfig
    lora_rank: int | None = None
    lora_alpha: float | None = None
    final_step_at_t0: bool = False

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        check_choice("architecture", self.architecture, WAN_PRESETS)
        if isinstance(self.denoising_steps, (str, bytes)) or not hasattr(self.denoising_steps, "__iter__"):
            raise ValueError(f"denoising_steps must be a sequence of numbers, got {self.denoising_steps!r}")
        object.__setattr__(self, "denoising_steps", tuple(self.denoising_steps))
        check_bool("warp_denoising_step", self.warp_denoising_step)
        check_float("shift", self.shift, 0.0, low_open=True)
        check_float("context_noise", self.context_noise, 0.0, 1000.0)
        self.schedule()  # validates the step list against the table (ValueError naming denoising_steps)
        if self.weights not in WEIGHT_ENTRIES:
            raise ValueError(f"weights must be one of {WEIGHT_ENTRIES}, got {self.weights!r}")
        for name in ("flex", "baseline"):
            if not isinstance(getattr(self, name), FlexConfig):
                raise ValueError(f"{name} must be a FlexConfig, got {type(getattr(self, name)).__name__}")
        if self.flex.chunk_frames != self.baseline.chunk_frames:
            raise ValueError(
                f"flex and baseline must generate the model's chunk size, got chunk_frames "
                f"{self.flex.chunk_frames} and {self.baseline.chunk_frames}"
            )
        if (self.lora_rank is None) != (self.lora_alpha is None):
            raise ValueError(f"lora_rank and lora_alpha go together, got {self.lora_rank!r} and {self.lora_alpha!r}")
        if self.lora_rank is not None:
            check_int("lora_rank", self.lora_rank, 1)
            check_float("lora_alpha", self.lora_alpha, 0.0, low_open=True)
        check_bool("final_step_at_t0", self.final_step_at_t0)

    @property
    def chunk_frames(self) -> int:
        """Latent frames per chunk (num_frame_per_block upstream)."""
        return self.flex.chunk_frames

    @property
    def requires_lora(self) -> bool:
        """The release is a base generator plus a LoRA (LongLive): loading without it is another model."""
        return self.lora_rank is not None

    @property
    def use_ema(self) -> bool | None:
        """``load_dit``'s use_ema for the weights upstream reads (None: a bare state dict)."""
        return _USE_EMA[self.weights]

    def flex_config(self, **overrides) -> FlexConfig:
        """FLEX on with the paper's settings for this model (fields overridable)."""
        return self.flex.replace(**overrides) if overrides else self.flex

    def baseline_config(self, **overrides) -> FlexConfig:
        """FLEX off: the model's own upstream behaviour (fields overridable)."""
        return self.baseline.replace(**overrides) if overrides else self.baseline

    def schedule(self) -> tuple[list[float], list[float]]:
        """(timesteps, sigmas) of the denoising steps, as the Pipeline will run them."""
        return FlowMatchSchedule(self.shift).timesteps_and_sigmas(self.denoising_steps, self.warp_denoising_step)

    def pipeline_kwargs(self) -> dict:
        """Keyword arguments of :class:`flex.pipeline.Pipeline` for this model's schedule."""
        return dict(denoising_steps=list(self.denoising_steps), warp_denoising_step=self.warp_denoising_step,
                    shift=self.shift, context_noise=self.context_noise)

    def load_kwargs(self) -> dict:
        """Keyword arguments of :func:`flex.loading.load_dit` (the LoRA file itself is the user's)."""
        return dict(preset=self.architecture, use_ema=self.use_ema, lora_alpha=self.lora_alpha)

    def replace(self, **changes) -> "ModelPreset":
        """A validated copy with some fields changed (e.g. shift, warp_denoising_step)."""
        return replace(self, **changes)


SELF_FORCING = ModelPreset(
    name="self-forcing",
    architecture="wan2.1-t2v-1.3b",  # utils/wan_wrapper.py: WanDiffusionWrapper model_name="Wan2.1-T2V-1.3B"
    denoising_steps=(1000, 750, 500, 250),  # self_forcing_dmd.yaml: denoising_step_list
    warp_denoising_step=True,  # self_forcing_dmd.yaml: warp_denoising_step: true (-> 1000, 937.5, 833.3, 625)
    shift=5.0,  # self_forcing_dmd.yaml: model_kwargs.timestep_shift: 5.0
    context_noise=0.0,  # default_config.yaml: context_noise: 0 (pipeline/causal_inference.py clean pass)
    weights="generator_ema",  # README: inference.py --use_ema; demo.py loads state_dict['generator_ema']
    flex=FlexConfig(
        alpha=0.1, beta=2.5,  # FLEX paper, Self Forcing
        l_train=21,  # self_forcing_dmd.yaml: image_or_video_shape [1, 21, 16, 60, 104]
        rho=-1.0, sink_frames=3,  # FLEX paper defaults
        window_frames=18,  # sink 3 + 18 = the 21-frame context of training
        chunk_frames=3,  # self_forcing_dmd.yaml: num_frame_per_block: 3
    ),
    # wan_wrapper.py / causal_model.py defaults: local_attn_size -1 (a 21-frame cache, see the
    # module docstring), sink_size 0; absolute RoPE positions (causal_rope_apply start_frame);
    # initial noise and re-noise i.i.d. (torch.randn / randn_like)
    baseline=FlexConfig.off(window_frames=21, chunk_frames=3),
)

CAUSVID = ModelPreset(
    name="causvid",
    architecture="wan2.1-t2v-1.3b",  # causvid/models/wan/wan_wrapper.py: wan_models/Wan2.1-T2V-1.3B
    # wan_causal_dmd.yaml: denoising_step_list [1000, 757, 522, 0]; causal_inference.py asserts the
    # trailing 0 and drops it
    denoising_steps=(1000, 757, 522),
    warp_denoising_step=False,  # wan_causal_dmd.yaml: warp_denoising_step: false (raw timesteps)
    shift=8.0,  # wan_causal_dmd.yaml: timestep_shift: 8.0; wan_wrapper.py FlowMatchScheduler(shift=8.0)
    context_noise=0.0,  # causal_inference.py: the cache pass runs at timestep * 0
    weights="generator",  # minimal_inference/autoregressive_inference.py: torch.load(model.pt)['generator']
    flex=FlexConfig(
        alpha=0.1, beta=2.5,  # Self Forcing's: same L_train and RoPE, so the same r_m (module docstring)
        l_train=21,  # wan_causal_dmd.yaml: image_or_video_shape [1, 21, 16, 60, 104]
        rho=-1.0, sink_frames=3, window_frames=18,
        chunk_frames=3,  # wan_causal_dmd.yaml: num_frame_per_block: 3
    ),
    # causal_inference.py: a fixed 32760-token (21-frame) cache, every frame attends to all
    # earlier ones, no sink, no eviction; absolute RoPE positions; i.i.d. noise
    baseline=FlexConfig.off(window_frames=21, chunk_frames=3),
)

LONGLIVE = ModelPreset(
    name="longlive",
    architecture="wan2.1-t2v-1.3b",  # longlive_inference.yaml: model_name: Wan2.1-T2V-1.3B
    denoising_steps=(1000, 750, 500, 250),  # longlive_inference.yaml: denoising_step_list
    warp_denoising_step=True,  # longlive_inference.yaml: warp_denoising_step: true
    shift=5.0,  # longlive_inference.yaml: model_kwargs.timestep_shift: 5.0
    context_noise=0.0,  # longlive_inference.yaml: context_noise: 0
    weights="generator",  # longlive_inference.yaml: use_ema: false (inference.py: state_dict["generator"])
    lora_rank=256, lora_alpha=256.0,  # longlive_inference.yaml: adapter rank 256, alpha 256 (lora.pt)
    flex=FlexConfig(
        alpha=1.0, beta=15.0,  # FLEX paper, LongLive
        l_train=240,  # FLEX paper; longlive_train_long.yaml: streaming_max_length: 240
        rho=-1.0,
        sink_frames=3, window_frames=9,  # longlive_inference.yaml: sink_size 3, local_attn_size 12 = 3 + 9
        chunk_frames=3,  # longlive_inference.yaml: num_frame_per_block: 3
    ),
    # longlive_inference.yaml: sink 3 + local window 12 (the current chunk included), absolute
    # RoPE positions (causal_model.py causal_rope_apply start_frame), plain RoPE, i.i.d. noise
    baseline=FlexConfig(strategy="none", rho=0.0, l_train=240, sink_frames=3, window_frames=9, chunk_frames=3),
)

KREA_14B = ModelPreset(
    name="krea-14b",
    # release_server.py load_transformer: Wan2.1-T2V-14B when blocks.0.self_attn.k is not 1536 wide
    architecture="wan2.1-t2v-14b",
    # release_server.py GenerateParams.num_denoising_steps = 5 and v2v.get_denoising_schedule:
    # timesteps[1000 - linspace(1000, 0, 5)] = 1000, 937.5, 833.3, 625, then 0 -- the warp of
    # 1000, 750, 500, 250 plus a final pass at t = 0 (configs/self_forcing_server_14b.yaml lists
    # the same schedule truncated to ints: 1000, 937, 833, 625, 0 with warp_denoising_step false).
    denoising_steps=(1000, 750, 500, 250),
    warp_denoising_step=True,
    final_step_at_t0=True,  # upstream re-noises to the table's smallest sigma (0.005) and denoises at t = 0
    shift=5.0,  # self_forcing_server_14b.yaml: timestep_shift: 5.0; GenerateParams.timestep_shift 5.0
    context_noise=0.0,  # GenerateParams.context_noise 0.0; recompute_kv_cache runs at timestep 0
    weights=None,  # krea-realtime-video-14b.safetensors: a bare "model."-prefixed state dict
    flex=FlexConfig(
        alpha=0.1, beta=2.5,  # Self Forcing's: a Self Forcing distillation with Wan's RoPE
        l_train=21,  # configs/default_config.yaml: num_training_frames: 21
        rho=-1.0, sink_frames=3, window_frames=18,
        chunk_frames=3,  # self_forcing_server_14b.yaml: num_frame_per_block: 3
    ),
    # release_server.py init_models / recompute_kv_cache: attention over kv_cache_num_frames (3)
    # context frames + the current chunk (3), RoPE positions restarting at 0 each chunk; no sink.
    # Upstream recomputes the context's keys / values every chunk (and re-encodes the oldest
    # context frame through the VAE); the ring cache keeps each frame's own clean-pass keys.
    baseline=FlexConfig(strategy="none", rho=0.0, sink_frames=0, window_frames=6, chunk_frames=3,
                        position_policy="window"),
)

CAUSAL_FORCING = ModelPreset(
    name="causal-forcing",
    architecture="wan2.1-t2v-1.3b",  # utils/wan_wrapper.py: WanDiffusionWrapper model_name="Wan2.1-T2V-1.3B"
    denoising_steps=(1000, 750, 500, 250),  # causal_forcing_dmd_chunkwise.yaml: denoising_step_list
    warp_denoising_step=True,  # causal_forcing_dmd_chunkwise.yaml: warp_denoising_step: true
    shift=5.0,  # causal_forcing_dmd_chunkwise.yaml: timestep_shift / model_kwargs.timestep_shift: 5.0
    context_noise=0.0,  # default_config.yaml: context_noise: 0
    weights="generator",  # README.md's chunk-wise command has no --use_ema; inference.py: key 'generator'
    flex=FlexConfig(
        alpha=0.1, beta=2.5,  # Self Forcing's: a Self Forcing-style DMD distillation of Wan2.1-1.3B
        l_train=21,  # causal_forcing_dmd_chunkwise.yaml: image_or_video_shape [1, 21, 16, 60, 104]
        rho=-1.0, sink_frames=3, window_frames=18,
        chunk_frames=3,  # causal_forcing_dmd_chunkwise.yaml: num_frame_per_block: 3
    ),
    # wan_wrapper.py defaults local_attn_size -1, sink_size 0 (the config's model_kwargs set only
    # timestep_shift): Self Forcing's fixed 21-frame cache, absolute positions, i.i.d. noise
    baseline=FlexConfig.off(window_frames=21, chunk_frames=3),
)

MODEL_PRESETS: Mapping[str, ModelPreset] = MappingProxyType(
    {p.name: p for p in (SELF_FORCING, CAUSVID, LONGLIVE, KREA_14B, CAUSAL_FORCING)})


def model_preset(name: str | ModelPreset) -> ModelPreset:
    """A model preset by name (see ``MODEL_PRESETS``)."""
    if isinstance(name, ModelPreset):
        return name
    return MODEL_PRESETS[check_choice("model", name, MODEL_PRESETS)]


__all__ = ["MODEL_PRESETS", "WEIGHT_ENTRIES", "ModelPreset", "model_preset"]
