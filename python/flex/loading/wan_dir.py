"""The two Wan2.1 folder layouts that hold the text encoder, its tokenizer and the VAE.

* ``diffusers``: the Diffusers-format folder (e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers) with
  ``text_encoder/`` (UMT5EncoderModel), ``tokenizer/`` and ``vae/`` (AutoencoderKLWan).
* ``original``: the original download (Wan-AI/Wan2.1-T2V-1.3B, what Self Forcing's README
  fetches) with ``models_t5_umt5-xxl-enc-bf16.pth`` (Wan's T5 encoder state dict),
  ``google/umt5-xxl/`` (the tokenizer) and ``Wan2.1_VAE.pth`` (Wan's VAE state dict).
  Its ``config.json`` + ``diffusion_pytorch_model.safetensors`` are the DiT (see load_dit).

:func:`locate_wan_part` finds one part in either layout (the kind is told by the files),
:func:`check_wan_dir` checks that all three are there. The original ``.pth`` parts are read by
:func:`read_original_part` (weights only: nothing in the file is run) and renamed onto the
transformers / diffusers classes by :func:`rename_keys`, driven by the tables in
:mod:`.wan_t5` and :mod:`.wan_vae`.
"""
from __future__ import annotations

import re
from pathlib import Path

from .errors import CheckpointError, preview
from .files import is_state_dict, torch_load

PARTS = ("tokenizer", "text_encoder", "vae")
PART_NAMES = {"tokenizer": "tokenizer", "text_encoder": "text encoder", "vae": "VAE"}
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
TOKENIZER_DIR = "google/umt5-xxl"
VAE_FILE = "Wan2.1_VAE.pth"
# kind -> part -> (what the loader is given, the file or folder that must exist)
LAYOUTS = {
    "diffusers": {
        "tokenizer": ("tokenizer", "tokenizer/"),
        "text_encoder": ("text_encoder", "text_encoder/config.json"),
        "vae": ("vae", "vae/config.json"),
    },
    "original": {
        "tokenizer": (TOKENIZER_DIR, TOKENIZER_DIR + "/"),
        "text_encoder": (T5_FILE, T5_FILE),
        "vae": (VAE_FILE, VAE_FILE),
    },
}
KIND_NAMES = {"diffusers": "a Diffusers-format Wan2.1 folder (e.g. Wan2.1-T2V-1.3B-Diffusers)",
              "original": "an original Wan2.1 download (e.g. Wan-AI/Wan2.1-T2V-1.3B)"}
_LISTED = 12  # folder entries shown in error messages


def _exists(root: Path, needed: str) -> bool:
    path = root / needed.rstrip("/")
    return path.is_dir() if needed.endswith("/") else path.is_file()


def _present(root: Path, kind: str) -> list[str]:
    """The parts of layout ``kind`` that ``root`` has."""
    return [part for part, (_, needed) in LAYOUTS[kind].items() if _exists(root, needed)]


def _contents(root: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    if not names:
        return "nothing (it is empty)"
    more = f", ... ({len(names) - _LISTED} more)" if len(names) > _LISTED else ""
    return ", ".join(names[:_LISTED]) + more


def _needs(kind: str) -> str:
    return ", ".join(needed for _, needed in LAYOUTS[kind].values())


def _root(wan_dir) -> Path:
    root = Path(wan_dir)
    if root.is_file():
        raise FileNotFoundError(f"Wan folder {str(root)!r} is a file, not a folder")
    if not root.is_dir():
        raise FileNotFoundError(f"Wan folder {str(root)!r} does not exist")
    return root


def _kind_of(root: Path, parts) -> str:
    """The layout that has every one of ``parts``; otherwise a FileNotFoundError that says what is missing."""
    complete = [kind for kind in LAYOUTS if all(p in _present(root, kind) for p in parts)]
    if complete:
        return complete[0]
    what = ", ".join(PART_NAMES[p] for p in parts)
    partial = [kind for kind in LAYOUTS if _present(root, kind)]
    if len(partial) == 1:  # recognisably one kind, with parts missing
        kind = partial[0]
        missing = [LAYOUTS[kind][p][1] for p in parts if p not in _present(root, kind)]
        raise FileNotFoundError(
            f"no {what} in {str(root)!r}: it looks like {KIND_NAMES[kind]} but lacks {', '.join(missing)} "
            f"(that kind needs {_needs(kind)}). It contains: {_contents(root)}")
    raise FileNotFoundError(
        f"no {what} in {str(root)!r}, which is neither kind of Wan2.1 folder (--wan-dir): "
        f"{KIND_NAMES['diffusers']} needs {_needs('diffusers')}; {KIND_NAMES['original']} needs "
        f"{_needs('original')}. It contains: {_contents(root)}")


def locate_wan_part(wan_dir, part: str) -> tuple[str, Path]:
    """(kind, path to load) of ``part`` ("tokenizer", "text_encoder" or "vae") in a Wan folder of either kind."""
    if part not in LAYOUTS["diffusers"]:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    root = _root(wan_dir)
    kind = _kind_of(root, [part])
    return kind, root / LAYOUTS[kind][part][0]


def check_wan_dir(wan_dir) -> str:
    """The kind ("diffusers" or "original") of a Wan folder that has all of tokenizer, text encoder
    and VAE; FileNotFoundError naming what is missing (and what each kind needs) otherwise."""
    return _kind_of(_root(wan_dir), PARTS)


def read_original_part(path, what: str) -> dict:
    """The state dict in one of the original download's ``.pth`` files (weights only, memory-mapped)."""
    path = Path(path)
    obj = torch_load(path)  # CheckpointError naming the file: truncated, not torch, code in the pickle
    if not is_state_dict(obj):
        kind = f"a dict with keys {preview(map(str, obj))}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise CheckpointError(f"{what} file {str(path)!r} must hold a state dict (names -> tensors), "
                              f"but it holds {kind}")
    return obj


def _new_names(target, match) -> list[str]:
    names = target(match) if callable(target) else target
    if names is None:
        return []
    return [match.expand(name) for name in ((names,) if isinstance(names, str) else names)]


def rename_keys(sd: dict, rules, source: str, layout: str) -> dict:
    """Apply ``rules`` to every key: (regex the whole original name matches, new name(s)).

    A new name is a template with ``\\1``-style references to the regex's groups, a tuple of
    them, or a function of the match returning a name (None: no such weight in ``layout``).
    A key that no rule renames is an error listing all such keys: the file is not in
    ``layout``, and silently dropping weights would give a wrong model.
    """
    out, unknown = {}, []
    for key, tensor in sd.items():
        names = next((_new_names(target, match) for pattern, target in rules
                      if (match := re.fullmatch(pattern, key))), [])
        if not names:
            unknown.append(key)
        for name in names:
            out[name] = tensor
    if unknown:
        raise CheckpointError(
            f"{source!r} is not in {layout}: {len(unknown)} keys it does not have: {preview(unknown)}")
    return out
