"""What a run is made of, and the jobs that make videos from settings.

* :mod:`.inputs`: checks of a job's inputs that need no model (prompt files, lengths, outputs)
* :mod:`.settings`: :class:`GenerationSettings`, every setting checked when built
* :mod:`.records`: what made a video (its settings hash in the mp4)
* :mod:`.runtime`: :func:`load_runtime`, the one assembly of model, text encoder, decoder and
  pipeline that every entry point uses
* :mod:`.generate`: :func:`generate_videos`, prompts -> mp4 files, resumable
* :mod:`.distributed`: the same job over torchrun ranks (prompt parallel, sequence parallel)
* :mod:`.experiment`: generate, evaluate and tabulate a paper-style experiment
* :mod:`.interrupt`: SIGTERM handled like Ctrl-C
"""
from ..errors import SettingsError
from .generate import VideoResult, generate_videos
from .inputs import FPS, MAX_LATENT_FRAMES, MAX_SIDE, latent_frames, output_paths, read_prompt_file
from .interrupt import Terminated, terminate_as_interrupt
from .runtime import Runtime, load_runtime
from .settings import GenerationSettings

__all__ = [
    "FPS", "GenerationSettings", "MAX_LATENT_FRAMES", "MAX_SIDE", "Runtime", "SettingsError", "Terminated",
    "VideoResult", "generate_videos", "latent_frames", "load_runtime", "output_paths", "read_prompt_file",
    "terminate_as_interrupt",
]
