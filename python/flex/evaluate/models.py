"""Loading the transformers image encoders the model-based metrics use (from local folders only)."""
from __future__ import annotations

import torch

from .weights import weight_path


def load_vit(weights_dir, relative: str, metric: str, device):
    """A transformers ViTModel (no pooler) from ``<weights>/<relative>``, in eval mode on ``device``."""
    from transformers import ViTModel

    path = weight_path(weights_dir, relative, metric)
    model = ViTModel.from_pretrained(str(path), add_pooling_layer=False, local_files_only=True)
    return model.eval().to(device)


def load_clip_vision(weights_dir, relative: str, metric: str, device):
    """The image tower + projection of a transformers CLIP folder (CLIPModel or the vision model alone)."""
    from transformers import CLIPVisionModelWithProjection

    path = weight_path(weights_dir, relative, metric)
    model = CLIPVisionModelWithProjection.from_pretrained(str(path), local_files_only=True)
    return model.eval().to(device)


def clip_image_embeds(model, x: torch.Tensor) -> torch.Tensor:
    """CLIP's projected image embedding (what openai CLIP's encode_image returns)."""
    return model(pixel_values=x).image_embeds


def dino_cls(model, x: torch.Tensor) -> torch.Tensor:
    """The final-norm CLS token of a DINO ViT (what the DINO hub model returns), any input size."""
    return model(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state[:, 0]
