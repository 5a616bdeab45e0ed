"""Prompt-parallel work: the (prompt, seed, variant) items of a job, their equal split over
ranks, and the manifest that makes a job resumable.

The manifest is a JSON-lines file next to the videos, one record per finished video (its
settings hash, index, prompt, seed, variant, path, rank, seconds, commit). Each record is
appended with one ``write`` on a file opened O_APPEND and then fsynced, so concurrent ranks
never interleave and a killed rank leaves at most one torn last line, which readers ignore.
The videos themselves carry their settings hash (flex.jobs.records), so an item is finished
when its record is in the manifest *and* its video is complete; a video that is complete
but has no record (a rank killed between the two) is recorded when the job starts again.

Ranks meet twice: at the start (rank 0 reads the manifest and broadcasts the unfinished items,
so every rank splits the same list, also when the number of ranks changed) and at the end.
Rank 0 shows the progress of all ranks by reading the manifest, with no collective in between.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Sequence

MANIFEST_NAME = "manifest.jsonl"


@dataclass(frozen=True)
class WorkItem:
    """One video to make: its position in the job, prompt, seed, variant and settings hash."""

    index: int
    prompt: str
    seed: int
    variant: str
    key: str  # the settings hash of the video (what makes it this video)
    path: str


def generation_items(settings, variant: str = "default") -> list[WorkItem]:
    """The work items of a :class:`flex.jobs.settings.GenerationSettings` (prompt i, seed + i)."""
    return [WorkItem(i, p, settings.seed + i, variant, settings.video_hash(i), str(settings.outputs[i]))
            for i, p in enumerate(settings.prompts)]


def share(items: Sequence, rank: int, world: int) -> list:
    """Rank ``rank``'s share of ``items``: every world-th one, so shares differ by at most one."""
    if not isinstance(world, int) or world < 1 or not isinstance(rank, int) or not 0 <= rank < world:
        raise ValueError(f"rank must lie in [0, world = {world}), got {rank!r}")
    return list(items[rank::world])


@lru_cache(maxsize=1)
def source_commit() -> str | None:
    """The git commit of the flex sources when they are a checkout, else None."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class Manifest:
    """The JSON-lines record of the finished videos of a job (see the module docstring)."""

    def __init__(self, path):
        self.path = Path(path)

    def records(self) -> list[dict]:
        """Every complete record, in file order (a torn or foreign line is skipped)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        out = []
        for line in data.split(b"\n"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("key"), str):
                out.append(record)
        return out

    def finished_keys(self) -> set[str]:
        return {r["key"] for r in self.records()}

    def append(self, item: WorkItem, rank: int | None, seconds: float | None) -> dict:
        """Record ``item`` as finished, atomically (one O_APPEND write, then fsync)."""
        from ... import __version__

        record = {**asdict(item), "rank": rank, "seconds": seconds, "commit": source_commit(),
                  "flex_version": __version__, "finished_at": time.time()}
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            # Start on a fresh line if a killed writer left a torn one.
            if os.fstat(fd).st_size and not self._ends_with_newline():
                line = b"\n" + line
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        return record

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"


def pending_items(items: Iterable[WorkItem], manifest: Manifest, is_done: Callable[[WorkItem], bool],
                  overwrite: bool = False) -> list[WorkItem]:
    """The items still to make. A complete video without a record gets its record now, so
    that the manifest lists every finished video exactly once."""
    items = list(items)
    if overwrite:
        return items
    recorded = manifest.finished_keys()
    todo = []
    for item in items:
        if not is_done(item):
            todo.append(item)
        elif item.key not in recorded:
            manifest.append(item, rank=None, seconds=None)  # finished, but its rank died before recording
    return todo


class Progress:
    """Rank 0's view of every rank's progress: finished videos / total and videos per hour,
    read from the manifest every ``interval_s`` by a background thread (no collective)."""

    def __init__(self, manifest: Manifest, items: Sequence[WorkItem], already: int, log: Callable[[str], None],
                 interval_s: float = 10.0):
        self.manifest, self.keys, self.already, self.log = manifest, {i.key for i in items}, already, log
        self.total, self.interval_s = len(items), interval_s
        self.start = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flex-progress", daemon=True)
        self._last = None

    def line(self) -> str:
        done = len(self.keys & self.manifest.finished_keys())
        new = done - self.already
        hours = (time.perf_counter() - self.start) / 3600
        rate = f"{new / hours:.1f} videos/hour" if hours > 0 and new > 0 else "-- videos/hour"
        return f"{done}/{self.total} videos done ({self.already} before this run), {rate}"

    def _run(self):
        while not self._stop.wait(self.interval_s):
            self.report()

    def report(self) -> None:
        text = self.line()
        if text != self._last:
            self._last = text
            self.log(text)

    def __enter__(self) -> "Progress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.report()


def stderr_log(msg: str) -> None:
    print(f"flex: {msg}", file=sys.stderr, flush=True)


__all__ = ["MANIFEST_NAME", "Manifest", "Progress", "WorkItem", "generation_items", "pending_items", "share",
           "source_commit"]
