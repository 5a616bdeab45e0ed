"""Video diffusion models running on FLEX's ops and ring cache."""
from .wan import (
    WAN_PRESETS, CausalWanModel, ChunkRope, TextCache, WanConfig, WanKVCache, chunk_rope, sinusoidal_embedding,
    wan_config,
)

__all__ = [
    "WAN_PRESETS", "CausalWanModel", "ChunkRope", "TextCache", "WanConfig", "WanKVCache", "chunk_rope",
    "sinusoidal_embedding", "wan_config",
]
