"""Reading DiT weights from .pt / .safetensors files and model folders, safely and with clear errors.

``.pt`` files are read with ``torch.load(weights_only=True, map_location="cpu", mmap=True)``: no
code from the file is run, and tensors are paged in from disk instead of all being read at once.
Every failure is a :class:`CheckpointError` (or FileNotFoundError) that names the file.
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch

from .errors import SHOW, CheckpointError, short
from .formats import PT_SUFFIXES
from .keys import to_wan_names
from .krea import krea_weights_file

GENERATOR_KEYS = ("generator_ema", "generator")
OTHER_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "ema")
CONFIG_NAME = "config.json"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
SINGLE_NAME = "diffusion_pytorch_model.safetensors"


def is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _unpickling_message(path: Path, err: Exception, trust_pickle: bool) -> str:
    text = str(err)
    found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", text)
    if trust_pickle or not found:
        return f"checkpoint {str(path)!r} is corrupt or not a PyTorch file: {short(err)}"
    name = found.group(1).strip()
    if "is blocked" in text:  # os.system, eval, ...: the file would run code
        return (f"checkpoint {str(path)!r} would call {name} while being loaded (that is, run code); "
                f"weights-only loading refused it and nothing was run")
    return (f"checkpoint {str(path)!r} holds Python objects besides tensors ({name}), which weights-only "
            f"loading refuses. If you trust this file, load it with trust_pickle=True (CLI: --trust-checkpoint).")


def torch_load(path: Path, trust_pickle: bool = False):
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
        raise CheckpointError(_unpickling_message(path, err, trust_pickle)) from err
    except (ImportError, AttributeError) as err:  # a trusted pickle naming a class that cannot be imported
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be unpickled here: {short(err)}") from err
    except Exception as err:  # RuntimeError, EOFError, OSError, ...: truncated or not a torch file
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or not a PyTorch file: {short(err)}") from err


def safetensors_load(path: Path) -> dict:
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # SafetensorError, OSError, ...
        raise CheckpointError(f"weights file {str(path)!r} is corrupt or not a safetensors file: {err}") from err


def read_json_object(path: Path, what: str) -> dict:
    """The JSON object ({...}) in ``path``; anything else is an error naming ``what`` and the file."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{what} {str(path)!r} is not valid JSON: {err}") from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} {str(path)!r} must hold a JSON object ({{...}}), not a {type(obj).__name__}")
    return obj


def _read_shards(folder: Path, index: Path) -> tuple[dict, int]:
    """(state dict, number of shards) of a sharded safetensors folder."""
    weight_map = read_json_object(index, "shard index").get("weight_map")
    if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise CheckpointError(f"shard index {str(index)!r} needs a weight_map of parameter name -> shard file name")
    shards = sorted(set(weight_map.values()))
    absent = [s for s in shards if not (folder / s).is_file()]
    if absent:
        raise CheckpointError(f"shard index {str(index)!r} lists shards that are not in {str(folder)!r}: {absent[:SHOW]}")
    sd: dict = {}
    for shard in shards:
        sd.update(safetensors_load(folder / shard))
    missing = sorted(set(weight_map) - set(sd))
    if missing:
        raise CheckpointError(
            f"shards of {str(folder)!r} lack {len(missing)} keys listed in {index.name}: {missing[:SHOW]}"
        )
    return sd, len(shards)


def select_generator(obj, path: Path, use_ema: bool | None, prefer_ema: bool = True):
    """The generator's state dict inside a training checkpoint, and which entry it was."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state dict")
    if not obj:
        raise CheckpointError(f"checkpoint {str(path)!r} is an empty dict: it holds no weights")
    entries = {k: obj[k] for k in GENERATOR_KEYS if k in obj}
    if entries:
        if use_ema is None:
            usable = [k for k in GENERATOR_KEYS if isinstance(entries.get(k), dict)]
            if not usable:
                kinds = ", ".join(f"{k!r} is a {type(v).__name__}" for k, v in entries.items())
                raise CheckpointError(f"checkpoint {str(path)!r} has no state dict to load: {kinds}")
            key = usable[0] if prefer_ema else usable[-1]  # EMA: what the Self Forcing demo uses
        else:
            key = "generator_ema" if use_ema else "generator"
            if key not in entries:
                raise CheckpointError(
                    f"checkpoint {str(path)!r} has no {key!r} entry (it has {sorted(map(str, obj))}); load the "
                    f"other one with use_ema={not use_ema} (CLI: --weights {'generator' if use_ema else 'ema'})"
                )
            if not isinstance(entries[key], dict):
                raise CheckpointError(
                    f"checkpoint {str(path)!r}: its {key!r} entry is a {type(entries[key]).__name__}, not a state dict"
                )
        return obj[key], key
    if is_state_dict(obj):
        return obj, "state dict"
    for key in OTHER_CONTAINER_KEYS:
        if key in obj and is_state_dict(obj[key]):
            return obj[key], key
    raise CheckpointError(
        f"checkpoint {str(path)!r} has neither generator/generator_ema entries nor tensors at "
        f"its top level (keys: {sorted(map(str, obj))[:10]})"
    )


def _read_file(path: Path, use_ema, trust_pickle, prefer_ema) -> tuple[dict, str]:
    """(raw state dict, entry) of one weights file."""
    if path.suffix == ".safetensors":
        return safetensors_load(path), "state dict"
    return select_generator(torch_load(path, trust_pickle), path, use_ema, prefer_ema)


def _read_folder(folder: Path, use_ema, trust_pickle, prefer_ema) -> tuple[dict, dict | None, str, str]:
    """(raw state dict, config.json dict or None, description, entry) of a Wan / Diffusers model folder."""
    krea = krea_weights_file(folder)  # Krea Realtime's single file, preferred to its transformer/ shards
    if krea is None and (folder / "transformer").is_dir() and not (folder / CONFIG_NAME).is_file():
        folder = folder / "transformer"  # a whole Diffusers pipeline folder
    cfg_path = folder / CONFIG_NAME
    config = read_json_object(cfg_path, "model config") if cfg_path.is_file() else None
    if krea is not None:
        return safetensors_load(krea), config, str(krea), "state dict"
    index, single = folder / INDEX_NAME, folder / SINGLE_NAME
    if index.is_file():
        sd, count = _read_shards(folder, index)
        return sd, config, f"{folder} ({count} shards)", "state dict"
    if single.is_file():
        return safetensors_load(single), config, str(single), "state dict"
    others = sorted(folder.glob("*.safetensors")) + sorted(
        p for p in folder.iterdir() if p.suffix in PT_SUFFIXES and p.is_file())
    if len(others) == 1:
        sd, entry = _read_file(others[0], use_ema, trust_pickle, prefer_ema)
        return sd, config, str(others[0]), entry
    raise FileNotFoundError(
        f"no DiT weights in {str(folder)!r}: expected {SINGLE_NAME} "
        f"(or its .index.json shards), or one .safetensors / .pt file"
    )


def read_state_dict(path, use_ema: bool | None = None, trust_pickle: bool = False,
                    prefer_ema: bool = True) -> tuple[dict, dict]:
    """(state dict with original Wan names, info) of any supported DiT source.

    ``use_ema``: None = EMA weights when the checkpoint has them (the raw generator when it
    has them and ``prefer_ema`` is False), True = require EMA, False = require the raw one.
    ``info`` has ``source`` (what was read), ``entry`` (which part of a training checkpoint)
    and ``config_json`` (config.json contents, if any).
    """
    if use_ema not in (None, True, False):
        raise ValueError(f"use_ema must be None (automatic), True or False, got {use_ema!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"DiT checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        sd, config, source, entry = _read_folder(path, use_ema, trust_pickle, prefer_ema)
    else:
        (sd, entry), config, source = _read_file(path, use_ema, trust_pickle, prefer_ema), None, str(path)
    sd = to_wan_names({k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}, source)
    if not sd:
        raise CheckpointError(f"{source!r} contains no tensors")
    return sd, {"source": source, "entry": entry, "config_json": config}
