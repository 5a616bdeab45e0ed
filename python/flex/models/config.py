"""Architecture of a Wan2.1 DiT: the fields of Wan's config.json, validated, and named presets."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Mapping

from ..checks import check_float
from ..rope import axis_planes, check_base


@dataclass(frozen=True)
class WanConfig:
    """Architecture of a Wan2.1 DiT (the fields of Wan's config.json, plus text_dim)."""

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    text_len: int = 512
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    in_dim: int = 16
    out_dim: int = 16
    eps: float = 1e-6
    rope_base: float = 10000.0

    def __post_init__(self):
        for name in ("dim", "ffn_dim", "num_heads", "num_layers", "text_len", "text_dim", "freq_dim",
                     "in_dim", "out_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        axis_planes(self.head_dim)  # raises a ValueError naming head_dim when it cannot split
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim must be even, got {self.freq_dim}")
        patch = tuple(self.patch_size)
        if len(patch) != 3 or any(not isinstance(p, int) or p < 1 for p in patch):
            raise ValueError(f"patch_size must be 3 ints >= 1, got {self.patch_size!r}")
        if patch[0] != 1:
            raise ValueError(f"patch_size[0] (temporal) must be 1 for per-frame causal generation, got {patch}")
        object.__setattr__(self, "patch_size", patch)
        check_float("eps", self.eps, 0.0, low_open=True)
        check_base(self.rope_base, "rope_base")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def from_dict(cls, d: Mapping) -> "WanConfig":
        """From a Wan config.json dict; unknown keys (model_type, _class_name, ...) are ignored."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: (tuple(v) if k == "patch_size" else v) for k, v in d.items() if k in names}
        return cls(**kwargs)


WAN_PRESETS: dict[str, WanConfig] = {
    "wan2.1-t2v-1.3b": WanConfig(),
    # Wan-AI/Wan2.1-T2V-14B config.json (dim 5120, ffn_dim 13824, 40 heads, 40 layers, text_len 512,
    # freq_dim 256, in/out 16, eps 1e-6) and Wan's wan/configs/wan_t2v_14B.py (patch (1, 2, 2));
    # text_dim 4096 is umt5-xxl's width, as for 1.3B. Krea Realtime 14B has this architecture.
    "wan2.1-t2v-14b": WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    "tiny": WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_len=16, text_dim=32, freq_dim=32),
}


def wan_config(name: str | WanConfig = "wan2.1-t2v-1.3b", **overrides) -> WanConfig:
    """A preset by name (see ``WAN_PRESETS``), with optional field overrides."""
    if isinstance(name, WanConfig):
        cfg = name
    elif name in WAN_PRESETS:
        cfg = WAN_PRESETS[name]
    else:
        raise ValueError(f"preset must be one of {sorted(WAN_PRESETS)}, got {name!r}")
    return replace(cfg, **overrides) if overrides else cfg


__all__ = ["WAN_PRESETS", "WanConfig", "wan_config"]
