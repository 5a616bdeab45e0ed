"""Loading the causal Wan DiT from the checkpoints people actually have.

Accepted sources (``read_state_dict`` tells them apart):

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

``.pt`` files are read with ``torch.load(weights_only=True, map_location="cpu", mmap=True)``:
no code from the file is run, and tensors are paged in from disk instead of all being read
at once. Loading is strict: any missing, unexpected or mis-shaped key is an error that names
the file. LongLive's LoRA (``{"generator_lora": peft state dict}``, ``lora_A``/``lora_B`` on
every Linear of the attention blocks, rank 256 / alpha 256 in its config) is merged into the
dense weights with W += (alpha / rank) B @ A.
"""
from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import torch

PT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
WRAPPER_PARTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod", "module")
GENERATOR_KEYS = ("generator_ema", "generator")
OTHER_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "ema")
SHOW = 5  # keys listed per category in error messages


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or does not fit the model (message names the file)."""


# ---------------------------------------------------------------- reading files


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _torch_load(path: Path, trust_pickle: bool = False):
    """torch.load on the CPU, weights only unless ``trust_pickle``, memory-mapped when possible."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    kwargs = dict(map_location="cpu", weights_only=not trust_pickle)
    try:
        try:
            return torch.load(str(path), mmap=True, **kwargs)
        except RuntimeError as err:
            if "mmap" not in str(err):  # old (non-zip) torch.save format cannot be mmapped
                raise
            return torch.load(str(path), **kwargs)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if not trust_pickle and found:  # a class / function reference, not corruption
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds Python objects besides tensors "
                f"({found.group(1).strip()}), which weights-only loading refuses. If you trust "
                f"this file, load it with trust_pickle=True (CLI: --trust-checkpoint)."
            ) from err
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or not a PyTorch file: {_short(err)}") from err
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or not a PyTorch file: {_short(err)}") from err


def _short(err: Exception) -> str:
    """The informative part of a (often very long) loader error message."""
    text = str(err).strip() or type(err).__name__
    found = re.search(r"(WeightsUnpickler error:[^\n]*\n*[^\n]+)", text)
    if found:
        text = " ".join(found.group(1).split())
    text = text.splitlines()[0] if text.splitlines() else text
    return text[:300]


def _safetensors_load(path: Path) -> dict:
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # SafetensorError, OSError, ...
        raise CheckpointError(f"weights file {str(path)!r} is corrupt or not a safetensors file: {err}") from err


def _read_folder(folder: Path) -> tuple[dict, dict | None, str]:
    """(state dict, config.json dict or None, description) of a Wan / Diffusers model folder."""
    if (folder / "transformer").is_dir() and not (folder / "config.json").is_file():
        folder = folder / "transformer"  # a whole Diffusers pipeline folder
    config = None
    cfg_path = folder / "config.json"
    if cfg_path.is_file():
        try:
            config = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"model config {str(cfg_path)!r} is not valid JSON: {err}") from err
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    single = folder / "diffusion_pytorch_model.safetensors"
    sd: dict = {}
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as err:
            raise CheckpointError(f"shard index {str(index)!r} is not a valid index (needs weight_map): {err}") from err
        for shard in sorted(set(weight_map.values())):
            sd.update(_safetensors_load(folder / shard))
        missing = sorted(set(weight_map) - set(sd))
        if missing:
            raise CheckpointError(
                f"shards of {str(folder)!r} lack {len(missing)} keys listed in {index.name}: {missing[:SHOW]}"
            )
        source = f"{folder} ({len(set(weight_map.values()))} shards)"
    elif single.is_file():
        sd = _safetensors_load(single)
        source = str(single)
    else:
        others = sorted(folder.glob("*.safetensors")) + sorted(p for p in folder.iterdir() if p.suffix in PT_SUFFIXES)
        if len(others) == 1:
            return read_state_dict(others[0])[0], config, str(others[0])
        raise FileNotFoundError(
            f"no DiT weights in {str(folder)!r}: expected diffusion_pytorch_model.safetensors "
            f"(or its .index.json shards), or one .safetensors / .pt file"
        )
    return sd, config, source


def _select_generator(obj, path: Path, use_ema: bool | None, prefer_ema: bool = True):
    """The generator's state dict inside a training checkpoint, and which entry it was."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state dict")
    present = [k for k in GENERATOR_KEYS if k in obj and isinstance(obj[k], dict)]
    if present:
        if use_ema is None:
            key = present[0] if prefer_ema else present[-1]  # EMA: what the Self Forcing demo uses
        else:
            key = "generator_ema" if use_ema else "generator"
            if key not in present:
                raise CheckpointError(
                    f"checkpoint {str(path)!r} has no {key!r} entry (it has {sorted(obj)}); "
                    f"use {'--no-ema' if use_ema else '--ema'} instead"
                )
        return obj[key], key
    if _is_state_dict(obj):
        return obj, "state dict"
    for key in OTHER_CONTAINER_KEYS:
        if key in obj and _is_state_dict(obj[key]):
            return obj[key], key
    raise CheckpointError(
        f"checkpoint {str(path)!r} has neither generator/generator_ema entries nor tensors at "
        f"its top level (keys: {sorted(map(str, obj))[:10]})"
    )


def read_state_dict(path, use_ema: bool | None = None, trust_pickle: bool = False,
                    prefer_ema: bool = True) -> tuple[dict, dict]:
    """(state dict with original Wan names, info) of any supported DiT source.

    ``use_ema``: None = EMA weights when the checkpoint has them (the raw generator when it
    has them and ``prefer_ema`` is False), True = require EMA, False = require the raw one. ``info`` has ``source`` (what was read), ``entry`` (which
    part of a training checkpoint) and ``config_json`` (config.json contents, if any).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"DiT checkpoint {str(path)!r} does not exist")
    config, entry = None, "state dict"
    if path.is_dir():
        sd, config, source = _read_folder(path)
    elif path.suffix == ".safetensors":
        sd, source = _safetensors_load(path), str(path)
    else:
        sd, entry = _select_generator(_torch_load(path, trust_pickle), path, use_ema, prefer_ema)
        source = str(path)
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    sd = normalize_keys(sd)
    if is_diffusers_layout(sd):
        sd = diffusers_to_wan(sd)
    if not sd:
        raise CheckpointError(f"{source!r} contains no tensors")
    return sd, {"source": source, "entry": entry, "config_json": config}


# ---------------------------------------------------------------- key names


def normalize_key(key: str) -> str:
    """Drop wrapper parts (FSDP, activation checkpointing, torch.compile, DDP) and ``model.``."""
    parts = [p for p in key.split(".") if p not in WRAPPER_PARTS]
    if parts and parts[0] == "model":
        parts = parts[1:]
    return ".".join(parts)


def normalize_keys(sd: dict) -> dict:
    out = {}
    for key, value in sd.items():
        new = normalize_key(key)
        if new in out:
            raise CheckpointError(f"keys {key!r} and another one both map to {new!r}")
        out[new] = value
    return out


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


def diffusers_to_wan(sd: dict) -> dict:
    """Rename a Diffusers ``WanTransformer3DModel`` state dict to the original Wan names."""
    out = {}
    for key, value in sd.items():
        new = key
        for pattern, repl in _DIFFUSERS_RENAMES:
            new = re.sub(pattern, repl, new)
        out[new] = value
    return out


# ---------------------------------------------------------------- model shape


def infer_dims(sd: dict, config: dict | None = None) -> dict:
    """Model dimensions from tensor shapes, cross-checked with a config.json when given.

    Returns dim, ffn_dim, num_layers, text_dim, freq_dim, in_dim, out_dim, patch_size and,
    from the config only, num_heads / text_len / eps when present.
    """
    def shape(name):
        if name not in sd:
            raise CheckpointError(f"cannot infer the model size: the weights have no {name!r}")
        return tuple(sd[name].shape)

    pe = shape("patch_embedding.weight")  # [dim, in_dim, pt, ph, pw]
    if len(pe) != 5:
        raise CheckpointError(f"patch_embedding.weight must be 5-D, got {pe}")
    dim, in_dim, patch = pe[0], pe[1], tuple(pe[2:])
    layers = {int(m.group(1)) for k in sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m}
    head = shape("head.head.weight")[0]
    p = patch[0] * patch[1] * patch[2]
    dims = dict(
        dim=dim,
        ffn_dim=shape("blocks.0.ffn.0.weight")[0],
        num_layers=max(layers) + 1 if layers else 0,
        text_dim=shape("text_embedding.0.weight")[1],
        freq_dim=shape("time_embedding.0.weight")[1],
        in_dim=in_dim,
        out_dim=head // p,
        patch_size=patch,
    )
    if config:
        cfg = dict(config)
        if "num_attention_heads" in cfg:  # Diffusers transformer config
            cfg.setdefault("num_heads", cfg["num_attention_heads"])
            cfg.setdefault("dim", cfg["num_attention_heads"] * cfg.get("attention_head_dim", 128))
            cfg.setdefault("in_dim", cfg.get("in_channels"))
            cfg.setdefault("out_dim", cfg.get("out_channels"))
        for key in ("dim", "ffn_dim", "num_layers", "text_dim", "freq_dim", "in_dim", "out_dim"):
            if cfg.get(key) is not None and cfg[key] != dims[key]:
                raise CheckpointError(
                    f"config.json says {key} = {cfg[key]} but the weights have {key} = {dims[key]}"
                )
        for key in ("num_heads", "text_len", "eps"):
            if cfg.get(key) is not None:
                dims[key] = cfg[key]
    return dims


# ---------------------------------------------------------------- architecture


DEFAULT_HEAD_DIM = 128  # every released Wan2.1 size (1.3B: 1536 / 12, 14B: 5120 / 40)
_MATCH_FIELDS = ("dim", "ffn_dim", "num_layers", "text_dim", "freq_dim", "in_dim", "out_dim", "patch_size")


def _config_from_json(config: dict):
    """WanConfig from a Wan config.json or a Diffusers WanTransformer3DModel config."""
    from .models.wan import WanConfig

    if "num_attention_heads" in config:
        heads = config["num_attention_heads"]
        mapped = dict(
            dim=heads * config.get("attention_head_dim", DEFAULT_HEAD_DIM), num_heads=heads,
            ffn_dim=config.get("ffn_dim"), num_layers=config.get("num_layers"),
            text_dim=config.get("text_dim"), freq_dim=config.get("freq_dim"),
            in_dim=config.get("in_channels"), out_dim=config.get("out_channels"),
            patch_size=config.get("patch_size"), eps=config.get("eps"),
        )
        config = {k: v for k, v in mapped.items() if v is not None}
    return WanConfig.from_dict(config)


def resolve_config(sd: dict, config: dict | None = None, preset=None):
    """(WanConfig, how it was chosen) for a state dict.

    ``preset`` (a name or WanConfig) wins; else a config.json; else the preset whose shapes
    the weights have; else a config built from the shapes with head_dim 128 and text_len 512.
    """
    from .models.wan import WAN_PRESETS, WanConfig, wan_config

    if preset is not None:
        cfg = wan_config(preset)
        return cfg, f"preset {preset!r}" if isinstance(preset, str) else "given config"
    dims = infer_dims(sd, config)
    if config:
        try:
            return _config_from_json(config), "config.json"
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"config.json next to the weights is not a valid Wan config: {err}") from err
    for name, cfg in WAN_PRESETS.items():
        if all(getattr(cfg, f) == dims[f] for f in _MATCH_FIELDS):
            return cfg, f"preset {name!r} (matched from tensor shapes)"
    if dims["dim"] % DEFAULT_HEAD_DIM:
        raise CheckpointError(
            f"the weights (dim {dims['dim']}, {dims['num_layers']} layers) match no preset and dim is "
            f"not a multiple of {DEFAULT_HEAD_DIM}: give the preset / config explicitly"
        )
    fields = {f: dims[f] for f in _MATCH_FIELDS}
    return WanConfig(num_heads=dims["dim"] // DEFAULT_HEAD_DIM, **fields), "tensor shapes (head_dim 128)"


# ---------------------------------------------------------------- strict loading


def _preview(names) -> str:
    names = sorted(names)
    more = f", ... ({len(names) - SHOW} more)" if len(names) > SHOW else ""
    return ", ".join(names[:SHOW]) + more


def check_state_dict(model: torch.nn.Module, sd: dict, source: str, what: str = "the model") -> None:
    """Raise :class:`CheckpointError` unless ``sd`` has exactly the model's parameters.

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
    if missing or unexpected or mismatched:
        lines = [f"checkpoint {source!r} does not match {what}:"]
        if missing:
            lines.append(f"  {len(missing)} missing keys: {_preview(missing)}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected keys: {_preview(unexpected)}")
        if mismatched:
            lines.append(f"  {len(mismatched)} shape mismatches: {_preview(mismatched)}")
        raise CheckpointError("\n".join(lines))


# ---------------------------------------------------------------- LoRA (LongLive)


def read_lora(path, trust_pickle: bool = False) -> dict:
    """{module name: (A [r, in], B [out, r])} from a peft-style LoRA file.

    Accepts LongLive's ``{"generator_lora": ...}`` dict, a bare peft state dict (``.pt`` or
    ``.safetensors``), with or without ``base_model.model.`` / ``model.`` prefixes and
    adapter names (``lora_A.default.weight``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        obj = _safetensors_load(path)
    else:
        obj = _torch_load(path, trust_pickle)
    if isinstance(obj, dict) and "generator_lora" in obj:
        obj = obj["generator_lora"]
    if not _is_state_dict(obj):
        raise CheckpointError(f"LoRA file {str(path)!r} is not a state dict of tensors")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    other = []
    for key, value in obj.items():
        m = re.match(r"^(.*)\.lora_(A|B)(?:\.[^.]+)?\.weight$", key)
        if m is None:
            other.append(key)
            continue
        name = m.group(1)
        if name.startswith("base_model.model."):
            name = name[len("base_model.model."):]
        pairs.setdefault(normalize_key(name), {})[m.group(2)] = value
    if other:
        raise CheckpointError(
            f"LoRA file {str(path)!r} has {len(other)} entries that are not lora_A/lora_B weights "
            f"(DoRA, biases or embeddings are not supported): {_preview(other)}"
        )
    if not pairs:
        raise CheckpointError(f"LoRA file {str(path)!r} has no lora_A/lora_B weights")
    out = {}
    for name, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"LoRA file {str(path)!r}: {name} has only lora_{''.join(ab)}")
        a, b = ab["A"], ab["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise CheckpointError(
                f"LoRA file {str(path)!r}: {name} has lora_A {tuple(a.shape)} and lora_B "
                f"{tuple(b.shape)}; expected [r, in] and [out, r]"
            )
        out[name] = (a, b)
    return out


def merge_lora(sd: dict, lora: dict, alpha: float | None = None, scale: float = 1.0,
               source: str = "LoRA") -> dict:
    """W += scale * (alpha / r) * B @ A for every LoRA module (in float32, then W's dtype).

    ``alpha`` None means alpha = r (LongLive: rank 256, alpha 256). Returns a new dict.
    """
    out = dict(sd)
    missing = [name for name in lora if f"{name}.weight" not in sd]
    if missing:
        raise CheckpointError(
            f"{source}: {len(missing)} LoRA modules have no weight in the base checkpoint: {_preview(missing)}"
        )
    for name, (a, b) in lora.items():
        w = sd[f"{name}.weight"]
        if (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise CheckpointError(
                f"{source}: {name} LoRA gives {b.shape[0]}x{a.shape[1]} but the weight is {tuple(w.shape)}"
            )
        rank = a.shape[0]
        factor = scale * (rank if alpha is None else alpha) / rank
        delta = b.float() @ a.float()
        out[f"{name}.weight"] = (w.float() + factor * delta).to(w.dtype)
    return out


def atomic_save_safetensors(sd: dict, path, metadata: dict | None = None) -> Path:
    """Save a state dict as safetensors through a temporary file + os.replace."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# ---------------------------------------------------------------- the one call


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
    from .models.wan import CausalWanModel

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

