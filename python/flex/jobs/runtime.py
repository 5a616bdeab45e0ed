"""One loaded run, assembled in one place from checked settings: every entry point gets it here.

    runtime = load_runtime(settings, prompts=settings.prompts)     # flex generate, torchrun jobs
    runtime = load_runtime(settings, keep_text_encoder=True)       # flex serve (encodes live)
    for latents in runtime.open_stream(runtime.embeddings[prompt], seed):
        ...

:func:`load_runtime` reads the DiT with the model preset's weights entry and LoRA alpha (unless
the settings name them), the modulation precision and the quantisation; the text encoder; the
decoder; and a :class:`flex.pipeline.Pipeline` with the preset's schedule (shift, warping,
context noise). :meth:`Runtime.open_stream` draws the noise the settings name (ANS per chunk
from a CPU generator, or upstream's own draws) and applies the recache mode. So ``flex
generate``, ``flex serve``, ``flex experiment`` and the torchrun jobs make the same video from the
same settings, prompt and seed.

The order keeps peak device memory low: the DiT is read memory-mapped on the CPU, the prompts
are encoded (and the encoder freed unless kept), then the DiT and the decoder go to the device.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..errors import SettingsError
from .inputs import DTYPES, WEIGHTS
from .settings import GenerationSettings

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The loaded parts of a run (see the module docstring).

    settings      what it was built from
    pipe          the streaming pipeline (``pipe.model`` is the DiT on its device)
    decoder       the video decoder (None when not asked for)
    text_encoder  the text encoder when kept (None once the prompts are encoded)
    embeddings    prompt -> embeddings [1, L, text_dim] on the CPU, of the prompts asked for
    info          how the DiT was loaded (source, entry, config source, LoRA)
    """

    settings: GenerationSettings
    pipe: object
    decoder: object | None
    text_encoder: object | None
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def model(self):
        return self.pipe.model

    @property
    def device(self) -> torch.device:
        return self.settings.torch_device

    def encode(self, prompt: str) -> torch.Tensor:
        """Embeddings [1, L, text_dim] of ``prompt`` on the CPU: those encoded at load, else encoded
        now (not kept: a server's clients send any number of prompts)."""
        if prompt in self.embeddings:
            return self.embeddings[prompt]
        if self.text_encoder is None:
            raise ValueError("this runtime freed its text encoder after encoding its prompts: "
                             "load it with keep_text_encoder=True to encode new ones")
        with torch.no_grad():
            return self.text_encoder.encode([prompt]).cpu()

    def noise_kwargs(self, seed: int) -> dict:
        """The noise arguments of ``Pipeline.stream`` for ``seed``, as the settings' noise mode says."""
        from ..noise import UpstreamNoise

        if self.settings.noise == "upstream":  # Self Forcing's draws: on the model's device, in its dtype
            return dict(noise=UpstreamNoise(seed))
        return dict(generator=torch.Generator("cpu").manual_seed(seed))  # per chunk: the same on every device

    def open_stream(self, text: torch.Tensor, seed: int, *, switches: Sequence = (), progress: bool = False):
        """A :class:`flex.switching.Stream` of one video: first prompt ``text`` (embeddings),
        scheduled ``switches`` [(first latent frame, embeddings[, mode])], the settings' length, frame
        size, noise mode, recache mode and sink rule (None: the model preset's, set on the pipeline)."""
        s = self.settings
        latent_size = (s.height // 8, s.width // 8)
        prompts = dict(prompts=[(0, text)] + list(switches), text=None) if switches else dict(text=text)
        return self.pipe.stream(num_frames=s.latent_frames, latent_size=latent_size, recache=s.recache,
                                global_sink=s.global_sink, progress=progress, **prompts, **self.noise_kwargs(seed))


def load_model(settings: GenerationSettings):
    """(CausalWanModel on the CPU, load info) with the model preset's defaults for what the settings
    leave open: the weights entry (EMA or not, unless a LoRA is merged) and the LoRA alpha."""
    from ..loading import load_dit

    defaults = settings.model_preset.load_kwargs()
    use_ema = WEIGHTS[settings.weights] if settings.weights != "auto" else (
        defaults["use_ema"] if settings.lora is None else None)
    lora_alpha = settings.lora_alpha if settings.lora_alpha is not None else defaults["lora_alpha"]
    return load_dit(settings.dit, settings.preset, use_ema=use_ema, lora=settings.lora, lora_alpha=lora_alpha,
                    lora_scale=settings.lora_scale, trust_pickle=settings.trust_checkpoint,
                    fp32_modulation=settings.modulation == "fp32")


def speed_settings(settings: GenerationSettings) -> dict:
    """{setting name: value} of the options a speed note may concern."""
    return {name: getattr(settings, name) for name in ("quant", "compile", "cuda_graphs", "backend", "dtype",
                                                         "modulation", "vae")}


def quiet_library_progress() -> None:
    """transformers / diffusers weight-loading bars would interleave with ours."""
    for name in ("transformers", "diffusers"):
        try:
            module = __import__(name)
            module.utils.logging.disable_progress_bar()
        except (ImportError, AttributeError):
            pass


def load_runtime(
    settings: GenerationSettings,
    *,
    prompts: Sequence[str] = (),
    keep_text_encoder: bool = False,
    decoder: bool = True,
    parallel=None,
    log: Callable[[str], None] | None = None,
) -> Runtime:
    """Load everything ``settings`` name (see the module docstring).

    prompts            encoded while the DiT is still on the CPU (``Runtime.embeddings``)
    keep_text_encoder  keep the encoder on the device to encode new prompts later (flex serve)
    decoder            load the video decoder (False: ranks that only help a sequence-parallel group)
    parallel           a :class:`flex.sequence_parallel.ParallelPlan` for the pipeline
    """
    from ..decoders import load_decoder
    from ..pipeline import Pipeline
    from ..text import WanTextEncoder

    if not isinstance(settings, GenerationSettings):
        raise SettingsError("settings", f"must be a GenerationSettings, got {type(settings).__name__}")
    from ..speed_notes import warnings_for

    log = log or logger.info
    quiet_library_progress()
    device, dtype = settings.torch_device, getattr(torch, DTYPES[settings.dtype])
    for line in warnings_for(speed_settings(settings), device):  # an option slower than the default here says so
        log(f"note: {line}")

    # 1. DiT weights, memory-mapped on the CPU: their config tells the text length and width.
    model, info = load_model(settings)
    mcfg = model.config
    log(f"DiT: {info['source']} [{info['entry']}], {info['config_source']}"
        + (f", LoRA {info['lora']} merged" if "lora" in info else ""))

    # 2. Prompts -> embeddings; the text encoder is freed before the DiT goes to the device.
    text_encoder = WanTextEncoder.from_pretrained(settings.wan_dir, device, dtype, text_len=mcfg.text_len)
    if text_encoder.d_model != mcfg.text_dim:
        raise ValueError(f"the text encoder in {str(settings.wan_dir)!r} gives {text_encoder.d_model}-wide "
                         f"embeddings but the DiT expects text_dim {mcfg.text_dim}")
    runtime = Runtime(settings, None, None, text_encoder, info=info)
    for prompt in prompts:
        runtime.embeddings[prompt] = runtime.encode(prompt)
    if not keep_text_encoder:
        runtime.text_encoder = text_encoder = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)

    # 3. DiT and decoder on the device, the pipeline with the model preset's schedule.
    model = model.to(device=device, dtype=dtype)
    if settings.quant != "none":
        from ..quant import quantize, quantized_linears

        quantize(model, settings.quant)
        log(f"quantised {len(quantized_linears(model))} linear layers of the DiT to {settings.quant} (torchao)")
    if decoder:
        runtime.decoder = load_decoder(settings.vae, settings.wan_dir, settings.vae_weights_path(), device, dtype)
    runtime.pipe = Pipeline(model, settings.flex, **settings.model_preset.pipeline_kwargs(), backend=settings.backend,
                            compile=settings.compile, cuda_graphs=settings.cuda_graphs, parallel=parallel)
    return runtime


__all__ = ["Runtime", "load_model", "load_runtime", "quiet_library_progress"]
