"""What made a video: the record of every setting that determines its bytes, its hash, and the
mp4 comment that carries it.

Each video carries, in its mp4 "comment" metadata, a hash of everything that produced it
(settings, prompt, seed, the weights' file identity, the FLEX version, the encoder settings).
Since the record is part of the file that appears atomically, a video is either absent or
complete with its record, and a rerun skips exactly the videos finished with the same settings.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from .inputs import FPS

RECORD_PREFIX = "flex-settings-sha256:"  # the mp4 comment of a finished video: this + its hash


def file_identity(path) -> dict:
    """What tells one weights file from another without reading it: resolved path, size, mtime."""
    p = Path(path)
    identity = {"path": str(p.resolve())}
    if p.is_file():
        st = p.stat()
        identity.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
    return identity


def video_record(settings, i: int) -> dict:
    """Everything that determines video ``i`` (its bytes), as JSON-ready values."""
    from .. import __version__
    from ..video import ENCODER_THREADS, X264_PARAMS

    return {
        "flex_version": __version__,
        "prompt": settings.prompts[i],
        "seed": settings.seed + i,
        "dit": file_identity(settings.dit),
        "wan_dir": str(Path(settings.wan_dir).resolve()),
        "lora": None if settings.lora is None else file_identity(settings.lora),
        "preset": settings.preset, "weights": settings.weights,
        "lora_alpha": settings.lora_alpha, "lora_scale": settings.lora_scale,
        "latent_frames": settings.latent_frames, "height": settings.height, "width": settings.width,
        "flex": asdict(settings.flex),
        "model": settings.model, "denoising_steps": list(settings.denoising_steps),
        "shift": settings.model_preset.shift, "warp": settings.model_preset.warp_denoising_step,
        "context_noise": settings.model_preset.context_noise, "modulation": settings.modulation, "noise": settings.noise,
        "schedule": None if settings.schedules is None or settings.schedules[i] is None else list(settings.schedules[i]),
        "recache": settings.recache or settings.model_preset.recache,
        # only when it is not the model's default: the hashes of earlier videos stay valid
        **({} if settings.global_sink in (None, settings.model_preset.global_sink)
           else {"global_sink": settings.global_sink}),
        "vae": settings.vae if settings.vae == "wan" else {"tiny": file_identity(settings.vae_weights_path())},
        "quant": settings.quant,
        "backend": settings.backend, "dtype": settings.dtype, "device": settings.torch_device.type,
        "compile": settings.compile, "cuda_graphs": settings.cuda_graphs,
        "video": {"fps": FPS, "crf": settings.crf, "codec": "libx264", "threads": ENCODER_THREADS,
                  "x264_params": X264_PARAMS},
    }


def video_hash(settings, i: int) -> str:
    text = json.dumps(video_record(settings, i), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def video_comment(settings, i: int) -> str:
    """The mp4 comment that marks video ``i`` as made with these settings."""
    return RECORD_PREFIX + video_hash(settings, i)


def is_done(settings, i: int) -> bool:
    """Video ``i`` exists and its record says it was made with these settings."""
    from ..video import read_comment

    return read_comment(settings.outputs[i]) == video_comment(settings, i)

__all__ = ["RECORD_PREFIX", "file_identity", "is_done", "video_comment", "video_hash", "video_record"]
