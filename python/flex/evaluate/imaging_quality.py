"""Imaging quality (VBench): MUSIQ (SPAQ) through pyiqa, per frame, mean / 100.

Every frame: if its longer side exceeds 512 it is scaled so that side is 512 (bilinear, VBench's
default "longer" mode), then 0..1; MUSIQ scores it (0..100); the segment's value is the mean
over its frames divided by 100 (VBench's scale).
"""
from __future__ import annotations

import torch

from .preprocess import resize_longer_at_most, to_chw
from .weights import MUSIQ_SPAQ, load_state_dict, weight_path

NAME = "imaging_quality"
SUMMARY = "VBench: MUSIQ (SPAQ, pyiqa) score of each frame with the longer side at most 512, / 100"
WEIGHTS = (MUSIQ_SPAQ,)


def build_musiq(state: dict):
    """pyiqa's MUSIQ with the SPAQ release's architecture (one score output), weights loaded."""
    try:
        from pyiqa.archs.musiq_arch import MUSIQ
    except ImportError:
        raise ImportError(f"{NAME} needs pyiqa (MUSIQ): pip install 'flex-video[eval]'") from None
    model = MUSIQ(pretrained=False)  # pretrained=False: never fetch weights from the network
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{NAME}: the weights are not pyiqa's MUSIQ (SPAQ): {err}") from None
    return model.eval()


def load(weights_dir, device):
    path = weight_path(weights_dir, MUSIQ_SPAQ, NAME)
    model = build_musiq(load_state_dict(path, NAME)).to(device)

    def segment_value(frames, fps: float) -> float:
        x = resize_longer_at_most(to_chw(frames), 512) / 255.0
        total = 0.0
        with torch.inference_mode():
            for frame in x:  # MUSIQ's patching takes one image at a time
                total += float(model(frame[None].to(device)))
        return total / x.shape[0] / 100.0

    return segment_value
