"""Aesthetic quality (VBench): LAION's linear aesthetic head on CLIP ViT-L/14 embeddings.

Every frame: CLIP transform (as background consistency), L2-normalised image embedding, the
linear head's score (0..10) divided by 10; the segment's value is the mean over its frames.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .consistency import batched_features
from .models import clip_image_embeds, load_clip_vision
from .preprocess import clip_input
from .weights import AESTHETIC_HEAD, CLIP_L14, load_state_dict, weight_path

NAME = "aesthetic_quality"
SUMMARY = "VBench: LAION aesthetic head on normalised CLIP ViT-L/14 embeddings, / 10, mean over frames"
WEIGHTS = (CLIP_L14, AESTHETIC_HEAD)


def aesthetic_score(embeds: torch.Tensor, head: torch.nn.Linear) -> float:
    """Mean over frames of head(normalised embedding) / 10."""
    with torch.no_grad():
        return float((head(F.normalize(embeds.float(), dim=-1)).squeeze(-1) / 10).double().mean())


def load_head(weights_dir, embed_dim: int) -> torch.nn.Linear:
    path = weight_path(weights_dir, AESTHETIC_HEAD, NAME)
    state = load_state_dict(path, NAME)
    weight = state.get("weight")
    if weight is None or "bias" not in state or weight.ndim != 2 or weight.shape[0] != 1:
        raise ValueError(f"{NAME}: {str(path)!r} is not the state dict of an nn.Linear(D, 1) "
                         f"(keys {sorted(state)})")
    if weight.shape[1] != embed_dim:
        raise ValueError(f"{NAME}: the aesthetic head {str(path)!r} takes {weight.shape[1]}-wide embeddings but the "
                         f"CLIP model in {CLIP_L14}/ gives {embed_dim}-wide ones")
    head = torch.nn.Linear(embed_dim, 1)
    head.load_state_dict({"weight": state["weight"].float(), "bias": state["bias"].float()})
    return head.eval()


def load(weights_dir, device):
    model = load_clip_vision(weights_dir, CLIP_L14, NAME, device)
    head = load_head(weights_dir, model.config.projection_dim)

    def segment_value(frames, fps: float) -> float:
        embeds = batched_features(lambda x: clip_image_embeds(model, x), clip_input(frames), device)
        with torch.inference_mode():
            return aesthetic_score(embeds, head)

    return segment_value
