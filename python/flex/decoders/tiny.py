"""The tiny Wan 2.1 latent decoder (TAEHV with the ``taew2_1.pth`` weights), streamed chunk by chunk.

TAEHV is the tiny autoencoder for Hunyuan Video / Wan latents published by madebyollin
(repository madebyollin/taehv; ``taew2_1.pth``, and ``safetensors/taew2_1.safetensors`` with the
same keys, are its Wan 2.1 weights). Self Forcing's real-time demo decodes with it. It is much
cheaper than a full video VAE, at somewhat lower quality (its README: about 5x faster than the
Hunyuan VAE on a GPU, in over 10x less memory). The decoder is written here
from the facts of that repository's ``taehv.py`` and README (none of its code is used):

* Input: Wan 2.1 latents [B, F, 16, h, w] **as the DiT produces them** (its normalised space;
  TAEHV applies no latents_mean / latents_std, unlike :mod:`flex.decoders.wan_vae`). They first pass a soft
  clamp 3 tanh(z / 3).
* A 3x3 conv (16 -> 256) + ReLU, then three stages of width 256, 128, 64, each: 3 memory
  blocks, a 2x nearest-neighbour spatial upsample, a temporal upsample (by 1, 2, 2) and a
  bias-free 3x3 conv to the next width (128, 64, 64); last ReLU + a 3x3 conv (64 -> 3). All
  convs are 2D, applied per frame.
* Memory block: out_t = relu(conv(cat[x_t, x_{t-1}]) + x_t), where x_{t-1} is the block's own
  input one frame earlier (zeros at the first frame) and conv = 3x3, ReLU, 3x3, ReLU, 3x3.
  This is the only way information flows in time, so streaming keeps one frame per block.
* Temporal upsample by s: a bias-free 1x1 conv makes s * C channels; channel group j becomes
  output frame t * s + j. So F latent frames give 4F frames; the first 3 are dropped (they
  align the causal output with the Wan VAE's 4F - 3), and the output lies in [0, 1] (clamped).

Parameter names are those of the published file: ``decoder.<index in the layer sequence>.*``
(``decoder.1`` the first conv, ``decoder.{3,4,5,9,10,11,15,16,17}.conv.{0,2,4}`` the memory
blocks, ``decoder.{7,13,19}.conv`` the temporal upsamples, ``decoder.{8,14,20}`` the stage-end
convs, ``decoder.22`` the last conv). Only the decoder is implemented: the file's
``encoder.*`` keys are dropped on loading; every decoder key must be present with its shape.
(Hunyuan's ``taehv.pth`` has the same shapes but another latent space: it loads, and decodes
Wan latents wrongly.)
Frames become uint8 by :func:`flex.decoders.frames.unit_to_uint8` (255 x, truncated, as for the Wan VAE).

A 480x832 pixel frame costs about 136 GFLOP. On a CPU decode in float32: without native bf16
convolution kernels (an AVX2-only torch build) bf16 measured about 15x slower.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..loading.architecture import check_state_dict
from ..loading.errors import WEIGHT_DTYPES, CheckpointError, dtype_names
from ..loading.files import is_state_dict, safetensors_load, torch_load
from .frames import LATENT_CHANNELS, check_latents, unit_to_uint8

WEIGHTS_NAME = "taew2_1.pth"
WIDTHS = (256, 128, 64, 64)  # stage widths, then the width before the last conv
TIME_STRIDES = (1, 2, 2)     # temporal upsampling of each stage
MEMORY_BLOCKS_PER_STAGE = 3
SPATIAL_RATIO = 8
TRIM_FRAMES = 3              # start frames dropped: F latent frames give 4F - 3
ENCODER_PREFIX = "encoder."  # keys of the published file's encoder, not implemented here


def _conv3x3(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class SoftClamp(nn.Module):
    """3 tanh(x / 3): close to the identity near 0, bounded to (-3, 3) (tames outlier latents)."""

    def forward(self, x):
        return torch.tanh(x / 3) * 3


class MemoryBlock(nn.Module):
    """Residual 3-conv block that also sees its own input one frame earlier (``past``)."""

    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Sequential(
            _conv3x3(2 * width, width), nn.ReLU(), _conv3x3(width, width), nn.ReLU(), _conv3x3(width, width),
        )

    def forward(self, x, past):
        return torch.relu(self.conv(torch.cat([x, past], 1)) + x)


class TimeUpsample(nn.Module):
    """[N*T, C, H, W] -> [N*T*stride, C, H, W]: a 1x1 conv makes stride * C channels per frame,
    channel group j of frame t becomes frame t * stride + j."""

    def __init__(self, width: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(width, width * stride, 1, bias=False)

    def forward(self, x):
        n, c, h, w = x.shape
        return self.conv(x).reshape(n * self.stride, c, h, w)


class TinyWanDecoderNet(nn.Module):
    """The TAEHV decoder network for Wan 2.1 latents; ``state_dict()`` keys are those of ``taew2_1.pth``."""

    def __init__(self):
        super().__init__()
        layers = [SoftClamp(), _conv3x3(LATENT_CHANNELS, WIDTHS[0]), nn.ReLU()]
        for stage, stride in enumerate(TIME_STRIDES):
            width = WIDTHS[stage]
            layers += [MemoryBlock(width) for _ in range(MEMORY_BLOCKS_PER_STAGE)]
            layers += [nn.Upsample(scale_factor=2), TimeUpsample(width, stride),
                       _conv3x3(width, WIDTHS[stage + 1], bias=False)]
        layers += [nn.ReLU(), _conv3x3(WIDTHS[-1], 3)]
        self.decoder = nn.Sequential(*layers)

    def new_memory(self) -> list:
        """The memory at a video's start: one entry per memory block, None = zeros."""
        return [None] * sum(isinstance(layer, MemoryBlock) for layer in self.decoder)

    def forward(self, latents: torch.Tensor, memory: list) -> torch.Tensor:
        """[B, T, 16, h, w] -> raw frames [B, 4T, 3, 8h, 8w] (not trimmed, not clamped).

        All frames of the call go through each layer at once; ``memory`` (from
        :meth:`new_memory` or the previous call) supplies each memory block's input of the frame
        before the first, and is updated in place to this call's last frame.
        """
        batch, frames = latents.shape[:2]
        x = latents.flatten(0, 1)
        slot = 0
        for layer in self.decoder:
            if isinstance(layer, MemoryBlock):
                seq = x.unflatten(0, (batch, frames))
                before = memory[slot] if memory[slot] is not None else torch.zeros_like(seq[:, :1])
                past = torch.cat([before, seq[:, :-1]], 1).flatten(0, 1)
                memory[slot] = seq[:, -1:].clone()  # a copy: the chunk's activations need not stay alive
                slot += 1
                x = layer(x, past)
            else:
                x = layer(x)
                if isinstance(layer, TimeUpsample):
                    frames *= layer.stride
        return x.unflatten(0, (batch, frames))


def find_tiny_vae_weights(folder) -> Path | None:
    """``taew2_1.pth`` (or ``taew2_1.safetensors``) in ``folder`` (e.g. the Wan folder), if there."""
    for name in (WEIGHTS_NAME, Path(WEIGHTS_NAME).with_suffix(".safetensors").name):
        candidate = Path(folder) / name
        if candidate.is_file():
            return candidate
    return None


def read_tiny_vae_state_dict(path) -> tuple[dict, str]:
    """(decoder state dict, source) of a TAEHV weights file (.pth weights only, or .safetensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tiny VAE weights {str(path)!r} do not exist (expected a file such as {WEIGHTS_NAME})")
    sd = safetensors_load(path) if path.suffix == ".safetensors" else torch_load(path)
    if not is_state_dict(sd):
        raise CheckpointError(f"tiny VAE weights {str(path)!r} hold a {type(sd).__name__}, not a state dict of tensors")
    return {k: v for k, v in sd.items() if not k.startswith(ENCODER_PREFIX)}, str(path)


def load_tiny_vae_net(path, device="cpu", dtype=torch.float32) -> TinyWanDecoderNet:
    """:class:`TinyWanDecoderNet` with the weights of ``path``; CheckpointError naming the keys that do not fit."""
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"dtype must be one of {dtype_names()}, got {dtype!r}")
    sd, source = read_tiny_vae_state_dict(path)
    net = TinyWanDecoderNet()
    check_state_dict(net, sd, source, f"the tiny Wan 2.1 decoder (TAEHV, {WEIGHTS_NAME} layout)")
    net.load_state_dict(sd, strict=True)
    return net.to(device=device, dtype=dtype).eval().requires_grad_(False)


class TinyVAEDecoder:
    """Decodes [B, F, 16, h, w] DiT-space latents into uint8 frames [B, 4F-3, 8h, 8w, 3] (CPU).

    The same interface as :class:`flex.decoders.WanVAEDecoder`: ``decode`` for a whole video,
    ``stream()`` for chunk by chunk.
    """

    spatial_ratio = SPATIAL_RATIO

    def __init__(self, net: TinyWanDecoderNet):
        self.net = net.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, path, device="cpu", dtype=torch.float32) -> TinyVAEDecoder:
        """From ``taew2_1.pth`` (read with weights_only=True) or a .safetensors of the same keys."""
        return cls(load_tiny_vae_net(path, device, dtype))

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """A whole video: uint8 [B, 4F-3, 8h, 8w, 3]."""
        return self.stream().decode(latents)

    def stream(self) -> TinyDecodeStream:
        """A chunk-by-chunk decoder; see :class:`TinyDecodeStream`."""
        return TinyDecodeStream(self)


class TinyDecodeStream:
    """Decode a video chunk by chunk: ``frames = stream.decode(chunk_latents)``.

    The first call returns 4f - 3 frames, every later call 4f; together they are exactly the
    frames of one decode of the concatenated latents. Only one frame per memory block is
    carried between calls, so memory does not grow with the video's length.
    """

    def __init__(self, decoder: TinyVAEDecoder):
        self.decoder = decoder
        self.memory = decoder.net.new_memory()
        self.latent_frames = 0
        self.frames_out = 0
        self._layout = None  # (B, h, w) of the first chunk: later chunks must match

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Frames of the next chunk [B, f, 16, h, w] -> uint8 [B, n, 8h, 8w, 3]."""
        check_latents(latents)
        layout = (latents.shape[0], *latents.shape[3:])
        if self._layout is not None and layout != self._layout:
            raise ValueError(f"latents of a stream must keep batch and size (B, h, w) = {self._layout}, "
                             f"got {layout} (shape {tuple(latents.shape)})")
        raw = self.decoder.net(latents.to(self.decoder.device, self.decoder.dtype), self.memory)
        if self.latent_frames == 0:
            raw = raw[:, TRIM_FRAMES:]
        out = unit_to_uint8(raw.transpose(1, 2))
        self._layout = layout
        self.latent_frames += latents.shape[1]
        self.frames_out += out.shape[1]
        return out

    __call__ = decode
