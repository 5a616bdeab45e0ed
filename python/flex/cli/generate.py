"""``flex generate``: long videos from a Self Forcing checkpoint and a Wan2.1 folder, with FLEX.

    flex generate --dit checkpoints/self_forcing_dmd.pt --wan-dir Wan2.1-T2V-1.3B-Diffusers \\
        --prompt "a red fox runs through fresh snow" --seconds 30 --out fox.mp4

The arguments become a :class:`flex.jobs.settings.GenerationSettings` (which checks every
argument and output path before any model is loaded) and :func:`flex.jobs.generate.generate_videos`
does the work (under torchrun: :func:`flex.jobs.distributed.job.run_generate`). Everything is read
from local files (nothing is downloaded). A rerun skips the videos already finished with the same
settings (``--overwrite`` redoes them).

Exit status: 0 done; 1 runtime error (a model, file or device failed during the work);
2 usage error (a bad argument, reported before any model is loaded); 130 interrupted (Ctrl-C,
SIGINT); 143 terminated (SIGTERM). An interrupted or terminated run keeps no partial video.
"""
from __future__ import annotations

from ..errors import SettingsError
from ..jobs.interrupt import terminate_as_interrupt
from .args import add_generate_args, settings_from_args
from .common import EXIT_OK, HelpFormatter, log, print_result, usage_error


def add_parser(subparsers, defaults: bool = True):
    p = subparsers.add_parser(
        "generate", formatter_class=HelpFormatter, help="generate videos from text prompts",
        description="Generate long videos chunk by chunk with FLEX and write them as H.264 mp4 at 16 fps.",
        epilog="example: flex generate --dit self_forcing_dmd.pt --wan-dir Wan2.1-T2V-1.3B-Diffusers "
               "--prompt 'a red fox runs through fresh snow' --seconds 30 --out fox.mp4    "
               "exit status: 0 done, 1 runtime error, 2 bad argument (found before any model loads), "
               "130 interrupted, 143 terminated (SIGTERM); no partial video is kept",
    )
    add_generate_args(p, defaults)
    return p


def run(args, explicit: set[str]) -> int:
    """``flex generate``: the videos of ``args`` (``explicit``: the flags typed, for --no-flex)."""
    from ..jobs.distributed.job import run_generate, wants_distributed
    from ..jobs.generate import generate_videos

    with terminate_as_interrupt():
        settings = settings_from_args(args, explicit)
        if wants_distributed(args):  # under torchrun: prompt-parallel over the ranks
            try:
                run_generate(settings, args, log=log, on_video=print_result)
            except SettingsError as err:
                raise usage_error(err) from err
        else:
            generate_videos(settings, log=log, on_video=print_result, progress=not args.quiet)
    return EXIT_OK


__all__ = ["add_parser", "run"]
