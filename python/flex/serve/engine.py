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

from ..pipeline import Pipeline
from ..text import WanTextEncoder
from ..vae import WanVAEDecoder

FPS = 16  # Wan2.1 / Self Forcing frame rate


@dataclass
class Engine:
    pipe: Pipeline
    text_encoder: WanTextEncoder
    vae: WanVAEDecoder
    num_frames: int  # latent frames of one stream (the longest a session can run)
    latent_size: tuple[int, int]
    out_dir: Path = Path("outputs")
    crf: int = 18
    prompts: tuple[str, ...] = ()  # offered on the page
    fps: int = FPS

    def __post_init__(self):
        if self.text_encoder.d_model != self.pipe.model.config.text_dim:
            raise ValueError(f"the text encoder gives {self.text_encoder.d_model}-wide embeddings but the DiT "
                             f"expects text_dim {self.pipe.model.config.text_dim}")
        self.out_dir = Path(self.out_dir)

    @classmethod
    def load(cls, dit, wan_dir, *, device="cpu", dtype=torch.float32, config=None, num_frames=21,
             size=(480, 832), denoising_steps=None, backend="auto", compile=False, cuda_graphs=False,
             out_dir="outputs", crf=18, prompts=(), **dit_options) -> "Engine":
        """Load the DiT (``flex.loading.load_dit`` with ``dit_options``), text encoder and VAE."""
        from ..loading import load_dit

        model, _ = load_dit(dit, **dit_options)
        model = model.to(device=device, dtype=dtype)
        text_encoder = WanTextEncoder.from_pretrained(wan_dir, device, dtype, text_len=model.config.text_len)
        vae = WanVAEDecoder.from_pretrained(wan_dir, device, dtype)
        steps = {} if denoising_steps is None else {"denoising_steps": denoising_steps}
        pipe = Pipeline(model, config, backend=backend, compile=compile, cuda_graphs=cuda_graphs, **steps)
        latent = (size[0] // vae.spatial_ratio, size[1] // vae.spatial_ratio)
        return cls(pipe, text_encoder, vae, num_frames, latent, Path(out_dir), crf, tuple(prompts))

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

    def open_stream(self, embeddings: torch.Tensor, seed: int):
        """A live stream (iterate: chunk latents; ``switch(embeddings)``; ``close()``)."""
        generator = torch.Generator("cpu").manual_seed(seed)  # the same noise on every device
        stream = self.pipe.stream(embeddings, self.num_frames, self.latent_size, generator=generator)
        return stream if hasattr(stream, "switch") else _NoSwitchStream(stream)

    def decode(self, decoder, latents: torch.Tensor):
        """The next chunk's frames, uint8 numpy [n, H, W, 3], from a ``vae.stream()`` decoder."""
        with torch.no_grad():
            return decoder.decode(latents)[0].numpy()

    def synchronize(self) -> None:
        """Wait for the device (so that timings measure finished work)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class _NoSwitchStream:
    """Stand-in while Pipeline.stream returns a plain generator: switching is refused."""

    def __init__(self, generator):
        self._gen = generator

    def __iter__(self):
        return self._gen

    def switch(self, text) -> None:
        raise RuntimeError("this pipeline cannot switch prompts while streaming")

    def close(self) -> None:
        self._gen.close()
