"""Where the evaluation models' weights live: one local folder, one sub-folder per model.

    <weights-dir>/                      (--weights-dir, or the FLEX_EVAL_WEIGHTS variable)
      dino_vitb16/      config.json + model.safetensors     transformers ViTModel (facebook/dino-vitb16)
      clip_vit_b32/     config.json + model.safetensors     transformers CLIPModel (openai/clip-vit-base-patch32)
      clip_vit_l14/     config.json + model.safetensors     transformers CLIPModel (openai/clip-vit-large-patch14)
      laion_aesthetic/  sa_0_4_vit_l_14_linear.pth          LAION aesthetic predictor, Linear(768, 1)
      musiq/            musiq_spaq_ckpt-358bb6af.pth        pyiqa MUSIQ trained on SPAQ
      raft/             raft_large_C_T_V1-22a6c225.pth      torchvision raft_large state dict (C+T)
                        (or raft_small_C_T_V1-ad48884c.pth: faster, not what VBench uses)
      amt/              amt-s.pth                           AMT-S frame interpolation (MCG-NKU/AMT release)

Nothing is ever downloaded: a missing file raises :class:`MissingWeightsError`, which names
the file and the metric that needs it.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV = "FLEX_EVAL_WEIGHTS"

DINO = "dino_vitb16"
CLIP_B32 = "clip_vit_b32"
CLIP_L14 = "clip_vit_l14"
AESTHETIC_HEAD = "laion_aesthetic/sa_0_4_vit_l_14_linear.pth"
MUSIQ_SPAQ = "musiq/musiq_spaq_ckpt-358bb6af.pth"
RAFT_LARGE = "raft/raft_large_C_T_V1-22a6c225.pth"
RAFT_SMALL = "raft/raft_small_C_T_V1-ad48884c.pth"
AMT_S = "amt/amt-s.pth"

LAYOUT = {  # path under the weights folder -> what it holds and where it comes from
    DINO: "DINO ViT-B/16: a transformers ViTModel folder (config.json + model.safetensors), "
          "e.g. facebook/dino-vitb16 saved with save_pretrained",
    CLIP_B32: "CLIP ViT-B/32: a transformers CLIPModel or CLIPVisionModelWithProjection folder, "
              "e.g. openai/clip-vit-base-patch32",
    CLIP_L14: "CLIP ViT-L/14: a transformers CLIPModel or CLIPVisionModelWithProjection folder, "
              "e.g. openai/clip-vit-large-patch14",
    AESTHETIC_HEAD: "LAION aesthetic predictor (state dict of nn.Linear(768, 1)), from LAION-AI/aesthetic-predictor",
    MUSIQ_SPAQ: "MUSIQ trained on SPAQ, the pyiqa release file of that name",
    RAFT_LARGE: "torchvision's raft_large weights Raft_Large_Weights.C_T_V1 (the original RAFT 'things' model)",
    RAFT_SMALL: "torchvision's raft_small weights Raft_Small_Weights.C_T_V1 (used only when raft_large is absent)",
    AMT_S: "AMT-S frame interpolation weights, the amt-s.pth that AMT (MCG-NKU/AMT) releases and VBench downloads "
           "into pretrained/amt_model/",
}


class MissingWeightsError(FileNotFoundError):
    """A weight file or folder a metric needs is not there."""

    def __init__(self, metric: str, path: Path, what: str):
        self.metric, self.path = metric, Path(path)
        super().__init__(f"{metric}: weights {str(path)!r} not found ({what}); see the weight folder layout "
                         f"in flex.evaluate.weights or docs/evaluate.md")


def weights_root(weights_dir=None) -> Path | None:
    """The weights folder: ``weights_dir``, else $FLEX_EVAL_WEIGHTS, else None."""
    chosen = weights_dir if weights_dir is not None else os.environ.get(ENV) or None
    if chosen is None:
        return None
    root = Path(chosen).expanduser()
    if root.exists() and not root.is_dir():
        raise ValueError(f"weights_dir {str(root)!r} is a file, not a folder")
    return root


def weight_path(weights_dir, relative: str, metric: str) -> Path:
    """``<weights folder>/<relative>``, which must exist; else MissingWeightsError naming it and ``metric``."""
    root = weights_root(weights_dir)
    if root is None:
        raise MissingWeightsError(metric, Path(relative), f"no weights folder: give --weights-dir or set {ENV}")
    path = root / relative
    if not path.exists():
        raise MissingWeightsError(metric, path, LAYOUT[relative])
    if "/" not in relative and not (path / "config.json").is_file():  # a transformers folder
        raise MissingWeightsError(metric, path / "config.json", LAYOUT[relative])
    return path


def load_state_dict(path: Path, metric: str) -> dict:
    """A tensor state dict from a .pth / .pt file without running pickled code.

    Accepts the layouts release files use: a plain state dict, or one under "params",
    "state_dict" or "model"; a "module." prefix (DataParallel) is dropped.
    """
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{metric}: weights {str(path)!r} cannot be read as a torch state dict: {err}") from None
    for key in ("params", "state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{metric}: weights {str(path)!r} are not a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}
