"""Wan2.1 VAE decoding (diffusers ``AutoencoderKLWan``) of FLEX latents into uint8 video frames.

The VAE comes from ``<wan-dir>/vae`` of a Diffusers-format folder or from ``Wan2.1_VAE.pth`` of
the original download (Wan's own layout, mapped by :mod:`flex.loading.wan_vae`, which also
supplies the latents_mean / latents_std that Wan keeps in its code); the files tell which.

Latents come in the generator's layout [B, F, 16, h, w] and in the normalised space the DiT
works in; the VAE wants [B, 16, F, h, w] de-normalised per channel as

    z_vae = z * latents_std + latents_mean         (latents_mean / latents_std: VAE config)

which is what diffusers' WanPipeline computes as ``latents / (1 / std) + mean``. Latent frame 0
decodes to 1 pixel frame and every later one to 4, so F latent frames give 4F - 3 frames.

The Wan decoder is causal in time: diffusers decodes one latent frame at a time and carries a
small feature cache (the last 2 time steps of every causal conv) from frame to frame.
:class:`DecodeStream` keeps that cache alive *between calls*, so a video can be decoded chunk
by chunk while it is generated, with memory independent of its length, and the frames are
bit-identical to one ``vae.decode`` of the whole latent video. It drives the decoder through
``decoder(x, feat_cache=..., feat_idx=..., first_chunk=...)``, the interface diffusers' own
``AutoencoderKLWan._decode`` uses; if a diffusers version lacks it, the stream falls back to
decoding each chunk together with the previous ``overlap`` latent frames and keeping the new
frames only (an approximation whose error shrinks with the overlap).
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch

from ..loading.wan_dir import locate_wan_part
from .frames import LATENT_CHANNELS, check_latents, pixel_frames, to_uint8



def _is_vae_folder(path: Path) -> bool:
    """A Diffusers ``AutoencoderKLWan`` folder itself (rather than a Wan folder holding one)."""
    try:
        return json.loads((path / "config.json").read_text()).get("_class_name") == "AutoencoderKLWan"
    except (OSError, ValueError, AttributeError):
        return False


def _check_vae_folder(path: Path) -> Path:
    weights = list(path.glob("diffusion_pytorch_model*.safetensors")) + list(path.glob("diffusion_pytorch_model*.bin"))
    if not weights:
        raise FileNotFoundError(
            f"no VAE weights in {str(path)!r} (expected diffusion_pytorch_model.safetensors)"
        )
    return path


def locate_vae(path) -> tuple[str, Path]:
    """("diffusers", VAE folder) or ("original", Wan2.1_VAE.pth) for a Wan folder of either kind,
    a Diffusers VAE folder itself or an original VAE file itself."""
    path = Path(path)
    if path.is_file():
        return "original", path
    if path.is_dir() and _is_vae_folder(path):
        return "diffusers", _check_vae_folder(path)
    kind, found = locate_wan_part(path, "vae")
    return kind, _check_vae_folder(found) if kind == "diffusers" else found


def load_vae(path, device="cpu", dtype=torch.float32):
    """diffusers ``AutoencoderKLWan`` from any place :func:`locate_vae` accepts, local files only."""
    from diffusers import AutoencoderKLWan

    from ..loading.wan_vae import load_wan_vae

    kind, found = locate_vae(path)
    if kind == "original":
        vae = load_wan_vae(found, dtype)  # CheckpointError naming the file when it does not fit
    else:
        try:
            kwargs = {} if _has_accelerate() else {"low_cpu_mem_usage": False}  # no warning without accelerate
            vae = AutoencoderKLWan.from_pretrained(str(found), torch_dtype=dtype, local_files_only=True, **kwargs)
        except Exception as err:  # corrupt / mismatched files: say which folder
            raise RuntimeError(f"could not load the Wan VAE from {str(found)!r}: {err}") from err
    return vae.to(device).eval().requires_grad_(False)


def _has_accelerate() -> bool:
    try:
        import accelerate  # noqa: F401
        return True
    except ImportError:
        return False


class WanVAEDecoder:
    """Decodes [B, F, 16, h, w] latents into uint8 frames [B, 4F-3, 8h, 8w, 3]."""

    def __init__(self, vae):
        self.vae = vae
        cfg = vae.config
        if cfg.z_dim != LATENT_CHANNELS:
            raise ValueError(f"the VAE has z_dim {cfg.z_dim}, FLEX latents have {LATENT_CHANNELS} channels")
        self.mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        if self.mean.numel() != cfg.z_dim or self.std.numel() != cfg.z_dim:
            raise ValueError(f"VAE config latents_mean/latents_std must have z_dim = {cfg.z_dim} entries")
        self.spatial_ratio = int(getattr(vae, "spatial_compression_ratio", None) or 8)
        params = inspect.signature(vae.decoder.forward).parameters
        self.supports_cache = all(k in params for k in ("feat_cache", "feat_idx"))

    @classmethod
    def from_pretrained(cls, path, device="cpu", dtype=torch.float32) -> "WanVAEDecoder":
        return cls(load_vae(path, device, dtype))

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, F, 16, h, w] (DiT space) -> [B, 16, F, h, w] (VAE space, VAE dtype and device)."""
        check_latents(latents)
        z = latents.to(self.device, torch.float32).permute(0, 2, 1, 3, 4)
        z = z * self.std.to(z.device) + self.mean.to(z.device)
        return z.to(self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Whole video at once through diffusers' ``vae.decode``: uint8 [B, 4F-3, H, W, 3]."""
        out = self.vae.decode(self.denormalize(latents), return_dict=False)[0]
        return to_uint8(out)

    def stream(self, overlap: int = 3) -> "DecodeStream":
        """A chunk-by-chunk decoder; see :class:`DecodeStream`."""
        return DecodeStream(self, overlap=overlap)


class DecodeStream:
    """Decode a video chunk by chunk: ``frames = stream.decode(chunk_latents)``.

    The first call returns 4f - 3 frames, every later call 4f, together exactly the frames
    of one decode of the concatenated latents (cached mode). Memory does not grow with the
    number of chunks: only the decoder's per-conv cache of 2 time steps is kept.
    """

    def __init__(self, decoder: WanVAEDecoder, overlap: int = 3):
        if not (isinstance(overlap, int) and overlap >= 1):
            raise ValueError(f"overlap must be an int >= 1, got {overlap!r}")
        self.decoder = decoder
        self.vae = decoder.vae
        self.cached = decoder.supports_cache
        self.overlap = overlap
        self.latent_frames = 0
        self.frames_out = 0
        self._feat_cache = None
        self._context = None  # overlap mode: the last latent frames seen (DiT space)
        if self.cached:
            n_convs = self.vae.__dict__.get("_cached_conv_counts", {}).get("decoder")
            if n_convs is None:
                from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d
                n_convs = sum(isinstance(m, WanCausalConv3d) for m in self.vae.decoder.modules())
            self._feat_cache = [None] * n_convs

    @property
    def mode(self) -> str:
        return "cached" if self.cached else "overlap"

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Frames of the next chunk [B, f, 16, h, w] -> uint8 [B, n, H, W, 3]."""
        check_latents(latents)
        out = self._decode_cached(latents) if self.cached else self._decode_overlap(latents)
        self.latent_frames += latents.shape[1]
        self.frames_out += out.shape[1]
        return out

    __call__ = decode

    def _decode_cached(self, latents):
        vae = self.vae
        x = vae.post_quant_conv(self.decoder.denormalize(latents))  # 1x1x1 conv: per frame
        outs = []
        for i in range(x.shape[2]):
            first = self.latent_frames == 0 and i == 0
            outs.append(vae.decoder(
                x[:, :, i:i + 1], feat_cache=self._feat_cache, feat_idx=[0], first_chunk=first
            ))
        out = torch.cat(outs, dim=2)
        patch = getattr(vae.config, "patch_size", None)
        if patch is not None:
            from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify
            out = unpatchify(out, patch_size=patch)
        return to_uint8(out)

    def _decode_overlap(self, latents):
        context = self._context
        full = latents if context is None else torch.cat([context.to(latents.device), latents], dim=1)
        frames = self.decoder.decode(full)
        keep = pixel_frames(latents.shape[1]) if context is None else 4 * latents.shape[1]
        self._context = full[:, -self.overlap:].detach()
        return frames[:, -keep:]


