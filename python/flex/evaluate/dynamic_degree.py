"""Dynamic degree (VBench): does the segment move? RAFT optical flow (torchvision's raft_large).

As VBench: frames are taken every round(fps / 8) frames (8 fps); for each pair of consecutive
taken frames (padded to a multiple of 8 by edge replication, centred) the flow is computed with
20 refinement steps and scored by the mean of its largest 5% magnitudes. The segment moves
(1.0) when at least round(4 * n / 16) pairs score above 6 * min(H, W) / 256 pixels, n being the
number of taken frames; else 0.0. The video's value is the share of moving segments.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .preprocess import to_chw
from .weights import RAFT_LARGE, RAFT_SMALL, MissingWeightsError, load_state_dict, weight_path

NAME = "dynamic_degree"
SUMMARY = "VBench: 1 when enough RAFT flow magnitudes (top 5% mean) exceed 6 * min(H, W) / 256 at 8 fps, else 0"
WEIGHTS = (RAFT_LARGE,)  # or RAFT_SMALL when the large one is absent
FLOW_UPDATES = 20


def sample_interval(fps: float) -> int:
    return max(1, round(fps / 8))


def thresholds(height: int, width: int, n_taken: int) -> tuple[float, int]:
    """(flow magnitude threshold in pixels, number of pairs that must exceed it)."""
    return 6.0 * min(height, width) / 256.0, round(4 * (n_taken / 16.0))


def top5_mean(flow: torch.Tensor) -> float:
    """Mean of the largest int(0.05 * H * W) flow magnitudes of one flow field [2, H, W]."""
    magnitude = flow.double().pow(2).sum(0).sqrt().flatten()
    k = int(magnitude.numel() * 0.05)
    return float(magnitude.topk(k).values.mean()) if k else float("nan")


def moves(scores, threshold: float, needed: int) -> bool:
    """VBench's check_move: True as soon as ``needed`` scores exceeded ``threshold`` (needed 0: any pair)."""
    count = 0
    for score in scores:
        if score > threshold:
            count += 1
        if count >= needed:
            return True
    return False


def pad_to_8(x: torch.Tensor) -> torch.Tensor:
    """Replicate-pad [N, 3, H, W] to multiples of 8, split evenly between the two sides."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % 8, (-w) % 8
    if not ph and not pw:
        return x
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")


def build_raft(state: dict, size: str = "large"):
    """torchvision's raft_large (VBench's RAFT) or raft_small, weights loaded."""
    try:
        from torchvision.models.optical_flow import raft_large, raft_small
    except ImportError:
        raise ImportError(f"{NAME} needs torchvision (RAFT): pip install 'flex-video[eval]'") from None
    model = (raft_large if size == "large" else raft_small)(weights=None, progress=False)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{NAME}: the weights are not torchvision's raft_{size}: {err}") from None
    return model.eval()


def find_raft(weights_dir) -> tuple:
    """(path, "large" | "small"): raft_large's file, else raft_small's; else the error names raft_large's."""
    try:
        return weight_path(weights_dir, RAFT_LARGE, NAME), "large"
    except MissingWeightsError as missing_large:
        try:
            return weight_path(weights_dir, RAFT_SMALL, NAME), "small"
        except MissingWeightsError:
            raise missing_large from None


def load(weights_dir, device):
    path, size = find_raft(weights_dir)
    model = build_raft(load_state_dict(path, NAME), size).to(device)

    def segment_value(frames, fps: float) -> float:
        x = to_chw(frames)[::sample_interval(fps)]
        threshold, needed = thresholds(x.shape[-2], x.shape[-1], x.shape[0])
        x = pad_to_8(x / 255.0 * 2.0 - 1.0)  # RAFT's input range [-1, 1]
        scores = []
        with torch.inference_mode():
            for a, b in zip(x[:-1], x[1:]):
                flow = model(a[None].to(device), b[None].to(device), num_flow_updates=FLOW_UPDATES)[-1]
                scores.append(top5_mean(flow[0].cpu()))
        return 1.0 if moves(scores, threshold, needed) else 0.0

    return segment_value
