"""A tiny stand-in for the ORIGINAL Wan2.1 download (Wan-AI/Wan2.1-T2V-1.3B), built offline.

``make_original_wan_dir(root)`` lays out the files the way the original download has them:

    config.json + diffusion_pytorch_model.safetensors   the DiT ("tiny" preset, Wan names)
    models_t5_umt5-xxl-enc-bf16.pth                     Wan's T5Encoder state dict (Wan's names)
    google/umt5-xxl/                                    the tokenizer
    Wan2.1_VAE.pth                                      Wan's WanVAE_ state dict (Wan's names)

with random weights at tiny sizes (:mod:`wan_original_reference` builds them).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from tiny_assets import TEXT_DIM, make_dit_folder, make_tokenizer
from wan_original_reference import random_weights, t5_shapes, vae_shapes

T5_SIZES = dict(vocab=64, dim=TEXT_DIM, dim_attn=24, dim_ffn=48, num_heads=4, num_layers=2, num_buckets=16)
# Wan2.1's VAE structure (dim_mult [1, 2, 4, 4], 2 residual blocks, time resampling in the
# last two stages) at base width 4 instead of 96.
VAE_SIZES = dict(dim=4, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True])
T5_FILE, TOKENIZER_DIR, VAE_FILE = "models_t5_umt5-xxl-enc-bf16.pth", "google/umt5-xxl", "Wan2.1_VAE.pth"


def original_t5_weights(seed: int = 0, **sizes) -> dict:
    return random_weights(t5_shapes(**{**T5_SIZES, **sizes}), seed)


def original_vae_weights(seed: int = 0, **sizes) -> dict:
    return random_weights(vae_shapes(**{**VAE_SIZES, **sizes}), seed, head_scale=0.3)


def tiny_dit_config() -> dict:
    """config.json of the tiny DiT in Wan's own format (as the original download has it)."""
    from flex.models.config import WAN_PRESETS

    cfg = dataclasses.asdict(WAN_PRESETS["tiny"])
    cfg.pop("rope_base", None)
    cfg["patch_size"] = list(cfg["patch_size"])
    return {"_class_name": "WanModel", "model_type": "t2v", **cfg}


def make_original_wan_dir(root, seed: int = 0, dtype: torch.dtype = torch.float32, dit: bool = True) -> Path:
    """The original download's layout in ``root`` (weights in ``dtype``; the real T5 file is bf16)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if dit:
        make_dit_folder(root, config=tiny_dit_config())
    make_tokenizer(root / TOKENIZER_DIR)
    for name, sd in ((T5_FILE, original_t5_weights(seed)), (VAE_FILE, original_vae_weights(seed))):
        torch.save({k: v.to(dtype) for k, v in sd.items()}, root / name)
    return root
