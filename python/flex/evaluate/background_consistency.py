"""Background consistency (VBench): CLIP ViT-B/32 image embeddings of every frame, :func:`consistency`.

Frames: shorter side resized to 224 (bicubic), centre crop 224, CLIP normalisation.
"""
from __future__ import annotations

from .consistency import batched_features, consistency
from .models import clip_image_embeds, load_clip_vision
from .preprocess import clip_input
from .weights import CLIP_B32

NAME = "background_consistency"
SUMMARY = "VBench: CLIP ViT-B/32 embedding similarity of each frame to the previous and the first frame"
WEIGHTS = (CLIP_B32,)


def load(weights_dir, device):
    model = load_clip_vision(weights_dir, CLIP_B32, NAME, device)

    def segment_value(frames, fps: float) -> float:
        return consistency(batched_features(lambda x: clip_image_embeds(model, x), clip_input(frames), device))

    return segment_value
