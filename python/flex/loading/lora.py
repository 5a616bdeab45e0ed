"""LoRA (LongLive): read a peft-style LoRA file and merge it into the dense weights.

LongLive's LoRA (``{"generator_lora": peft state dict}``, ``lora_A``/``lora_B`` on every Linear
of the attention blocks, rank 256 / alpha 256 in its config) is merged as W += (alpha / rank) B @ A.
"""
from __future__ import annotations

import math
import re
from numbers import Real
from pathlib import Path

import torch

from .errors import CheckpointError, bad_dtypes, dtype_names, preview
from .files import is_state_dict, safetensors_load, torch_load
from .keys import normalize_key
from ..errors import SettingsError

_LORA_KEY = re.compile(r"^(.*)\.lora_(A|B)(?:\.[^.]+)?\.weight$")  # optional adapter name: lora_A.default.weight
_PEFT_PREFIX = "base_model.model."


def check_lora_factors(alpha, scale) -> None:
    """ValueError unless ``alpha`` is None or a finite number > 0 and ``scale`` a finite number."""
    if alpha is not None and not (isinstance(alpha, Real) and math.isfinite(alpha) and alpha > 0):
        raise SettingsError("lora_alpha", f"must be a finite number > 0 (or None: the rank), got {alpha!r}")
    if not (isinstance(scale, Real) and math.isfinite(scale)):
        raise SettingsError("lora_scale", f"must be a finite number, got {scale!r}")


def _check_pair(name: str, a: torch.Tensor, b: torch.Tensor, where: str) -> None:
    """A [r, in] and B [out, r] of one module: 2-D, same rank r >= 1, float."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
        raise CheckpointError(
            f"{where}: {name} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}; expected [r, in] and [out, r]"
        )
    if a.shape[0] == 0:
        raise CheckpointError(f"{where}: {name} has rank 0 (lora_A {tuple(a.shape)}), which is no LoRA")
    wrong = bad_dtypes({f"{name}.lora_A": a, f"{name}.lora_B": b})
    if wrong:
        raise CheckpointError(f"{where}: LoRA weights must be {dtype_names()}, got {', '.join(wrong)}")


def read_lora(path, trust_pickle: bool = False) -> dict:
    """{module name: (A [r, in], B [out, r])} from a peft-style LoRA file.

    Accepts LongLive's ``{"generator_lora": ...}`` dict, a bare peft state dict (``.pt`` or
    ``.safetensors``), with or without ``base_model.model.`` / ``model.`` prefixes and
    adapter names (``lora_A.default.weight``).
    """
    path = Path(path)
    where = f"LoRA file {str(path)!r}"
    if not path.is_file():
        raise FileNotFoundError(f"{where} {'is a folder' if path.is_dir() else 'does not exist'}")
    obj = safetensors_load(path) if path.suffix == ".safetensors" else torch_load(path, trust_pickle)
    if isinstance(obj, dict) and "generator_lora" in obj:
        obj = obj["generator_lora"]
    if not is_state_dict(obj):
        raise CheckpointError(f"{where} is not a state dict of tensors")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    other = []
    for key, value in obj.items():
        m = _LORA_KEY.match(key)
        if m is None:
            other.append(key)
            continue
        name = m.group(1)
        if name.startswith(_PEFT_PREFIX):
            name = name[len(_PEFT_PREFIX):]
        name, part = normalize_key(name), m.group(2)
        if part in pairs.setdefault(name, {}):
            raise CheckpointError(f"{where} has two lora_{part} weights for {name} (several adapters?): {key}")
        pairs[name][part] = value
    if other:
        raise CheckpointError(
            f"{where} has {len(other)} entries that are not lora_A/lora_B weights "
            f"(DoRA, biases or embeddings are not supported): {preview(other)}"
        )
    if not pairs:
        raise CheckpointError(f"{where} has no lora_A/lora_B weights")
    out = {}
    for name, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"{where}: {name} has only lora_{''.join(ab)}")
        _check_pair(name, ab["A"], ab["B"], where)
        out[name] = (ab["A"], ab["B"])
    return out


def merge_lora(sd: dict, lora: dict, alpha: float | None = None, scale: float = 1.0,
               source: str = "LoRA") -> dict:
    """W += scale * (alpha / r) * B @ A for every LoRA module (in float32, then W's dtype).

    ``alpha`` None means alpha = r (LongLive: rank 256, alpha 256). Returns a new dict.
    """
    check_lora_factors(alpha, scale)
    out = dict(sd)
    missing = [name for name in lora if f"{name}.weight" not in sd]
    if missing:
        raise CheckpointError(
            f"{source}: {len(missing)} LoRA modules have no weight in the base checkpoint: {preview(missing)}"
        )
    for name, (a, b) in lora.items():
        _check_pair(name, a, b, source)
        w = sd[f"{name}.weight"]
        if (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise CheckpointError(
                f"{source}: {name} LoRA gives {b.shape[0]}x{a.shape[1]} but the weight is {tuple(w.shape)}"
            )
        if bad_dtypes({name: w}):
            raise CheckpointError(f"{source}: base weight {name}.weight is {w.dtype}, not {dtype_names()}")
        rank = a.shape[0]
        factor = scale * (rank if alpha is None else alpha) / rank
        merged = (w.float() + factor * (b.float() @ a.float())).to(w.dtype)
        if not torch.isfinite(merged).all():
            raise CheckpointError(f"{source}: {name}.weight is not finite (inf or NaN) once the LoRA is merged")
        out[f"{name}.weight"] = merged
    return out
