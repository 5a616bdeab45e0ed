"""Wan's own VAE file (``Wan2.1_VAE.pth``, a ``WanVAE_`` state dict) as a diffusers ``AutoencoderKLWan``.

Both are the same causal 3D convolutional autoencoder; every tensor keeps its shape and only
the module paths differ. Everything is mapped -- decoder and post-quant conv (what decoding
uses) and also encoder and quant conv -- so the model loads strictly:

    conv1 / conv2                                 quant_conv / post_quant_conv
    {encoder,decoder}.conv1                       {encoder,decoder}.conv_in
    {encoder,decoder}.middle.{0,1,2}              ...mid_block.{resnets.0, attentions.0, resnets.1}
    {encoder,decoder}.head.{0,2}                  ...norm_out / conv_out
    encoder.downsamples.n                         encoder.down_blocks.n        (same flat order)
    decoder.upsamples.n                           decoder.up_blocks.s.{resnets.j | upsamplers.0}
                                                  (s, j = divmod(n, num_res_blocks + 2))
    inside a residual block: residual.{0,2,3,6}, shortcut -> norm1, conv1, norm2, conv2, conv_shortcut
    (attention blocks and resamplers keep their inner names)

The architecture numbers are read from the shapes. The latent normalisation is not in the
file: Wan keeps it as constants in its code (WanVAE in wan/modules/vae.py); they are
:data:`LATENTS_MEAN` / :data:`LATENTS_STD` here (decode ``z * std + mean``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .architecture import check_state_dict
from .errors import CheckpointError
from .wan_dir import read_original_part, rename_keys

LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)
LAYOUT = "Wan's VAE layout (WanVAE_: encoder.*, conv1, conv2, decoder.* with downsamples / middle / upsamples / head)"
RESNET_NAMES = {
    "residual.0.gamma": "norm1.gamma",
    "residual.2.weight": "conv1.weight", "residual.2.bias": "conv1.bias",
    "residual.3.gamma": "norm2.gamma",
    "residual.6.weight": "conv2.weight", "residual.6.bias": "conv2.bias",
    "shortcut.weight": "conv_shortcut.weight", "shortcut.bias": "conv_shortcut.bias",
}
RESAMPLE_NAMES = ("resample.1.weight", "resample.1.bias", "time_conv.weight", "time_conv.bias")
ATTENTION_NAMES = ("norm.gamma", "to_qkv.weight", "to_qkv.bias", "proj.weight", "proj.bias")


def _block_name(inner: str, source: str) -> str | None:
    """Name inside one residual block or resampler of the up / down path (None: neither)."""
    if inner in ATTENTION_NAMES:
        raise CheckpointError(f"{source!r} has attention blocks between the up / down sampling stages "
                              f"(attn_scales); Wan2.1's VAE has none and AutoencoderKLWan cannot hold them")
    return RESNET_NAMES.get(inner, inner if inner in RESAMPLE_NAMES else None)


def rules(num_res_blocks: int, source: str):
    """(regex, new name) rules of :func:`~.wan_dir.rename_keys` for a VAE with ``num_res_blocks``."""
    per_stage = num_res_blocks + 2  # the decoder has num_res_blocks + 1 residual blocks, then a resampler

    def up_block(match):
        stage, j = divmod(int(match[1]), per_stage)
        inner = _block_name(match[2], source)
        where = "upsamplers.0" if j == per_stage - 1 else f"resnets.{j}"
        return None if inner is None else f"decoder.up_blocks.{stage}.{where}.{inner}"

    def down_block(match):
        inner = _block_name(match[2], source)
        return None if inner is None else f"encoder.down_blocks.{match[1]}.{inner}"

    def mid_resnet(match):
        inner = RESNET_NAMES.get(match[3])
        return None if inner is None else f"{match[1]}.mid_block.resnets.{int(match[2]) // 2}.{inner}"

    return (
        (r"conv1\.(weight|bias)", r"quant_conv.\1"),
        (r"conv2\.(weight|bias)", r"post_quant_conv.\1"),
        (r"(encoder|decoder)\.conv1\.(weight|bias)", r"\1.conv_in.\2"),
        (r"(encoder|decoder)\.head\.0\.gamma", r"\1.norm_out.gamma"),
        (r"(encoder|decoder)\.head\.2\.(weight|bias)", r"\1.conv_out.\2"),
        (r"(encoder|decoder)\.middle\.([02])\.(.+)", mid_resnet),
        (r"(encoder|decoder)\.middle\.1\.(" + "|".join(n.replace(".", r"\.") for n in ATTENTION_NAMES) + ")",
         r"\1.mid_block.attentions.0.\2"),
        (r"encoder\.downsamples\.(\d+)\.(.+)", down_block),
        (r"decoder\.upsamples\.(\d+)\.(.+)", up_block),
    )


def _out_channels(sd: dict, key: str, source: str) -> int:
    if key not in sd or sd[key].dim() < 1:
        raise CheckpointError(f"{source!r} is not in {LAYOUT}: it has no {key!r}")
    return int(sd[key].shape[0])


def vae_config(sd: dict, source: str) -> dict:
    """``AutoencoderKLWan`` arguments of a state dict in Wan's VAE layout, read from the encoder's shapes."""
    base_dim = _out_channels(sd, "encoder.conv1.weight", source)
    z_dim = _out_channels(sd, "conv2.weight", source)
    entries = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.downsamples.")
                      and k.split(".")[2].isdigit()})
    stages, temporal, current = [], [], []  # out channels of the residual blocks of each stage
    for n in entries:
        prefix = f"encoder.downsamples.{n}."
        if prefix + "resample.1.weight" in sd:
            stages.append(current)
            temporal.append(prefix + "time_conv.weight" in sd)
            current = []
        else:
            current.append(_out_channels(sd, prefix + "residual.6.weight", source))
    stages.append(current)
    counts = {len(stage) for stage in stages}
    if len(counts) != 1 or 0 in counts:
        raise CheckpointError(f"{source!r}: the encoder's stages have {[len(s) for s in stages]} residual blocks; "
                              f"expected the same number (>= 1) in each")
    if any(stage[-1] % base_dim for stage in stages):
        raise CheckpointError(f"{source!r}: stage widths {[s[-1] for s in stages]} are not multiples of {base_dim}")
    return dict(
        base_dim=base_dim, z_dim=z_dim, dim_mult=[stage[-1] // base_dim for stage in stages],
        num_res_blocks=counts.pop(), attn_scales=[], temperal_downsample=temporal, dropout=0.0,
        latents_mean=list(LATENTS_MEAN), latents_std=list(LATENTS_STD),
    )


def wan_vae_to_diffusers(sd: dict, source: str, num_res_blocks: int) -> dict:
    """Wan VAE names -> ``AutoencoderKLWan`` names."""
    return rename_keys(sd, rules(num_res_blocks, source), source, LAYOUT)


def load_wan_vae(path, dtype: torch.dtype | None = None):
    """``AutoencoderKLWan`` (eval, no grad, on the CPU) from Wan's ``Wan2.1_VAE.pth``, loaded strictly.

    Its config carries Wan's latents_mean / latents_std. ``dtype`` None keeps the file's.
    """
    from diffusers import AutoencoderKLWan

    source = str(Path(path))
    original = read_original_part(path, "VAE")
    config = vae_config(original, source)
    sd = wan_vae_to_diffusers(original, source, config["num_res_blocks"])
    with torch.device("meta"):
        vae = AutoencoderKLWan(**config)
    what = (f"AutoencoderKLWan (mapped from {LAYOUT}: base_dim {config['base_dim']}, z_dim {config['z_dim']}, "
            f"dim_mult {config['dim_mult']}, {config['num_res_blocks']} residual blocks per stage)")
    check_state_dict(vae, sd, source, what)
    vae.load_state_dict(sd, strict=True, assign=True)
    if dtype is not None:
        vae = vae.to(dtype)
    return vae.eval().requires_grad_(False)
