"""One page's use of the model: a worker thread that runs, decodes, records and sends streams.

Everything that touches the device or the recording file runs on the session's worker
thread, so the server's event loop only forwards messages and stays responsive. The thread
takes :class:`~flex.serve.protocol.Command` objects from a queue; while a stream runs it
looks at the queue between chunks (switch the prompt, stop, restart, close). Messages for the
page go out through ``post`` (thread-safe): dicts (JSON), bytes (a JPEG frame) and
:data:`CHUNK_END` after each chunk, which the sender acknowledges with :meth:`chunk_sent` so
that a slow page holds the generation back instead of piling frames up in memory.

At most ``MAX_PENDING`` commands wait at a time (more are refused with an error); a prompt
switch replaces a switch still waiting, so only the latest prompt before the next chunk is
encoded. :meth:`Session.close` drops whatever still waits. Errors of the model or the file
system are logged in full; the page is told what failed, never a server path.
Saved videos get names no other file has (made with an exclusive create), never overwriting.
"""
from __future__ import annotations

import collections
import concurrent.futures
import io
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..decoders import pixel_frames
from ..video import PART_SUFFIX, VideoWriter, remove_stale_parts
from .engine import Engine
from .protocol import Command, RequestError

log = logging.getLogger("flex.serve")

CHUNK_END = object()  # posted after the frames of each chunk
CHUNKS_IN_FLIGHT = 2  # chunks sent but not yet acknowledged by the sender
JPEG_QUALITY = 85
MAX_PENDING = 8  # commands waiting for the worker
NAME_PREFIX = "flex-"  # saved videos: flex-<date>-<time>-seed<seed>[-<n>].mp4
_CLOSE = Command("close")


def remove_stale_recordings(out_dir) -> list[Path]:
    """Remove the temporary files that killed servers left in ``out_dir`` (never a live writer's)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    videos = {name[1:-len(PART_SUFFIX)].rsplit(".", 1)[0] for name in os.listdir(out_dir)
              if name.startswith("." + NAME_PREFIX) and name.endswith(PART_SUFFIX)}
    return [part for video in sorted(videos) for part in remove_stale_parts(out_dir / video)]


def reserve_name(out_dir: Path, stem: str) -> Path:
    """``out_dir/<stem>.mp4``, or ``<stem>-2.mp4``, ...: the first name created here (empty) by this call."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = out_dir / (f"{stem}.mp4" if n == 1 else f"{stem}-{n}.mp4")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return path
    raise RequestError(f"save: more than 10000 videos named {stem}-*.mp4 exist")


def jpeg(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


class Session:
    def __init__(self, engine: Engine, post: Callable[[object], None]):
        self.engine = engine
        self._post = post
        self._pending: collections.deque[Command] = collections.deque()  # guarded by _wake
        self._wake = threading.Condition()
        self.streaming = False  # whether a stream runs (written by the worker)
        self._credits = threading.Semaphore(CHUNKS_IN_FLIGHT)
        self._closing = threading.Event()
        self._recording: VideoWriter | None = None  # the last stream's video until saved or replaced
        self.done: concurrent.futures.Future = concurrent.futures.Future()  # set when the thread ends
        self._thread = threading.Thread(target=self._work, name="flex-serve-session", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ called from the event loop

    def submit(self, command: Command) -> None:
        """Queue a command; a RequestError when MAX_PENDING already wait."""
        with self._wake:
            if command.type == "switch" and self._pending and self._pending[-1].type == "switch":
                self._pending[-1] = command  # only the latest prompt before the next chunk matters
            elif len(self._pending) >= MAX_PENDING:
                raise RequestError(f"{command.type}: {MAX_PENDING} commands are waiting already; "
                                   f"wait for their replies")
            else:
                self._pending.append(command)
            self._wake.notify()

    def chunk_sent(self) -> None:
        self._credits.release()

    def close(self) -> None:
        """Stop any stream, discard an unsaved video and end the thread (see ``done``)."""
        self._closing.set()
        with self._wake:
            self._pending.clear()  # nothing queued outlives the connection
            self._pending.append(_CLOSE)
            self._wake.notify()

    def _next(self, wait: bool) -> Command | None:
        with self._wake:
            while wait and not self._pending:
                self._wake.wait()
            return self._pending.popleft() if self._pending else None

    # ------------------------------------------------------------ the worker thread

    def _work(self) -> None:
        pending = None
        try:
            while True:
                command, pending = pending or self._next(wait=True), None
                if command.type == "close":
                    return
                try:
                    if command.type == "start":
                        pending = self._stream(command)
                    elif command.type == "save":
                        self._save()
                    else:
                        raise RequestError(f"{command.type}: no stream is running (start one first)")
                except RequestError as err:
                    self._post({"type": "error", "message": str(err)})
                except Exception as err:  # the model or the file system failed: tell the page, keep serving
                    log.exception("%s failed", command.type)
                    self._post(failure(command.type, err))
        finally:
            self._discard()
            self.done.set_result(None)

    def _stream(self, command: Command) -> Command | None:
        """Run one stream until it ends, is stopped or replaced; returns a command to run next."""
        self._discard()  # a new stream replaces the last one's unsaved video
        engine = self.engine
        stream = engine.open_stream(engine.encode(command.prompt), command.seed)
        decoder = engine.vae.stream()
        name = f"{NAME_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-seed{command.seed}.mp4"  # the final one: at save
        self._recording = recording = VideoWriter(engine.out_dir / name, fps=engine.fps, crf=engine.crf)
        self.streaming = True
        self._post({"type": "started", "prompt": command.prompt, "seed": command.seed,
                    "total_frames": pixel_frames(engine.num_frames)})
        latent_frames = frames = chunks = 0
        generating_s = 0.0
        start = time.perf_counter()
        reason, pending = "error", None  # until the loop below ends normally
        chunks_iter = iter(stream)
        try:
            while True:
                t0 = time.perf_counter()
                latents = next(chunks_iter, None)
                if latents is None:
                    reason = "finished"
                    break
                engine.synchronize()
                generating_s += time.perf_counter() - t0
                video = engine.decode(decoder, latents)
                recording.append(video)
                chunks += 1
                latent_frames += latents.shape[1]
                frames += video.shape[0]
                elapsed = time.perf_counter() - start
                if not self._wait_for_credit():
                    reason = "closed"
                    break
                self._post({"type": "chunk", "index": chunks - 1, "frames": frames, "latent_frames": latent_frames,
                            "n": int(video.shape[0]), "latent_fps": latent_frames / generating_s,
                            "decoded_fps": frames / elapsed})
                for frame in video:
                    self._post(jpeg(frame))
                self._post(CHUNK_END)
                stop, pending = self._between_chunks(stream, frames)
                if stop is not None:
                    reason = stop
                    break
        finally:
            stream.close()
            self.streaming = False
            self._post({"type": "stopped", "reason": reason, "frames": frames,
                        "seconds": round(time.perf_counter() - start, 3)})
        return pending

    def _between_chunks(self, stream, frames: int) -> tuple[str | None, Command | None]:
        """Apply the commands that came in during the last chunk; (stop reason, next command)."""
        while True:
            command = self._next(wait=False)
            if command is None:
                return None, None
            if command.type == "switch":
                if self._superseded():
                    continue
                try:
                    stream.switch(self.engine.encode(command.prompt), command.mode)
                except Exception as err:  # the stream goes on with its prompt
                    log.exception("switch failed")
                    self._post(failure("switch", err))
                    continue
                self._post({"type": "switched", "prompt": command.prompt, "at_frame": frames,
                            "mode": command.mode or stream.recache})
            elif command.type == "stop":
                return "stopped", None
            elif command.type == "start":
                return "restarted", command
            elif command.type == "close":
                return "closed", command
            else:
                self._post({"type": "error", "message": f"{command.type}: stop the stream first"})

    def _superseded(self) -> bool:
        """Whether a stop, restart or close waits (a switch before it would be encoded for nothing)."""
        with self._wake:
            return any(c.type in ("stop", "start", "close") for c in self._pending)

    def _wait_for_credit(self) -> bool:
        """Wait until the page has taken an earlier chunk; False when the session is closing."""
        while not self._closing.is_set():
            if self._credits.acquire(timeout=0.1):
                return True
        return False

    def _save(self) -> None:
        recording = self._recording
        if recording is None or recording.frames_written == 0:
            raise RequestError("save: there is no video to save (start a stream first)")
        frames = recording.frames_written
        stem = recording.path.name[:-len(".mp4")]
        recording.path = reserve_name(self.engine.out_dir, stem)  # exclusive: no other save gets this name
        try:
            path = recording.close()  # atomic: the reserved (empty) name gets the complete file
        except BaseException:
            recording.path.unlink(missing_ok=True)
            raise
        self._recording = None
        self._post({"type": "saved", "file": path.name, "frames": frames, "seconds": frames / self.engine.fps})

    def _discard(self) -> None:
        if self._recording is not None:
            self._recording.abort()
            self._recording = None


def failure(what: str, err: Exception) -> dict:
    """The page's message for a server-side failure: what failed, not where (the log has the detail)."""
    return {"type": "error", "message": f"{what} failed on the server ({type(err).__name__}); see the server's log"}
