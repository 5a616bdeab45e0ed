"""Krea Realtime 14B (Hugging Face ``krea/krea-realtime-video``): where its DiT weights are, and a
names-and-shapes check of a checkpoint on the meta device.

Krea Realtime 14B is a Self Forcing distillation of Wan2.1-T2V-14B: the "wan2.1-t2v-14b"
architecture, Wan's parameter names. Its Hugging Face repository holds the DiT twice:

* ``krea-realtime-video-14b.safetensors`` at the top: one safetensors file (28.6 GB) whose keys
  are the Wan names behind ``model.`` (``model.blocks.0.self_attn.q.weight``), i.e. the state
  dict of Self Forcing's ``WanDiffusionWrapper``. This is the file Krea's own inference code
  reads (github krea-ai/realtime-video, release_server.load_transformer: ``load_file`` then a
  strict ``load_state_dict`` into that wrapper; its README downloads only this file, into
  ``checkpoints/``).
* ``transformer/``: ``config.json`` + ``diffusion_pytorch_model-0000{1,2,3}-of-00003.safetensors``
  + ``diffusion_pytorch_model.safetensors.index.json``, the same tensors for Krea's Diffusers
  modular pipeline. Krea's inference code does not read it and no public source of Krea's
  documents its key names (third-party readers report plain Wan names, without ``model.``);
  the folder reader accepts plain, ``model.``-prefixed and Diffusers names, and refuses anything
  else key by key.

A folder holding the single file (the repository root, or ``checkpoints/``) is read from that
file, the layout Krea's own code uses; other weight files next to it are an error, not a guess.
:func:`check_on_meta` checks such a file against an architecture from its header alone, so a
28 GB checkpoint is verified without reading a single weight.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .architecture import check_state_dict, resolve_config
from .errors import CheckpointError
from .formats import PT_SUFFIXES, SAFETENSORS_SUFFIX
from .keys import to_wan_names

KREA_FILE = "krea-realtime-video-14b.safetensors"
KREA_ARCHITECTURE = "wan2.1-t2v-14b"

# safetensors header dtype names -> torch dtypes (the ones a DiT checkpoint can hold)
_HEADER_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def krea_weights_file(folder) -> Path | None:
    """Krea's single-file weights in ``folder``, or None when the folder does not hold it.

    Raises :class:`CheckpointError` when other weight files lie next to it (which one is meant?).
    """
    folder = Path(folder)
    single = folder / KREA_FILE
    if not single.is_file():
        return None
    others = sorted(p.name for p in folder.iterdir()
                    if p.is_file() and p.name != KREA_FILE and p.suffix in (SAFETENSORS_SUFFIX, *PT_SUFFIXES))
    if others:
        raise CheckpointError(
            f"{str(folder)!r} holds Krea's {KREA_FILE} and other weights ({', '.join(others[:5])}): "
            f"give the file to load instead of the folder"
        )
    return single


def meta_state_dict(path) -> dict:
    """{name: meta tensor of the stored shape and dtype} from a safetensors file's header; no data is read.

    ``path`` is a ``.safetensors`` file or a folder holding Krea's single file.
    """
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        found = krea_weights_file(path)
        if found is None:
            raise FileNotFoundError(f"{str(path)!r} holds no {KREA_FILE}: give a .safetensors file")
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = {name: (f.get_slice(name).get_dtype(), f.get_slice(name).get_shape()) for name in f.keys()}
    except Exception as err:  # SafetensorError, OSError, ...
        raise CheckpointError(f"weights file {str(path)!r} is corrupt or not a safetensors file: {err}") from err
    unknown = sorted(f"{name} ({dtype})" for name, (dtype, _) in header.items() if dtype not in _HEADER_DTYPES)
    if unknown:
        raise CheckpointError(f"weights file {str(path)!r} has tensors of unknown dtypes: {', '.join(unknown[:5])}")
    return {name: torch.empty(shape, dtype=_HEADER_DTYPES[dtype], device="meta")
            for name, (dtype, shape) in header.items()}


def check_on_meta(sd_or_path, preset=None, source: str | None = None):
    """(WanConfig, how it was chosen) after checking names and shapes against the architecture on the meta device.

    ``sd_or_path``: a state dict (real or meta tensors, any accepted naming) or a path for
    :func:`meta_state_dict`. ``preset`` as in :func:`flex.loading.load_dit` (default: from the
    shapes). Raises :class:`CheckpointError` listing missing, unexpected and mis-shaped keys.
    """
    from ..models.wan import CausalWanModel

    if isinstance(sd_or_path, dict):
        sd, source = sd_or_path, source or "state dict"
    else:
        sd, source = meta_state_dict(sd_or_path), source or str(sd_or_path)
    sd = to_wan_names(sd, source)
    try:
        cfg, how = resolve_config(sd, None, preset)
    except CheckpointError as err:
        raise CheckpointError(f"{source!r}: {err}") from err
    with torch.device("meta"):
        model = CausalWanModel(cfg)
    check_state_dict(model, sd, source, f"the model ({how}: dim {cfg.dim}, {cfg.num_layers} layers)")
    return cfg, how


__all__ = ["KREA_ARCHITECTURE", "KREA_FILE", "check_on_meta", "krea_weights_file", "meta_state_dict"]
