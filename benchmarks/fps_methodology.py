"""How the end-to-end FPS of benchmarks/run.py is measured: written once, printed with every table.

Users of Self Forcing and LongLive cannot reproduce the published FPS because none of them says
what was timed. Every e2e table of this project is printed with :data:`METHODOLOGY`, and the
numbers are computed with the functions below.
"""
from __future__ import annotations

VIDEO_FPS = 16  # Wan2.1 plays 16 frames a second
TEMPORAL_STRIDE = 4  # one latent frame = 4 video frames (the first latent frame = 1)
PROFILE_CHUNKS = 3  # steady-state chunks in a --profile trace

METHODOLOGY = (
    "what is timed: the DiT only (4 denoising passes + the clean context pass per 3-frame chunk, sink 3 + "
    "window 9), streaming, chunks not kept; decode is timed separately (decode table) and, where a row says "
    "'+ decode', overlapped on a worker; text encoding (T5) is never timed: the prompt's cross-attention K/V "
    "are computed before the clock starts",
    "warm-up: one stream that fills and wraps the ring runs first on every path (kernel choice, allocator, "
    "torch.compile, CUDA-graph capture); it is reported as warmup_seconds, not in FPS; first-use canaries "
    "(FLEX_CANARY) are off",
    "synchronisation: torch.cuda.synchronize before the clock starts, after the first chunk and after the "
    "last chunk; nothing else is synchronised inside a stream",
    "FPS: video frames / wall seconds of the whole stream (first chunk included), median over rounds run in "
    "turns with the other paths; steady FPS leaves out the first chunk; first-chunk latency is the seconds "
    "from the start to the first chunk's latents (what a viewer waits before playback)",
    f"latent to video FPS: a stream of F latent frames is {TEMPORAL_STRIDE}F - 3 video frames at "
    f"{VIDEO_FPS} fps, so video FPS = latent FPS x ({TEMPORAL_STRIDE}F - 3) / F (about {TEMPORAL_STRIDE}x); "
    f"real time = {VIDEO_FPS} video FPS",
)


def video_frames(latent_frames: int) -> int:
    """Video frames decoded from ``latent_frames`` latent frames (4F - 3)."""
    return TEMPORAL_STRIDE * latent_frames - (TEMPORAL_STRIDE - 1)


def fps(latent_frames: int, seconds: float) -> dict:
    """latent and video frames per second of a stream of ``latent_frames`` made in ``seconds``."""
    return dict(latent_fps=latent_frames / seconds, video_fps=video_frames(latent_frames) / seconds)


def steady_fps(latent_frames: int, seconds: float, first_chunk_frames: int, first_chunk_seconds: float) -> float:
    """Video FPS without the first chunk: TEMPORAL_STRIDE video frames per later latent frame."""
    later = seconds - first_chunk_seconds
    return TEMPORAL_STRIDE * (latent_frames - first_chunk_frames) / later if later > 0 else float("nan")


def text() -> str:
    """The methodology as printed under every e2e table."""
    return "FPS methodology:\n" + "\n".join(f"- {line}" for line in METHODOLOGY)
