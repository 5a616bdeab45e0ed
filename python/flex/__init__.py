"""FLEX: Frequency-aware Length EXtension for autoregressive video diffusion."""
from . import _extension  # noqa: F401  (registers torch.ops.flex.* when flex._C is built (never fails))
from .cache import RingKVCache, frame_slots
from .config import FlexConfig
from .noise import antiphase_noise
from .rope import Rope3D, axis_planes, temporal_thetas
from . import ops, reference

__version__ = "0.1.0"

__all__ = [
    "FlexConfig", "Rope3D", "RingKVCache", "antiphase_noise", "axis_planes", "frame_slots",
    "ops", "reference", "temporal_thetas",
]
