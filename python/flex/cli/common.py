"""What every ``flex`` command shares: usage errors, exit codes, the help format, logging, and
the one translation of a library setting's name into the flag that sets it."""
from __future__ import annotations

import argparse
import math
import sys

from ..errors import SettingsError

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
# FLEX flag dest -> FlexConfig field (the flag names follow the paper's vocabulary).
FLEX_FIELDS = {"rope": "strategy", "alpha": "alpha", "beta": "beta", "l_train": "l_train", "rho": "rho",
               "sink_frames": "sink_frames", "window_frames": "window_frames", "chunk_frames": "chunk_frames",
               "dynamic": "dynamic", "ans_renoise": "ans_renoise", "method": "method", "method_param": "method_params"}


class CliError(Exception):
    """A usage error: printed as one line, exit status 2."""


def flag(name: str) -> str:
    """The command-line flag of a setting or FLEX field (``wan_dir`` -> ``--wan-dir``, ``strategy`` -> ``--rope``)."""
    dest = {v: k for k, v in FLEX_FIELDS.items()}.get(name, name)
    return "--" + dest.replace("_", "-")


def usage_error(err: SettingsError) -> CliError:
    """The library's error about its settings, told in the flags that set them."""
    return CliError(err.render([flag(f) for f in err.fields]))


def finite_float(text: str) -> float:
    """argparse type: a finite number (inf and nan are no length, factor or correlation)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" after every option that has a meaningful default."""

    def _get_help_string(self, action):
        if action.default is None or action.required or isinstance(action, argparse._StoreTrueAction):
            return action.help
        return super()._get_help_string(action)


def log(msg: str) -> None:
    print(f"flex: {msg}", file=sys.stderr, flush=True)


def print_result(result) -> None:
    print(result.summary(), flush=True)


__all__ = [
    "CliError", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_RUNTIME", "EXIT_TERMINATED", "EXIT_USAGE", "FLEX_FIELDS",
    "HelpFormatter", "finite_float", "flag", "log", "print_result", "usage_error",
]
