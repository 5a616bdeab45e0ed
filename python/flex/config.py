"""FlexConfig: every FLEX switch in one validated dataclass."""
from __future__ import annotations

from dataclasses import dataclass, replace

from .checks import check_bool, check_choice, check_float, check_int
from .methods import check_method, method_settings
from .rope import STRATEGIES, check_base, check_gate

POSITION_POLICIES = ("absolute", "window")


@dataclass(frozen=True)
class FlexConfig:
    """FLEX settings. Defaults are the paper's for Self Forcing.

    strategy         temporal RoPE strategy: flex (paper), none, pi, ntk, yarn, riflex
    alpha, beta      gate of the flex/yarn ramp in units of training rotations r_m
    l_train          training horizon in latent frames (21 for Self Forcing, 240 for LongLive)
    dynamic          S grows with the current length while streaming (needs rotate-on-load)
    rho              antiphase noise correlation of a chunk's initial noise, in [-1, 1]
    ans_renoise      also use antiphase noise for the re-noising between steps
    sink_frames      first latent frames kept in the attention window forever
    window_frames    most recent latent frames kept (the current chunk included);
                     sink + window = 21 keeps the context Self Forcing was trained with
    chunk_frames     latent frames generated per chunk
    position_policy  "absolute" frame indices (upstream) or "window" relative positions
                     (sink first, window after; needs rotate-on-load)
    rope_base        base of the RoPE thetas (10000 for Wan)
    method           the long-horizon method (flex.methods.METHODS; several joined by "+"):
                     "flex" (default) is these fields as they are
    method_params    the method's parameters as (name, value) pairs (a dict is accepted);
                     kept canonical (sorted, checked, typed); missing ones take the paper's
                     defaults
    """

    strategy: str = "flex"
    alpha: float = 0.1
    beta: float = 2.5
    l_train: int = 21
    dynamic: bool = False
    rho: float = -1.0
    ans_renoise: bool = False
    sink_frames: int = 3
    window_frames: int = 18
    chunk_frames: int = 3
    position_policy: str = "absolute"
    rope_base: float = 10000.0
    method: str = "flex"
    method_params: tuple = ()

    def __post_init__(self):
        check_choice("strategy", self.strategy, STRATEGIES)
        check_gate(self.alpha, self.beta)
        check_int("l_train", self.l_train, 1)
        check_bool("dynamic", self.dynamic)
        check_float("rho", self.rho, -1.0, 1.0)
        check_bool("ans_renoise", self.ans_renoise)
        check_int("chunk_frames", self.chunk_frames, 1)
        check_int("sink_frames", self.sink_frames, 0)
        check_int("window_frames", self.window_frames, 0)
        if self.window_frames < self.chunk_frames:
            raise ValueError(
                f"window_frames must be >= chunk_frames ({self.chunk_frames}) so the current "
                f"chunk fits in the window, got {self.window_frames!r}"
            )
        check_choice("position_policy", self.position_policy, POSITION_POLICIES)
        check_base(self.rope_base, "rope_base")
        object.__setattr__(self, "method_params", check_method(self))

    @property
    def rotate_on_load(self) -> bool:
        """Keys are cached without temporal rotation when positions can change after caching."""
        return self.dynamic or self.position_policy == "window"

    @classmethod
    def off(cls, window_frames: int = 21, chunk_frames: int = 3) -> "FlexConfig":
        """FLEX disabled: plain RoPE, i.i.d. noise, no sink (upstream Self Forcing)."""
        return cls(strategy="none", rho=0.0, sink_frames=0, window_frames=window_frames,
                   chunk_frames=chunk_frames)

    @classmethod
    def longlive(cls) -> "FlexConfig":
        """The paper's settings for LongLive (trained on 240 latent frames)."""
        return cls(alpha=1.0, beta=15.0, l_train=240, sink_frames=3, window_frames=9)

    @classmethod
    def for_method(cls, method: str, **changes) -> "FlexConfig":
        """The settings the paper runs ``method`` with (its registered FlexConfig fields), then ``changes``."""
        return cls(**{**method_settings(method), "method": method, **changes})

    def replace(self, **changes) -> "FlexConfig":
        """A copy with ``changes``; a new ``method`` starts from no parameters unless some are given."""
        if "method" in changes and "method_params" not in changes and changes["method"] != self.method:
            changes["method_params"] = ()
        return replace(self, **changes)
