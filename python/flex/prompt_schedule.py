"""Prompt schedules: which prompt a video shows from which second on.

A schedule is a tuple of (seconds, prompt) pairs, strictly increasing in time, the first at
0 s. It is read from text in either form:

* lines ``SECONDS: prompt`` (blank lines and lines starting with ``#`` are skipped)::

      0: a red fox trots through fresh snow
      10.5: the fox stops and looks at the camera

* a JSON list of ``[seconds, "prompt"]`` pairs (or of ``{"seconds": s, "prompt": "..."}``).

Inside a ``--prompts`` file, one line may hold a whole schedule as ``SECONDS: prompt`` pairs
joined by `` | `` (``0: a cat | 5: a dog``). Every error names the line (and entry) at fault.
"""
from __future__ import annotations

import json
import math
import re

Schedule = tuple[tuple[float, str], ...]

_ENTRY = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*:\s*(.*?)\s*$")


class ScheduleError(ValueError):
    """A schedule that cannot be used; the message names the line / entry."""


def check_schedule(entries, where: str = "schedule", places=None) -> Schedule:
    """Validate (seconds, prompt) pairs: finite, >= 0, strictly increasing, first at 0, texts non-empty.

    ``places[k]`` names entry k in messages (e.g. "line 7" of a file); default "entry k+1"."""
    places = [f"entry {k + 1}" for k in range(len(entries))] if places is None else list(places)
    out = []
    for k, (seconds, prompt) in enumerate(entries):
        at = f"{where}, {places[k]}"
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
                or seconds < 0:
            raise ScheduleError(f"{at}: the time must be a finite number of seconds >= 0, got {seconds!r}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ScheduleError(f"{at}: the prompt is empty")
        if out and seconds <= out[-1][0]:
            raise ScheduleError(f"{at}: {seconds:g} s must come after the previous entry's {out[-1][0]:g} s "
                                f"(the schedule is sorted)")
        out.append((float(seconds), prompt.strip()))
    if not out:
        raise ScheduleError(f"{where}: no prompts")
    if out[0][0] != 0:
        raise ScheduleError(f"{where}, {places[0]}: the first prompt must start at 0 s, got {out[0][0]:g} s")
    return tuple(out)


def parse_schedule(text: str, where: str = "schedule") -> Schedule:
    """A schedule from ``SECONDS: prompt`` lines or a JSON list (see the module docstring)."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise ScheduleError(f"{where}, line {err.lineno}: not valid JSON ({err.msg})") from None
        entries = []
        for k, item in enumerate(items):
            if isinstance(item, dict) and set(item) == {"seconds", "prompt"}:
                entries.append((item["seconds"], item["prompt"]))
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                entries.append((item[0], item[1]))
            else:
                raise ScheduleError(f"{where}, entry {k + 1}: must be [seconds, \"prompt\"], got {item!r:.60}")
        return check_schedule(entries, where)
    entries, lines = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _ENTRY.match(line)
        if match is None:
            raise ScheduleError(f"{where}, line {number}: expected 'SECONDS: prompt', got {line.strip()!r:.60}")
        entries.append((float(match.group(1)), match.group(2)))
        lines.append(number)
    return check_schedule(entries, where, [f"line {n}" for n in lines])  # name the file's lines


def parse_inline(line: str, where: str) -> Schedule | None:
    """A ``0: a cat | 5: a dog`` schedule on one line of a prompts file, or None for a plain prompt."""
    parts = [p for p in line.split(" | ")]
    if len(parts) < 2 or not all(_ENTRY.match(p) for p in parts):
        return None
    return check_schedule([(float(_ENTRY.match(p).group(1)), _ENTRY.match(p).group(2)) for p in parts], where)


def switch_frames(schedule: Schedule, fps: float, latent_frames: int) -> list[tuple[int, str]]:
    """(first latent frame, prompt) of each entry: second s is pixel frame s * fps, which the
    Wan VAE's 4x temporal compression puts in latent frame ceil((s * fps + 3) / 4) - 1 for s > 0
    (latent frame 0 decodes to pixel frame 0, each later one to 4 frames)."""
    out = []
    for k, (seconds, prompt) in enumerate(schedule):
        frame = 0 if seconds == 0 else max(1, math.ceil((seconds * fps + 3) / 4) - 1)
        if frame >= latent_frames:
            raise ScheduleError(f"entry {k + 1}: {seconds:g} s is past the end of the video "
                                f"({latent_frames} latent frames = {(4 * latent_frames - 3) / fps:g} s)")
        if out and frame <= out[-1][0]:
            raise ScheduleError(f"entry {k + 1}: {seconds:g} s falls in the same latent frame as the entry before "
                                f"it (frames are 4 / {fps:g} s apart)")
        out.append((frame, prompt))
    return out


__all__ = ["Schedule", "ScheduleError", "check_schedule", "parse_inline", "parse_schedule", "switch_frames"]
