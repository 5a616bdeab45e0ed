"""One page's use of the model: a worker thread that runs, decodes, records and sends streams.

Everything that touches the device or the recording file runs on the session's worker
thread, so the server's event loop only forwards messages and stays responsive. The thread
takes :class:`~flex.serve.protocol.Command` objects from a queue; while a stream runs it
looks at the queue between chunks (switch the prompt, stop, restart, close). Messages for the
page go out through ``post`` (thread-safe): dicts (JSON), bytes (a JPEG frame) and
:data:`CHUNK_END` after each chunk, which the sender acknowledges with :meth:`chunk_sent` so
that a slow page holds the generation back instead of piling frames up in memory.
"""
from __future__ import annotations

import concurrent.futures
import io
import logging
import queue
import threading
import time
from typing import Callable

import numpy as np

from ..vae import pixel_frames
from ..video import VideoWriter
from .engine import Engine
from .protocol import Command, RequestError

log = logging.getLogger("flex.serve")

CHUNK_END = object()  # posted after the frames of each chunk
CHUNKS_IN_FLIGHT = 2  # chunks sent but not yet acknowledged by the sender
JPEG_QUALITY = 85
_CLOSE = Command("close")


def jpeg(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


class Session:
    def __init__(self, engine: Engine, post: Callable[[object], None]):
        self.engine = engine
        self._post = post
        self._commands: queue.Queue[Command] = queue.Queue()
        self._credits = threading.Semaphore(CHUNKS_IN_FLIGHT)
        self._closing = threading.Event()
        self._recording: VideoWriter | None = None  # the last stream's video until saved or replaced
        self.done: concurrent.futures.Future = concurrent.futures.Future()  # set when the thread ends
        self._thread = threading.Thread(target=self._work, name="flex-serve-session", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ called from the event loop

    def submit(self, command: Command) -> None:
        self._commands.put(command)

    def chunk_sent(self) -> None:
        self._credits.release()

    def close(self) -> None:
        """Stop any stream, discard an unsaved video and end the thread (see ``done``)."""
        self._closing.set()
        self._commands.put(_CLOSE)

    # ------------------------------------------------------------ the worker thread

    def _work(self) -> None:
        pending = None
        try:
            while True:
                command, pending = pending or self._commands.get(), None
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
                    self._post({"type": "error", "message": f"{command.type} failed: {err}"})
        finally:
            self._discard()
            self.done.set_result(None)

    def _stream(self, command: Command) -> Command | None:
        """Run one stream until it ends, is stopped or replaced; returns a command to run next."""
        self._discard()  # a new stream replaces the last one's unsaved video
        engine = self.engine
        stream = engine.open_stream(engine.encode(command.prompt), command.seed)
        decoder = engine.vae.stream()
        name = f"flex-{time.strftime('%Y%m%d-%H%M%S')}-seed{command.seed}.mp4"
        self._recording = recording = VideoWriter(engine.out_dir / name, fps=engine.fps, crf=engine.crf)
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
            self._post({"type": "stopped", "reason": reason, "frames": frames,
                        "seconds": round(time.perf_counter() - start, 3)})
        return pending

    def _between_chunks(self, stream, frames: int) -> tuple[str | None, Command | None]:
        """Apply the commands that came in during the last chunk; (stop reason, next command)."""
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return None, None
            if command.type == "switch":
                try:
                    stream.switch(self.engine.encode(command.prompt), command.mode)
                except Exception as err:  # the stream goes on with its prompt
                    log.exception("switch failed")
                    self._post({"type": "error", "message": f"switch failed: {err}"})
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
        path = recording.close()  # atomic: the file appears complete or not at all
        self._recording = None
        self._post({"type": "saved", "file": path.name, "frames": frames, "seconds": frames / self.engine.fps})

    def _discard(self) -> None:
        if self._recording is not None:
            self._recording.abort()
            self._recording = None
