"""The ``flex`` command line: one module per command, sharing the generation options (:mod:`.args`)
and the usage-error and exit-status rules (:mod:`.common`). Commands only parse; the work lives in
the library (:mod:`flex.jobs`, :mod:`flex.serve`, :mod:`flex.evaluate`).

    flex generate   videos from text prompts                  (:mod:`.generate`)
    flex serve      a live web demo                           (:mod:`.serve`)
    flex evaluate   metrics of videos                         (:mod:`.evaluate`)
    flex experiment generate + evaluate + tabulate a config   (:mod:`.evaluate`)
    flex selftest   every kernel against float64 on this machine (:mod:`flex.selftest`)

Exit status: 0 done; 1 runtime error; 2 usage error (reported before any model loads);
130 interrupted; 143 terminated (SIGTERM).
"""
from __future__ import annotations

import argparse
import sys

from .. import selftest
from ..jobs.interrupt import Terminated
from . import evaluate, generate, serve
from .args import flex_config, latent_frames, settings_from_args
from .common import (
    EXIT_INTERRUPTED, EXIT_RUNTIME, EXIT_TERMINATED, EXIT_USAGE, CliError, HelpFormatter, log,
)

COMMANDS = {"generate": generate, "serve": serve, "evaluate": evaluate, "experiment": evaluate}


def build_parser(defaults: bool = True) -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="flex", formatter_class=HelpFormatter,
        description="FLEX: training-free length extension for autoregressive video diffusion "
                    "(Self Forcing on Wan2.1-T2V-1.3B).",
        argument_default=None if defaults else argparse.SUPPRESS,
    )
    parser.add_argument("--version", action="version", version=f"flex {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    generate.add_parser(sub, defaults)
    serve.add_parser(sub, defaults)
    evaluate.add_parser(sub)
    selftest.add_parser(sub)
    return parser


def explicit_flags(argv) -> set[str]:
    """Names of the options the user typed (parsed again with SUPPRESS defaults)."""
    ns = build_parser(defaults=False).parse_known_args(argv)[0]
    return set(vars(ns))


def main(argv=None) -> int:
    """Entry point of the ``flex`` console command. Returns the exit status (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)  # malformed command lines exit here, status 2
    try:
        if args.command in ("evaluate", "experiment"):
            return evaluate.run(args)
        if args.command == "selftest":
            return selftest.run(args)
        return COMMANDS[args.command].run(args, explicit_flags(argv))
    except CliError as err:
        log(f"error: {err}")
        return EXIT_USAGE
    except Terminated:
        log("terminated (no partial video was kept)")
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        log("interrupted (no partial video was kept)")
        return EXIT_INTERRUPTED
    except (OSError, RuntimeError, ValueError) as err:  # CheckpointError is a RuntimeError
        log(f"error: {err}")
        return EXIT_RUNTIME


__all__ = ["CliError", "build_parser", "explicit_flags", "flex_config", "latent_frames", "main", "settings_from_args"]

if __name__ == "__main__":
    sys.exit(main())
