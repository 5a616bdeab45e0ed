"""Motion smoothness (VBench): how well AMT-S re-synthesises every other frame from its neighbours.

As VBench's ``MotionSmoothness.motion_score``: the even frames (0, 2, 4, ...) are the inputs,
each padded by edge replication to multiples of 16 (split evenly, the odd pixel at the end);
AMT-S predicts the frame half-way between each adjacent pair; the prediction is cut back to size
and turned into uint8 by truncating 255 * x; each odd frame 1, 3, ... that has a prediction is
compared with it (mean absolute difference over pixels and channels, 0..255 levels), and the
score is (255 - the mean of those differences) / 255. A smooth video scores near 1.

VBench runs AMT-S at full size on the CPU and on any GPU with enough memory for the frame (its
down-scaling only starts for frames far above 1024 x 512 pixels); so does this module. AMT-S needs
both padded sides to be at least 128 pixels (its coarsest correlation level is 1/64 of the frame).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .amt import AMTS
from .preprocess import to_chw
from .weights import AMT_S, load_state_dict, weight_path

NAME = "motion_smoothness"
SUMMARY = "VBench: (255 - mean |odd frame - AMT-S interpolation of its even neighbours|) / 255"
WEIGHTS = (AMT_S,)
MIN_SIDE = 128


def pad_amount(size: int, divisor: int = 16) -> tuple[int, int]:
    """(before, after) padding that makes ``size`` a multiple of ``divisor`` (AMT's InputPadder)."""
    total = (-size) % divisor
    return total // 2, total - total // 2


def build_amt(state: dict) -> AMTS:
    model = AMTS()
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{NAME}: the weights are not AMT-S's (amt-s.pth): {err}") from None
    return model.eval()


def smoothness(frames, model: torch.nn.Module, device) -> float:
    """The motion smoothness of uint8 frames [T >= 3, H, W, 3] with an AMT-S ``model``."""
    levels = to_chw(frames)  # 0..255
    x = levels / 255.0
    if x.shape[0] < 3:
        raise ValueError(f"{NAME} needs at least 3 frames (two inputs and one frame between), got {x.shape[0]}")
    h, w = x.shape[-2:]
    (top, bottom), (left, right) = pad_amount(h), pad_amount(w)
    if h + top + bottom < MIN_SIDE or w + left + right < MIN_SIDE:
        raise ValueError(f"{NAME}: frames of {h}x{w} are too small for AMT-S (both sides must pad to >= {MIN_SIDE})")
    inputs = F.pad(x[0::2], (left, right, top, bottom), mode="replicate")
    targets = levels[1::2][: inputs.shape[0] - 1].double()
    t = torch.full((1, 1, 1, 1), 0.5, device=device)
    total = 0.0
    with torch.inference_mode():
        for k in range(targets.shape[0]):
            pred = model(inputs[k:k + 1].to(device), inputs[k + 1:k + 2].to(device), t)[0].cpu()
            pred = (pred[:, top:top + h, left:left + w] * 255.0).clamp(0, 255).to(torch.uint8)
            total += float((pred.double() - targets[k]).abs().mean())
    return (255.0 - total / targets.shape[0]) / 255.0


def load(weights_dir, device):
    path = weight_path(weights_dir, AMT_S, NAME)
    model = build_amt(load_state_dict(path, NAME)).to(device)
    return lambda frames, fps: smoothness(frames, model, device)
