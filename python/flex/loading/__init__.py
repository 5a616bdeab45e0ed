"""Loading the causal Wan DiT from the checkpoints people actually have: :func:`load_dit`.

Accepted sources (:func:`read_state_dict` tells them apart):

* Self Forcing / CausVid / LongLive generator checkpoints (``.pt``/``.pth``/``.bin``): a dict
  with ``"generator"`` and/or ``"generator_ema"`` (EMA is used when present unless asked
  otherwise), whose keys are prefixed ``model.`` (the ``WanDiffusionWrapper``) and sometimes
  carry ``_fsdp_wrapped_module.`` / ``_checkpoint_wrapped_module.`` / ``_orig_mod.`` parts;
  also a bare state dict.
* ``.safetensors`` files with the same names.
* A Wan2.1 base folder: ``config.json`` + ``diffusion_pytorch_model.safetensors`` (or shards
  listed in ``diffusion_pytorch_model.safetensors.index.json``), original Wan names.
* A Diffusers-format transformer folder (``WanTransformer3DModel``, e.g. ``<wan-dir>/
  transformer``), whose names are mapped back to the original Wan names.
* Krea Realtime 14B: ``krea-realtime-video-14b.safetensors`` (``model.``-prefixed Wan names), or a
  folder holding it (the Hugging Face repository root), or its ``transformer/`` shards.

Loading is strict: any missing, unexpected or mis-shaped key is an error that names the file.
The parts, one concept each:

* :mod:`.files`         reading files and folders safely (weights only, memory-mapped)
* :mod:`.keys`          key normalisation, Diffusers -> Wan names
* :mod:`.architecture`  shapes -> WanConfig (config.json, presets), strict state dict check
* :mod:`.lora`          LoRA read + merge
* :mod:`.krea`          Krea Realtime 14B's layouts; names-and-shapes check on the meta device
* :mod:`.save`          atomic safetensors save
* :mod:`.wan_dir`       the two Wan2.1 folder kinds (Diffusers, original download) and their parts
* :mod:`.wan_t5`        Wan's T5 encoder file -> transformers UMT5EncoderModel
* :mod:`.wan_vae`       Wan's VAE file -> diffusers AutoencoderKLWan (+ the latent normalisation)
"""
from __future__ import annotations

import torch

from .architecture import DEFAULT_HEAD_DIM, check_state_dict, infer_dims, resolve_config
from .errors import SHOW, WEIGHT_DTYPES, CheckpointError, dtype_names
from .files import GENERATOR_KEYS, OTHER_CONTAINER_KEYS, PT_SUFFIXES, read_state_dict
from .keys import WRAPPER_PARTS, diffusers_to_wan, is_diffusers_layout, normalize_key, normalize_keys, to_wan_names
from .krea import KREA_ARCHITECTURE, KREA_FILE, check_on_meta, krea_weights_file, meta_state_dict
from .lora import check_lora_factors, merge_lora, read_lora
from .save import atomic_save_safetensors
from .wan_dir import check_wan_dir, locate_wan_part
from .wan_t5 import load_wan_t5
from .wan_vae import LATENTS_MEAN, LATENTS_STD, load_wan_vae


def load_dit(
    path,
    preset=None,
    *,
    use_ema: bool | None = None,
    lora=None,
    lora_alpha: float | None = None,
    lora_scale: float = 1.0,
    device=None,
    dtype: torch.dtype | None = None,
    trust_pickle: bool = False,
    fp32_modulation: bool = True,
):
    """(CausalWanModel in eval mode, info dict) from any supported DiT source.

    use_ema      None: "generator_ema" when the checkpoint has it -- except with a LoRA, whose
                 base is the raw "generator" (LongLive: use_ema false); True / False force it
    lora         path of a peft-style LoRA (LongLive lora.pt) merged into the weights
    lora_alpha   LoRA alpha (default: the rank, i.e. scale 1; LongLive uses 256 / 256)
    dtype        parameter dtype (default: the checkpoint's)

    Raises :class:`CheckpointError` (naming the file and listing missing / unexpected keys)
    when the weights do not fit the model exactly.
    """
    from ..models.wan import CausalWanModel

    if dtype is not None and dtype not in WEIGHT_DTYPES:
        raise ValueError(f"dtype must be one of {dtype_names()} (or None: the checkpoint's), got {dtype!r}")
    if lora is not None:
        check_lora_factors(lora_alpha, lora_scale)  # before any file is read
    sd, info = read_state_dict(path, use_ema=use_ema, trust_pickle=trust_pickle, prefer_ema=lora is None)
    if lora is not None:
        sd = merge_lora(sd, read_lora(lora, trust_pickle), alpha=lora_alpha, scale=lora_scale,
                        source=f"LoRA {str(lora)!r} on {info['source']!r}")
        info["lora"] = str(lora)
    try:
        cfg, how = resolve_config(sd, info["config_json"], preset)
    except CheckpointError as err:
        raise CheckpointError(f"{info['source']!r}: {err}") from err
    with torch.device("meta"):
        model = CausalWanModel(cfg, fp32_modulation=fp32_modulation)
    what = f"the model ({how}: dim {cfg.dim}, {cfg.num_layers} layers, text_dim {cfg.text_dim})"
    check_state_dict(model, sd, info["source"], what)
    model.load_state_dict(sd, strict=True, assign=True)
    if dtype is not None or device is not None:
        model = model.to(device=device, dtype=dtype)
    info.update(config=cfg, config_source=how)
    return model.eval().requires_grad_(False), info


__all__ = [
    "CheckpointError", "DEFAULT_HEAD_DIM", "GENERATOR_KEYS", "KREA_ARCHITECTURE", "KREA_FILE", "LATENTS_MEAN",
    "LATENTS_STD", "OTHER_CONTAINER_KEYS", "PT_SUFFIXES", "SHOW", "WEIGHT_DTYPES", "WRAPPER_PARTS",
    "atomic_save_safetensors", "check_lora_factors", "check_on_meta", "check_state_dict", "check_wan_dir",
    "diffusers_to_wan", "infer_dims", "is_diffusers_layout", "krea_weights_file", "load_dit", "load_wan_t5",
    "load_wan_vae", "locate_wan_part", "merge_lora", "meta_state_dict", "normalize_key", "normalize_keys",
    "read_lora", "read_state_dict", "resolve_config", "to_wan_names",
]
