"""The model parts ``flex serve`` loads once and every stream shares.

:class:`Engine` wraps the run's :class:`flex.jobs.runtime.Runtime` (DiT, pipeline with the model
preset's schedule, text encoder kept loaded since every prompt switch encodes a new prompt, video
decoder) and says where saved videos go. Streams are opened by the runtime, as ``flex generate``
opens them: the same settings, prompt and seed give the same video. Only the worker thread of
the session that owns the device calls into it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..jobs.inputs import FPS
from ..jobs.runtime import Runtime, load_runtime
from ..jobs.settings import GenerationSettings
from ..switching import Stream


@dataclass
class Engine:
    runtime: Runtime
    out_dir: Path = Path("outputs")
    fps: int = FPS

    def __post_init__(self):
        if self.runtime.text_encoder is None:
            raise ValueError("flex serve encodes prompts live: its runtime must keep its text encoder")
        if self.runtime.decoder is None:
            raise ValueError("flex serve shows decoded frames: its runtime must have a decoder")
        self.out_dir = Path(self.out_dir)

    @classmethod
    def from_settings(cls, settings: GenerationSettings) -> "Engine":
        """Load what ``settings`` name (:func:`flex.jobs.runtime.load_runtime`) onto its device.

        ``settings.latent_frames`` is each stream's length; ``settings.out`` the folder for saved
        videos; ``settings.prompts`` the prompts the page offers.
        """
        return cls(load_runtime(settings, keep_text_encoder=True), Path(settings.out))

    @property
    def settings(self) -> GenerationSettings:
        return self.runtime.settings

    @property
    def pipe(self):
        return self.runtime.pipe

    @property
    def vae(self):
        """The video decoder (Wan VAE or the tiny decoder: the same interface)."""
        return self.runtime.decoder

    @property
    def num_frames(self) -> int:
        """Latent frames of one stream (the longest a session can run)."""
        return self.settings.latent_frames

    @property
    def latent_size(self) -> tuple[int, int]:
        return self.settings.height // 8, self.settings.width // 8

    @property
    def crf(self) -> int:
        return self.settings.crf

    @property
    def prompts(self) -> tuple[str, ...]:
        """The prompts offered on the page."""
        return self.settings.prompts

    @property
    def recache(self) -> str:
        return self.settings.recache

    @property
    def device(self) -> torch.device:
        return self.pipe.model.device

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of the decoded frames."""
        return self.settings.height, self.settings.width

    def encode(self, prompt: str) -> torch.Tensor:
        """Prompt embeddings [1, text_len, text_dim] (encoded once per prompt text)."""
        return self.runtime.encode(prompt)

    def open_stream(self, embeddings: torch.Tensor, seed: int) -> Stream:
        """A live :class:`flex.switching.Stream` (iterate it; ``switch(embeddings)``; ``close()``)."""
        return self.runtime.open_stream(embeddings, seed)

    def decode(self, decoder, latents: torch.Tensor):
        """The next chunk's frames, uint8 numpy [n, H, W, 3], from a ``vae.stream()`` decoder."""
        with torch.no_grad():
            return decoder.decode(latents)[0].numpy()

    def synchronize(self) -> None:
        """Wait for the device (so that timings measure finished work)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
