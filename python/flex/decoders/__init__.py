"""Video decoders: latents [B, F, 16, h, w] -> uint8 frames [B, 4F - 3, 8h, 8w, 3], chunk by chunk.

* :mod:`.wan_vae`: the Wan2.1 VAE (diffusers' ``AutoencoderKLWan``), streamed with overlap;
* :mod:`.tiny`: the TAEHV tiny decoder (``taew2_1.pth``), streamed with its own memory;
* :mod:`.worker`: decoding chunk k in a worker thread while the DiT makes chunk k + 1;
* :mod:`.frames`: what they share (the latent layout, frame counts, the uint8 conversion).

:func:`load_decoder` is the one place a run picks its decoder.
"""
from __future__ import annotations

import torch

from .frames import LATENT_CHANNELS, check_latents, pixel_frames, to_uint8, unit_to_uint8
from .tiny import WEIGHTS_NAME, TinyVAEDecoder, find_tiny_vae_weights
from .wan_vae import WanVAEDecoder
from .worker import DecodeWorker

VAES = ("wan", "tiny")  # the Wan2.1 VAE (diffusers) or the tiny TAEHV decoder


def load_decoder(vae: str, wan_dir, weights=None, device="cpu", dtype=torch.float32):
    """The video decoder ``vae`` names: "wan" (the Wan folder's VAE) or "tiny" (TAEHV from
    ``weights``, else ``taew2_1.pth`` in the Wan folder). The tiny decoder runs in float32 on a
    CPU, where bf16 convolutions are many times slower."""
    if vae not in VAES:
        raise ValueError(f"vae must be one of {VAES}, got {vae!r}")
    if vae == "wan":
        return WanVAEDecoder.from_pretrained(wan_dir, device, dtype)
    path = weights if weights is not None else find_tiny_vae_weights(wan_dir)
    if path is None:
        raise FileNotFoundError(f"vae tiny needs the TAEHV weights {WEIGHTS_NAME}: give their path "
                                f"(--vae-weights) or put the file in {str(wan_dir)!r}")
    tiny_dtype = torch.float32 if torch.device(device).type == "cpu" else dtype
    return TinyVAEDecoder.from_pretrained(path, device, tiny_dtype)


__all__ = [
    "DecodeWorker", "LATENT_CHANNELS", "TinyVAEDecoder", "VAES", "WEIGHTS_NAME", "WanVAEDecoder", "check_latents",
    "find_tiny_vae_weights", "load_decoder", "pixel_frames", "to_uint8", "unit_to_uint8",
]
