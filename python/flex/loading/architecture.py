"""Which Wan architecture a state dict is: shapes, config.json, presets; and whether the weights fit it."""
from __future__ import annotations

import re
from dataclasses import fields
from typing import Mapping

import torch

from .errors import CheckpointError, bad_dtypes, dtype_names, non_finite, preview

DEFAULT_HEAD_DIM = 128  # every released Wan2.1 size (1.3B: 1536 / 12, 14B: 5120 / 40)
_MATCH_FIELDS = ("dim", "ffn_dim", "num_layers", "text_dim", "freq_dim", "in_dim", "out_dim", "patch_size")
_CHECKED_FIELDS = ("dim", "ffn_dim", "num_layers", "text_dim", "freq_dim", "in_dim", "out_dim")
_CONFIG_ONLY_FIELDS = ("num_heads", "text_len", "eps")  # not visible in tensor shapes
# Diffusers WanTransformer3DModel config keys that already carry Wan's name.
_DIFFUSERS_SAME_NAMES = ("ffn_dim", "num_layers", "text_dim", "freq_dim", "patch_size", "eps")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def wan_config_fields(config) -> dict:
    """The WanConfig fields a config.json sets: Wan's own config.json, or a Diffusers
    ``WanTransformer3DModel`` config mapped to Wan's names (the one place that mapping lives)."""
    from ..models.wan import WanConfig

    if not isinstance(config, Mapping):
        raise CheckpointError(f"config.json must hold a JSON object, not a {type(config).__name__}")
    if "num_attention_heads" not in config:
        names = {f.name for f in fields(WanConfig)}
        return {k: v for k, v in config.items() if k in names}
    heads = config["num_attention_heads"]
    head_dim = config.get("attention_head_dim", DEFAULT_HEAD_DIM)
    for name, value in (("num_attention_heads", heads), ("attention_head_dim", head_dim)):
        if not _positive_int(value):
            raise CheckpointError(f"config.json: {name} must be an int >= 1, got {value!r}")
    mapped = dict(dim=heads * head_dim, num_heads=heads, in_dim=config.get("in_channels"),
                  out_dim=config.get("out_channels"), **{k: config.get(k) for k in _DIFFUSERS_SAME_NAMES})
    return {k: v for k, v in mapped.items() if v is not None}


def config_from_json(config) -> tuple:
    """(WanConfig, the fields config.json set) of a Wan or Diffusers config.json dict."""
    from ..models.wan import WanConfig

    given = wan_config_fields(config)
    try:
        return WanConfig.from_dict(given), given
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"config.json next to the weights is not a valid Wan config: {err}") from err


def infer_dims(sd: dict, config: dict | None = None) -> dict:
    """Model dimensions from tensor shapes, cross-checked with a config.json when given.

    Returns dim, ffn_dim, num_layers, text_dim, freq_dim, in_dim, out_dim, patch_size and,
    from the config only, num_heads / text_len / eps when present.
    """
    def shape(name, ndim):
        if name not in sd:
            raise CheckpointError(f"cannot infer the model size: the weights have no {name!r}")
        got = tuple(sd[name].shape)
        if len(got) != ndim:
            raise CheckpointError(f"{name} must be {ndim}-D, got shape {got}")
        return got

    pe = shape("patch_embedding.weight", 5)  # [dim, in_dim, pt, ph, pw]
    dim, in_dim, patch = pe[0], pe[1], tuple(pe[2:])
    if min(patch) < 1:
        raise CheckpointError(f"patch_embedding.weight has an empty patch: shape {pe}")
    layers = {int(m.group(1)) for k in sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m}
    head = shape("head.head.weight", 2)[0]
    dims = dict(
        dim=dim,
        ffn_dim=shape("blocks.0.ffn.0.weight", 2)[0],
        num_layers=max(layers) + 1 if layers else 0,
        text_dim=shape("text_embedding.0.weight", 2)[1],
        freq_dim=shape("time_embedding.0.weight", 2)[1],
        in_dim=in_dim,
        out_dim=head // (patch[0] * patch[1] * patch[2]),
        patch_size=patch,
    )
    if config is not None:
        cfg, given = config_from_json(config)
        for key in _CHECKED_FIELDS:
            if key in given and getattr(cfg, key) != dims[key]:
                raise CheckpointError(
                    f"config.json says {key} = {getattr(cfg, key)} but the weights have {key} = {dims[key]}"
                )
        dims.update({key: getattr(cfg, key) for key in _CONFIG_ONLY_FIELDS if key in given})
    return dims


def resolve_config(sd: dict, config: dict | None = None, preset=None):
    """(WanConfig, how it was chosen) for a state dict.

    ``preset`` (a name or WanConfig) wins; else a config.json; else the preset whose shapes
    the weights have; else a config built from the shapes with head_dim 128 and text_len 512.
    """
    from ..models.wan import WAN_PRESETS, WanConfig, wan_config

    if preset is not None:
        cfg = wan_config(preset)
        return cfg, f"preset {preset!r}" if isinstance(preset, str) else "given config"
    dims = infer_dims(sd, config)
    if config:
        return config_from_json(config)[0], "config.json"
    for name, cfg in WAN_PRESETS.items():
        if all(getattr(cfg, f) == dims[f] for f in _MATCH_FIELDS):
            return cfg, f"preset {name!r} (matched from tensor shapes)"
    if dims["dim"] % DEFAULT_HEAD_DIM:
        raise CheckpointError(
            f"the weights (dim {dims['dim']}, {dims['num_layers']} layers) match no preset and dim is "
            f"not a multiple of {DEFAULT_HEAD_DIM}: give the preset explicitly (preset=..., CLI: --preset)"
        )
    try:
        cfg = WanConfig(num_heads=dims["dim"] // DEFAULT_HEAD_DIM, **{f: dims[f] for f in _MATCH_FIELDS})
    except ValueError as err:
        raise CheckpointError(f"the tensor shapes give no valid Wan config: {err}") from err
    return cfg, "tensor shapes (head_dim 128)"


def check_state_dict(model: torch.nn.Module, sd: dict, source: str, what: str = "the model") -> None:
    """Raise :class:`CheckpointError` unless ``sd`` has exactly the model's parameters, as finite float tensors.

    Persistent buffers the checkpoint lacks are tolerated (they are computed, not learned).
    """
    expected = model.state_dict()
    params = {name for name, _ in model.named_parameters()}
    missing = [k for k in expected if k not in sd and k in params]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        f"{k} (checkpoint {tuple(sd[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    present = {k: sd[k] for k in expected if k in sd}
    not_float, not_finite = bad_dtypes(present), non_finite(present)
    if missing or unexpected or mismatched or not_float or not_finite:
        lines = [f"checkpoint {source!r} does not match {what}:"]
        if missing:
            lines.append(f"  {len(missing)} missing keys: {preview(missing)}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected keys: {preview(unexpected)}")
        if mismatched:
            lines.append(f"  {len(mismatched)} shape mismatches: {preview(mismatched)}")
        if not_float:
            lines.append(f"  {len(not_float)} tensors of a dtype weights cannot have (use {dtype_names()}): "
                         f"{preview(not_float)}")
        if not_finite:
            lines.append(f"  {len(not_finite)} tensors hold inf or NaN: {preview(not_finite)}")
        raise CheckpointError("\n".join(lines))
