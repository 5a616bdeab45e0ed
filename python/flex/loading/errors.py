"""The loading error, the dtypes weights may have, and the short forms error messages use."""
from __future__ import annotations

import re

import torch

SHOW = 5  # keys listed per category in error messages
# Dtypes the model computes in. Integer, bool, complex and float8 tensors are not weights it can use.
WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or does not fit the model (message names the file)."""


def preview(names) -> str:
    """The first SHOW names, sorted, and how many more there are."""
    names = sorted(names)
    more = f", ... ({len(names) - SHOW} more)" if len(names) > SHOW else ""
    return ", ".join(names[:SHOW]) + more


def short(err: Exception) -> str:
    """The informative part of a (often very long) loader error message."""
    text = str(err).strip() or type(err).__name__
    found = re.search(r"(WeightsUnpickler error:[^\n]*\n*[^\n]+)", text)
    if found:
        text = " ".join(found.group(1).split())
    text = text.splitlines()[0] if text.splitlines() else text
    return text[:300]


def bad_dtypes(tensors: dict) -> list[str]:
    """``"name (dtype)"`` for every tensor whose dtype is not one of WEIGHT_DTYPES."""
    return [f"{k} ({v.dtype})" for k, v in tensors.items() if v.dtype not in WEIGHT_DTYPES]


def non_finite(tensors: dict) -> list[str]:
    """Names of the float tensors that hold an inf or a NaN (they would silently poison every output).

    Meta tensors hold no values (a names-and-shapes check of a checkpoint too large to read), so they pass.
    """
    return [k for k, v in tensors.items()
            if v.dtype in WEIGHT_DTYPES and not v.is_meta and not torch.isfinite(v).all()]


def dtype_names() -> str:
    return ", ".join(str(d).replace("torch.", "") for d in WEIGHT_DTYPES)
