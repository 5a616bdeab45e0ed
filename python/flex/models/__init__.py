"""Video diffusion models running on FLEX's ops and ring cache."""
from ..cache import ModelKVCache, TextCache, WanKVCache
from .config import WAN_PRESETS, WanConfig, wan_config
from .layers import sinusoidal_embedding
from .wan import CausalWanModel

__all__ = [
    "WAN_PRESETS", "CausalWanModel", "ModelKVCache", "TextCache", "WanConfig", "WanKVCache",
    "sinusoidal_embedding", "wan_config",
]
