"""Prompt schedules: which prompt a video shows from which second on.

A schedule is a tuple of (seconds, prompt) pairs -- or (seconds, prompt, mode) where a switch
names its own switch mode -- strictly increasing in time, the first at 0 s. It is read from
text in either form:

* lines ``SECONDS: prompt`` or ``SECONDS [MODE]: prompt`` (blank lines and lines starting with
  ``#`` are skipped)::

      0: a red fox trots through fresh snow
      10.5: the fox stops and looks at the camera
      14 [cut]: a close-up of the fox's eyes

* a JSON list of ``[seconds, "prompt"]`` / ``[seconds, "prompt", "mode"]`` (or of
  ``{"seconds": s, "prompt": "...", "mode": "..."}``, mode optional).

MODE is a switch mode of :data:`flex.switching.SWITCH_MODES` (window, all, none, longlive,
flush = infinity-RoPE's KV Flush, cut = its RoPE Cut); without one a switch uses the run's
``recache`` setting. Where each switch lands in the video: :func:`switch_frames` (second ->
latent frame), then :func:`flex.switching.switch_starts` (latent frame -> chunk; two switches in
one chunk are deferred one chunk each under "longlive" and refused under the other modes).

Inside a ``--prompts`` file, one line may hold a whole schedule as ``SECONDS: prompt`` pairs
joined by `` | `` (``0: a cat | 5: a dog``). Every error names the line (and entry) at fault.
"""
from __future__ import annotations

import json
import math
import re

Schedule = tuple[tuple[float, str], ...]

_ENTRY = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?:\[\s*([a-z]+)\s*\])?\s*:\s*(.*?)\s*$")


class ScheduleError(ValueError):
    """A schedule that cannot be used; the message names the line / entry."""


def _entry(seconds, prompt, mode=None):
    return (seconds, prompt) if mode is None else (seconds, prompt, mode)


def check_schedule(entries, where: str = "schedule", places=None) -> Schedule:
    """Validate (seconds, prompt[, mode]) entries: finite, >= 0, strictly increasing, first at 0,
    texts non-empty, modes of flex.switching.SWITCH_MODES (the first entry has none).

    ``places[k]`` names entry k in messages (e.g. "line 7" of a file); default "entry k+1"."""
    from .switching import SWITCH_MODES

    places = [f"entry {k + 1}" for k in range(len(entries))] if places is None else list(places)
    out = []
    for k, entry in enumerate(entries):
        at = f"{where}, {places[k]}"
        if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3):
            raise ScheduleError(f"{at}: must be (seconds, prompt) or (seconds, prompt, mode), got {entry!r:.60}")
        seconds, prompt, mode = (*entry, None)[:3]
        if mode is not None and (mode not in SWITCH_MODES or k == 0):
            raise ScheduleError(f"{at}: the switch mode must be one of {SWITCH_MODES}, got {mode!r}" if k else
                                f"{at}: the first prompt starts the video, it has no switch mode")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
                or seconds < 0:
            raise ScheduleError(f"{at}: the time must be a finite number of seconds >= 0, got {seconds!r}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ScheduleError(f"{at}: the prompt is empty")
        if out and seconds <= out[-1][0]:
            raise ScheduleError(f"{at}: {seconds:g} s must come after the previous entry's {out[-1][0]:g} s "
                                f"(the schedule is sorted)")
        out.append(_entry(float(seconds), prompt.strip(), mode))
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
            if isinstance(item, dict) and {"seconds", "prompt"} <= set(item) <= {"seconds", "prompt", "mode"}:
                entries.append(_entry(item["seconds"], item["prompt"], item.get("mode")))
            elif isinstance(item, (list, tuple)) and len(item) in (2, 3):
                entries.append(tuple(item))
            else:
                raise ScheduleError(f"{where}, entry {k + 1}: must be [seconds, \"prompt\"] or "
                                    f"[seconds, \"prompt\", \"mode\"], got {item!r:.60}")
        return check_schedule(entries, where)
    entries, lines = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _ENTRY.match(line)
        if match is None:
            raise ScheduleError(f"{where}, line {number}: expected 'SECONDS: prompt' or 'SECONDS [MODE]: prompt', "
                                f"got {line.strip()!r:.60}")
        entries.append(_entry(float(match.group(1)), match.group(3), match.group(2)))
        lines.append(number)
    return check_schedule(entries, where, [f"line {n}" for n in lines])  # name the file's lines


def parse_inline(line: str, where: str) -> Schedule | None:
    """A ``0: a cat | 5 [cut]: a dog`` schedule on one line of a prompts file, or None for a plain prompt."""
    matches = [_ENTRY.match(p) for p in line.split(" | ")]
    if len(matches) < 2 or not all(matches):
        return None
    return check_schedule([_entry(float(m.group(1)), m.group(3), m.group(2)) for m in matches], where)


def switch_frames(schedule: Schedule, fps: float, latent_frames: int) -> list[tuple]:
    """(first latent frame, prompt[, mode]) of each entry: second s is pixel frame s * fps, which
    the Wan VAE's 4x temporal compression puts in latent frame ceil((s * fps + 3) / 4) - 1 for
    s > 0 (latent frame 0 decodes to pixel frame 0, each later one to 4 frames)."""
    out = []
    for k, (seconds, prompt, *mode) in enumerate(schedule):
        frame = 0 if seconds == 0 else max(1, math.ceil((seconds * fps + 3) / 4) - 1)
        if frame >= latent_frames:
            raise ScheduleError(f"entry {k + 1}: {seconds:g} s is past the end of the video "
                                f"({latent_frames} latent frames = {(4 * latent_frames - 3) / fps:g} s)")
        if out and frame <= out[-1][0]:
            raise ScheduleError(f"entry {k + 1}: {seconds:g} s falls in the same latent frame as the entry before "
                                f"it (frames are 4 / {fps:g} s apart)")
        out.append((frame, prompt, *mode))
    return out


__all__ = ["Schedule", "ScheduleError", "check_schedule", "parse_inline", "parse_schedule", "switch_frames"]
