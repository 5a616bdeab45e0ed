"""Parameter names: wrapper parts stripped, Diffusers ``WanTransformer3DModel`` names mapped to Wan's."""
from __future__ import annotations

import re

from .errors import CheckpointError

WRAPPER_PARTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod", "module")


def normalize_key(key: str) -> str:
    """Drop wrapper parts (FSDP, activation checkpointing, torch.compile, DDP) and ``model.``."""
    parts = [p for p in key.split(".") if p not in WRAPPER_PARTS]
    if parts and parts[0] == "model":
        parts = parts[1:]
    return ".".join(parts)


def _renamed(sd: dict, rename, source: str | None) -> dict:
    """sd with every key passed through ``rename``; two keys landing on one name is an error."""
    where = f"{source!r}: " if source else ""
    out, origin = {}, {}
    for key, value in sd.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{where}key {key!r} is a {type(key).__name__}; state dict keys must be strings")
        new = rename(key)
        if new in out:
            raise CheckpointError(f"{where}keys {origin[new]!r} and {key!r} both map to {new!r}")
        out[new], origin[new] = value, key
    return out


def normalize_keys(sd: dict, source: str | None = None) -> dict:
    """``normalize_key`` on every key (``source`` names the file in errors)."""
    return _renamed(sd, normalize_key, source)


def is_diffusers_layout(sd: dict) -> bool:
    return any(k.startswith("condition_embedder.") for k in sd)


_DIFFUSERS_RENAMES = (
    # (regex on a diffusers WanTransformer3DModel key, original Wan name)
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^proj_out\.", "head.head."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"\.scale_shift_table$", ".modulation"),
    (r"\.attn1\.", ".self_attn."),
    (r"\.attn2\.", ".cross_attn."),
    (r"\.to_q\.", ".q."),
    (r"\.to_k\.", ".k."),
    (r"\.to_v\.", ".v."),
    (r"\.to_out\.0\.", ".o."),
    (r"\.norm2\.", ".norm3."),  # diffusers' norm2 is the (affine) cross-attention norm
    (r"\.ffn\.net\.0\.proj\.", ".ffn.0."),
    (r"\.ffn\.net\.2\.", ".ffn.2."),
)


def diffusers_key_to_wan(key: str) -> str:
    for pattern, repl in _DIFFUSERS_RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def diffusers_to_wan(sd: dict, source: str | None = None) -> dict:
    """Rename a Diffusers ``WanTransformer3DModel`` state dict to the original Wan names."""
    return _renamed(sd, diffusers_key_to_wan, source)


def to_wan_names(sd: dict, source: str | None = None) -> dict:
    """Any accepted naming (wrapper parts, ``model.``, Diffusers) -> the original Wan names."""
    sd = normalize_keys(sd, source)
    return diffusers_to_wan(sd, source) if is_diffusers_layout(sd) else sd
