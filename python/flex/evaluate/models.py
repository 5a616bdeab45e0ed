"""Loading the transformers image encoders the model-based metrics use (from local folders only).

A folder whose weights do not cover the model (missing or mis-shaped tensors) is an error:
transformers would otherwise fill the gaps with random numbers and the scores would be noise.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from .weights import weight_path


def _from_pretrained(cls, path, metric: str, **kwargs):
    """``cls.from_pretrained`` of a local folder; every tensor must be there with its shape."""
    try:
        model, info = cls.from_pretrained(str(path), local_files_only=True, output_loading_info=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"{metric}: the weights in {str(path)!r} do not fit the model its config.json "
                         f"describes, or cannot be read: {err}") from None
    problems = list(info.get("missing_keys", [])) + [str(m[0]) if isinstance(m, tuple) else str(m)
                                                     for m in info.get("mismatched_keys", [])]
    if problems:
        raise ValueError(f"{metric}: the weights in {str(path)!r} do not fit the model its config.json describes "
                         f"(missing or mis-shaped: {', '.join(problems[:5])}{' ...' if len(problems) > 5 else ''})")
    return model.eval()


def load_vit(weights_dir, relative: str, metric: str, device):
    """A transformers ViTModel (no pooler) from ``<weights>/<relative>``, in eval mode on ``device``."""
    from transformers import ViTModel

    path = weight_path(weights_dir, relative, metric)
    return _from_pretrained(ViTModel, path, metric, add_pooling_layer=False).to(device)


def load_clip_vision(weights_dir, relative: str, metric: str, device):
    """The image tower + projection of a transformers CLIP folder (CLIPModel or the vision model alone)."""
    from transformers import AutoConfig, CLIPVisionModelWithProjection

    path = weight_path(weights_dir, relative, metric)
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    if config.model_type == "clip":  # a whole CLIPModel: its projection width is on the outer config
        vision = config.vision_config
        vision.projection_dim = config.projection_dim
        config = vision
    with _quiet_transformers():  # a CLIPModel folder's text tower is expected to be left unused
        return _from_pretrained(CLIPVisionModelWithProjection, path, metric, config=config).to(device)


@contextmanager
def _quiet_transformers():
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def clip_image_embeds(model, x: torch.Tensor) -> torch.Tensor:
    """CLIP's projected image embedding (what openai CLIP's encode_image returns)."""
    return model(pixel_values=x).image_embeds


def dino_cls(model, x: torch.Tensor) -> torch.Tensor:
    """The final-norm CLS token of a DINO ViT (what the DINO hub model returns), any input size."""
    return model(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state[:, 0]
