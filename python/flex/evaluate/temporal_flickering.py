"""Temporal flickering, computed as VBench computes it: (255 - mean adjacent-frame MAE) / 255.

The mean absolute error of each pair of adjacent frames (all pixels and channels, 0..255 levels)
is averaged over the pairs of the segment. 1.0 for a static video. VBench scores only clips
that its RAFT static filter finds static; here every segment is scored, so motion lowers the
score as flicker does (read it next to dynamic degree and motion energy).
"""
from __future__ import annotations

from .pixels import adjacent_mean_abs_diff

NAME = "temporal_flickering"
SUMMARY = "VBench: (255 - mean |frame[t+1] - frame[t]|) / 255 over the segment's frame pairs"
WEIGHTS: tuple = ()


def segment_value(frames, fps: float) -> float:
    diffs = adjacent_mean_abs_diff(frames)
    return (255.0 - float(diffs.mean())) / 255.0 if len(diffs) else 1.0


def load(weights_dir=None, device=None):
    return segment_value
