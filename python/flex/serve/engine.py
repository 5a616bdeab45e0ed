"""The model parts ``flex serve`` loads once and every stream shares.

:class:`Engine` holds the pipeline (DiT + FLEX settings), the text encoder (kept loaded: every
prompt switch encodes a new prompt) and the VAE decoder, plus the stream settings (length,
frame size, where saved videos go). Only the worker thread of the session that owns the
device calls into it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..generation import DTYPES, FPS, WEIGHTS, GenerationSettings
from ..pipeline import RECACHE_MODES, Pipeline, Stream
from ..text import WanTextEncoder
from ..vae import WanVAEDecoder, load_decoder


@dataclass
class Engine:
    pipe: Pipeline
    text_encoder: WanTextEncoder
    vae: WanVAEDecoder  # or a flex.tiny_vae.TinyVAEDecoder: the same interface
    num_frames: int  # latent frames of one stream (the longest a session can run)
    latent_size: tuple[int, int]
    out_dir: Path = Path("outputs")
    crf: int = 18
    prompts: tuple[str, ...] = ()  # offered on the page
    recache: str = "window"  # KV re-cache at a prompt switch (flex.pipeline.RECACHE_MODES)
    fps: int = FPS

    def __post_init__(self):
        if self.text_encoder.d_model != self.pipe.model.config.text_dim:
            raise ValueError(f"the text encoder gives {self.text_encoder.d_model}-wide embeddings but the DiT "
                             f"expects text_dim {self.pipe.model.config.text_dim}")
        if self.recache not in RECACHE_MODES:
            raise ValueError(f"recache must be one of {RECACHE_MODES}, got {self.recache!r}")
        self.out_dir = Path(self.out_dir)

    @classmethod
    def from_settings(cls, settings: GenerationSettings, *, recache: str = "window") -> "Engine":
        """Load the DiT, the text encoder and the VAE that ``settings`` name onto its device.

        ``settings.latent_frames`` is each stream's length; ``settings.out`` the folder for saved
        videos; ``settings.prompts`` the prompts the page offers.
        """
        from ..loading import load_dit

        device, dtype = settings.torch_device, getattr(torch, DTYPES[settings.dtype])
        model, _ = load_dit(settings.dit, settings.preset, use_ema=WEIGHTS[settings.weights], lora=settings.lora,
                            lora_alpha=settings.lora_alpha, lora_scale=settings.lora_scale,
                            trust_pickle=settings.trust_checkpoint)
        model = model.to(device=device, dtype=dtype)
        if settings.quant != "none":
            from ..quant import quantize

            quantize(model, settings.quant)
        text_encoder = WanTextEncoder.from_pretrained(settings.wan_dir, device, dtype, text_len=model.config.text_len)
        vae = load_decoder(settings.vae, settings.wan_dir, settings.vae_weights_path(), device, dtype)
        pipe = Pipeline(model, settings.flex, denoising_steps=settings.denoising_steps, backend=settings.backend,
                        compile=settings.compile, cuda_graphs=settings.cuda_graphs)
        latent = (settings.height // vae.spatial_ratio, settings.width // vae.spatial_ratio)
        return cls(pipe, text_encoder, vae, settings.latent_frames, latent, Path(settings.out), settings.crf,
                   settings.prompts, recache)

    @property
    def device(self) -> torch.device:
        return self.pipe.model.device

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of the decoded frames."""
        return self.latent_size[0] * self.vae.spatial_ratio, self.latent_size[1] * self.vae.spatial_ratio

    def encode(self, prompt: str) -> torch.Tensor:
        """Prompt embeddings [1, text_len, text_dim] on the model's device."""
        return self.text_encoder.encode([prompt]).to(self.device)

    def open_stream(self, embeddings: torch.Tensor, seed: int) -> Stream:
        """A live :class:`flex.pipeline.Stream` (iterate it; ``switch(embeddings)``; ``close()``)."""
        generator = torch.Generator("cpu").manual_seed(seed)  # the same noise on every device
        return self.pipe.stream(embeddings, self.num_frames, self.latent_size, generator=generator,
                                recache=self.recache)

    def decode(self, decoder, latents: torch.Tensor):
        """The next chunk's frames, uint8 numpy [n, H, W, 3], from a ``vae.stream()`` decoder."""
        with torch.no_grad():
            return decoder.decode(latents)[0].numpy()

    def synchronize(self) -> None:
        """Wait for the device (so that timings measure finished work)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

