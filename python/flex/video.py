"""MP4 (H.264) writing that never leaves a truncated file behind.

Frames are encoded into a temporary file in the destination folder; only when the writer is
closed successfully is it moved onto the final name with :func:`os.replace` (atomic on POSIX
and Windows when both names are on the same file system, which the shared folder ensures).
If anything fails, or the process is interrupted, the final name is either absent or still
holds its previous content, and the temporary file is removed (an interrupted process may
leave a hidden ``.<name>.*.part`` file, never a broken ``<name>``).

Two encoders are supported: PyAV (``"av"``, in-process, the default when importable) and
imageio-ffmpeg (``"imageio"``, an ffmpeg subprocess).

The same frames give the same bytes (for one encoder backend and library version), in any
process and on any machine. Two x264 settings make it so:

* ``cpu-independent``: x264's SIMD versions of the macroblock-tree propagation (the AVX-512
  one in particular) give results that depend on the CPU and, in a long-lived process such as
  PyAV's, on what happened to lie in memory before, so the same frames were encoded
  differently from run to run (pixel differences up to ~20). The flag makes x264 use its
  portable C propagation there; the encoding speed and size are the same within noise.
* a fixed thread count (``ENCODER_THREADS``): x264's decisions depend on its number of
  threads, whose default follows the number of CPUs.

A writer that is killed outright (SIGKILL, power loss) leaves its temporary file behind;
:func:`remove_stale_parts` removes those of one video (never a file still being written:
every writer holds a lock on its temporary file while it lives).

    with VideoWriter("out.mp4", fps=16) as w:
        for chunk in chunks:          # uint8 [T, H, W, 3]
            w.append(chunk)
    # out.mp4 exists only here, complete
"""
from __future__ import annotations

import os
import string
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: no locks, stale temporary files are left alone
    fcntl = None

DEFAULT_FPS = 16
BACKENDS = ("auto", "av", "imageio")
ENCODER_THREADS = 4  # fixed: x264's output depends on its thread count
X264_PARAMS = "cpu-independent=1"  # see the module docstring
PART_SUFFIX = ".part"
_PART_CHARS = set(string.ascii_letters + string.digits + "_")  # what tempfile puts in its random names


def _available_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend in ("auto", "av"):
        try:
            import av  # noqa: F401
            return "av"
        except ImportError:
            if backend == "av":
                raise ImportError("backend 'av' needs PyAV: pip install av") from None
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        raise ImportError(
            "writing mp4 needs PyAV or imageio-ffmpeg: pip install av (or imageio imageio-ffmpeg)"
        ) from None
    return "imageio"


def _as_uint8_frames(frames) -> np.ndarray:
    """[T, H, W, 3] (or one [H, W, 3] frame) uint8 numpy array from numpy or torch input."""
    if hasattr(frames, "detach"):  # torch.Tensor without importing torch here
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3] (RGB), got shape {tuple(frames.shape)}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (0..255), got {frames.dtype}")
    return np.ascontiguousarray(frames)


class VideoWriter:
    """Streaming, atomic H.264 mp4 writer (a context manager).

    path        final file name; its folder is created if needed
    fps         frames per second (16 for Wan / Self Forcing)
    crf         x264 constant rate factor (lower = better quality, 18 ~ visually lossless)
    backend     "auto" (PyAV if importable, else imageio-ffmpeg), "av" or "imageio"
    comment     text stored as the mp4's "comment" metadata (see :func:`read_comment`), or None

    ``append`` takes uint8 [T, H, W, 3] chunks (numpy or torch); every chunk must have the
    size of the first one, and H and W must be even (yuv420p). ``close`` finalises the file
    and moves it into place; ``abort`` (called by ``__exit__`` on an exception) discards it.
    """

    def __init__(self, path, fps: float = DEFAULT_FPS, crf: int = 18, backend: str = "auto",
                 preset: str = "medium", comment: str | None = None):
        self._closed = True  # nothing to clean up until the temporary file exists
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"video path {str(self.path)!r} is a folder; give a file name such as out.mp4")
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps!r}")
        if not (isinstance(crf, int) and 0 <= crf <= 51):
            raise ValueError(f"crf must be an int in [0, 51], got {crf!r}")
        if comment is not None and (not isinstance(comment, str) or "\n" in comment or "\0" in comment):
            raise ValueError(f"comment must be one line of text or None, got {comment!r}")
        self.fps = fps
        self.crf = crf
        self.comment = comment
        self.preset = preset
        self.backend = _available_backend(backend)
        self.frames_written = 0
        self.size = None  # (H, W) once the first frame arrived
        self._container = self._stream = self._proc = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_part_prefix(self.path), suffix=PART_SUFFIX, dir=self.path.parent)
        self._lock_fd = None
        if fcntl is None:
            os.close(fd)
        else:  # the lock says "being written"; it is released when this process ends, however it ends
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_fd = fd
        self._tmp = Path(tmp)
        self._closed = False

    # ------------------------------------------------------------------ public

    def append(self, frames) -> None:
        if self._closed:
            raise RuntimeError(f"VideoWriter for {str(self.path)!r} is already closed")
        frames = _as_uint8_frames(frames)
        t, h, w, _ = frames.shape
        if self.size is None:
            if h % 2 or w % 2:
                raise ValueError(f"H.264 (yuv420p) needs an even height and width, got {h}x{w}")
            self.size = (h, w)
            self._open(h, w)
        elif (h, w) != self.size:
            raise ValueError(f"every chunk must be {self.size[0]}x{self.size[1]}, got {h}x{w}")
        if self.backend == "av":
            import av
            for frame in frames:
                for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    self._container.mux(packet)
        else:
            for frame in frames:
                self._proc.send(frame)
        self.frames_written += t

    def close(self) -> Path:
        """Flush the encoder and move the finished file to ``path``. Returns ``path``."""
        if self._closed:
            return self.path
        try:
            if self.size is None:
                raise ValueError(f"no frames were written to {str(self.path)!r}")
            self._finish_encoder()
            mode = 0o666 & ~_umask()
            os.chmod(self._tmp, mode)  # mkstemp makes 0600 files; give the usual permissions
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._unlock()
        return self.path

    def abort(self) -> None:
        """Stop encoding and remove the temporary file; the final name is left untouched."""
        self._closed = True
        try:
            if self._container is not None:
                self._container.close()
            if self._proc is not None:
                self._proc.close()
        except Exception:
            pass
        finally:
            self._container = self._stream = self._proc = None
            try:
                self._tmp.unlink()
            except FileNotFoundError:
                pass
            self._unlock()

    def _unlock(self) -> None:
        fd, self._lock_fd = getattr(self, "_lock_fd", None), None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self):  # never leave the temporary file behind when dropped unclosed
        if not getattr(self, "_closed", True):
            self.abort()

    # ------------------------------------------------------------------ encoders

    def _open(self, h: int, w: int) -> None:
        if self.backend == "av":
            import av
            self._container = av.open(str(self._tmp), mode="w", format="mp4")
            if self.comment is not None:
                self._container.metadata["comment"] = self.comment
            self._stream = self._container.add_stream(
                "libx264", rate=Fraction(self.fps).limit_denominator(1001)
            )
            self._stream.width, self._stream.height = w, h
            self._stream.pix_fmt = "yuv420p"
            self._stream.codec_context.thread_count = ENCODER_THREADS
            self._stream.options = {"crf": str(self.crf), "preset": self.preset, "x264-params": X264_PARAMS}
        else:
            import imageio_ffmpeg
            self._proc = imageio_ffmpeg.write_frames(
                str(self._tmp), (w, h), fps=self.fps, codec="libx264", pix_fmt_in="rgb24",
                pix_fmt_out="yuv420p", macro_block_size=1, quality=None,
                output_params=["-crf", str(self.crf), "-preset", self.preset, "-threads", str(ENCODER_THREADS),
                               "-x264-params", X264_PARAMS]
                + ([] if self.comment is None else ["-metadata", f"comment={self.comment}"]) + ["-f", "mp4"],
            )
            self._proc.send(None)  # start the generator

    def _finish_encoder(self) -> None:
        if self.backend == "av":
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
            self._container = self._stream = None
        else:
            self._proc.close()
            self._proc = None
        with open(self._tmp, "rb+") as f:  # data on disk before the rename makes it visible
            os.fsync(f.fileno())


def _part_prefix(path: Path) -> str:
    return f".{path.name}."


def _is_part_of(name: str, path: Path) -> bool:
    """Whether ``name`` is a temporary file of a writer of ``path`` (``.<name>.<random>.part``).

    The random middle has no dot, so the parts of ``a.mp4.b.mp4`` are not taken for parts of ``a.mp4``.
    """
    prefix = _part_prefix(path)
    if not (name.startswith(prefix) and name.endswith(PART_SUFFIX)):
        return False
    middle = name[len(prefix):-len(PART_SUFFIX)]
    return bool(middle) and set(middle) <= _PART_CHARS


def remove_stale_parts(path) -> list[Path]:
    """Remove the temporary files that killed writers of the video ``path`` left; returns them.

    Only files named like this video's temporary files are considered, and only those no live
    writer holds (on systems without ``fcntl`` locks nothing is removed).
    """
    path = Path(path)
    if fcntl is None or not path.parent.is_dir():
        return []
    removed = []
    for name in sorted(os.listdir(path.parent)):
        if not _is_part_of(name, path):
            continue
        part = path.parent / name
        try:
            fd = os.open(part, os.O_RDONLY)
        except OSError:  # vanished meanwhile, or not ours to read
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live writer holds it
            os.close(fd)
            continue
        try:
            part.unlink()
            removed.append(part)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_video(path, frames, fps: float = DEFAULT_FPS, crf: int = 18, backend: str = "auto",
                comment: str | None = None) -> Path:
    """Write uint8 frames [T, H, W, 3] to an H.264 mp4 atomically. Returns the path."""
    with VideoWriter(path, fps=fps, crf=crf, backend=backend, comment=comment) as writer:
        writer.append(frames)
    return writer.path


def read_video(path) -> np.ndarray:
    """All frames of a video file as uint8 [T, H, W, 3] (for checks and tests)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file {str(path)!r} does not exist")
    try:
        import av
    except ImportError:
        import imageio.v3 as iio
        return np.stack(list(iio.imiter(path, plugin="FFMPEG")))
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def read_comment(path) -> str | None:
    """The "comment" metadata of a video file; None when it has none or cannot be read as a video."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        import av
    except ImportError:
        import subprocess

        import imageio_ffmpeg
        run = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"],
                             capture_output=True, text=True)
        found = [line[len("comment="):] for line in run.stdout.splitlines() if line.startswith("comment=")]
        return found[0] if run.returncode == 0 and found else None
    try:
        with av.open(str(path)) as container:
            return container.metadata.get("comment")
    except (av.FFmpegError, OSError, UnicodeDecodeError):
        return None
