"""Reading videos for evaluation: frame rate, frame stream, and the videos of a folder."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")


def video_fps(path) -> float:
    """Average frame rate of a video file's first video stream."""
    with _open(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise ValueError(f"video {str(path)!r} does not state its frame rate")
        return float(rate)


def iter_video_frames(path) -> Iterator[np.ndarray]:
    """The RGB frames of a video file, uint8 [H, W, 3], decoded one at a time."""
    with _open(path) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def _open(path):
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file {str(path)!r} does not exist")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as err:
        raise ValueError(f"video {str(path)!r} cannot be read: {err}") from None
    if not container.streams.video:
        container.close()
        raise ValueError(f"file {str(path)!r} has no video stream")
    return container


def find_videos(inputs: Sequence) -> list[Path]:
    """The video files named by ``inputs``: files as given, folders searched (not recursively)."""
    videos: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in VIDEO_SUFFIXES
                           and not q.name.startswith("."))
            if not found:
                raise ValueError(f"folder {str(p)!r} has no video files ({', '.join(VIDEO_SUFFIXES)})")
            videos.extend(found)
        elif p.is_file():
            videos.append(p)
        else:
            raise FileNotFoundError(f"video or folder {str(p)!r} does not exist")
    return videos
