"""Subject consistency (VBench): DINO ViT-B/16 CLS features of every frame, :func:`consistency`.

Frames: shorter side resized to 224 (bilinear, aspect kept, no crop), ImageNet normalisation.
"""
from __future__ import annotations

from .consistency import batched_features, consistency
from .models import dino_cls, load_vit
from .preprocess import dino_input
from .weights import DINO

NAME = "subject_consistency"
SUMMARY = "VBench: DINO ViT-B/16 feature similarity of each frame to the previous and the first frame"
WEIGHTS = (DINO,)


def load(weights_dir, device):
    model = load_vit(weights_dir, DINO, NAME, device)

    def features(frames):
        return batched_features(lambda x: dino_cls(model, x), dino_input(frames), device)

    def segment_value(frames, fps: float) -> float:
        return consistency(features(frames))

    segment_value.features = features  # the sink-collapse check's feature distance uses them too
    return segment_value
