"""Saving a state dict as safetensors without ever leaving a half-written file behind."""
from __future__ import annotations

import os
from pathlib import Path


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
