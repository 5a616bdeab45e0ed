"""NVIDIA FlashDreams (``pip install flashdreams``, Apache-2.0) as a peer row of the e2e table.

Its Wan path runs the same DiT with sink + window. Timing it needs its Wan transformer
importable (``flashdreams.recipes.wan.transformer.wan21``); on a CPU its GPU-only Triton RoPE
and cuDNN SDPA would be swapped for plain torch. Until that path is wired here, the row is
reported as skipped with the reason, never silently left out.
"""
from __future__ import annotations

import importlib
import importlib.util

MODULE = "flashdreams.recipes.wan.transformer.wan21"
LABEL = "FlashDreams (NVIDIA), Wan path"


def status() -> tuple[bool, str]:
    """(runnable here, why not)."""
    if importlib.util.find_spec("flashdreams") is None:
        return False, ("flashdreams is not installed (pip install flashdreams: v0.1.0 on PyPI needs "
                       "transformers>=5, einops, loguru, tyro, nvidia-ml-py and boto3, outside this project's "
                       "dependencies)")
    try:
        importlib.import_module(MODULE)
    except Exception as err:  # noqa: BLE001 -- report why, whatever it is
        return False, f"flashdreams is installed but its Wan transformer does not import: {type(err).__name__}: {err}"
    return False, "flashdreams imports, but its Wan path is not wired into this benchmark yet"


def skipped_row(base_row: dict) -> dict:
    """The e2e row saying why the peer was not timed."""
    return dict(base_row, path=LABEL, skipped=status()[1])


__all__ = ["LABEL", "skipped_row", "status"]
