"""Decode while the next chunk is generated: a worker thread that turns latent chunks into frames.

Decoding a chunk (VAE) and generating the next one (DiT) are independent, so a video's
end-to-end rate can approach min(diffusion FPS, decode FPS) instead of their harmonic sum:

    with DecodeWorker(vae.stream(), writer.append) as worker:
        for latents in pipe.stream(...):
            worker.submit(latents)          # returns at once unless ``depth`` chunks are waiting
    # leaving the block waits for the last chunk; an error of the worker is raised there

Chunks are decoded in order by one thread, so the frames are exactly those of decoding in
the loop. On a GPU the worker decodes on its own CUDA stream, after an event recorded on the
generating stream, so the decoder's kernels can run between the DiT's. Each submitted chunk
is copied first: a compiled / CUDA-graph pass may reuse its output buffer for the next chunk.
``threaded=False`` decodes inside ``submit`` (the same frames, one after the other).
"""
from __future__ import annotations

import queue
import threading
from typing import Callable

import torch

_STOP = object()


class DecodeWorker:
    """Decode latent chunks with ``decode`` and hand the frames to ``sink``, in a worker thread.

    decode    chunk latents [B, f, 16, h, w] -> frames (e.g. a flex.decoders.wan_vae.DecodeStream)
    sink      called with the first sample's frames of each chunk, in order (e.g. VideoWriter.append)
    depth     chunks that may wait for the decoder before ``submit`` blocks (bounds memory)
    """

    def __init__(self, decode: Callable, sink: Callable, *, depth: int = 2, threaded: bool = True):
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            raise ValueError(f"depth must be an int >= 1, got {depth!r}")
        if not isinstance(threaded, bool):
            raise ValueError(f"threaded must be a bool, got {threaded!r}")
        self.decode, self.sink, self.threaded = decode, sink, threaded
        self.chunks_done = 0
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._cancel = threading.Event()
        self._thread = None
        self._side_stream = None

    # ------------------------------------------------------------ main thread

    def __enter__(self) -> "DecodeWorker":
        if self.threaded:
            self._thread = threading.Thread(target=self._run, name="flex-decode", daemon=True)
            self._thread.start()
        return self

    def submit(self, latents: torch.Tensor) -> None:
        """Queue one chunk (blocks while ``depth`` chunks wait); raises the worker's error, if any."""
        self._raise_error()
        if not self.threaded:
            self._decode_one(latents, None)
            return
        latents = latents.detach().clone()
        event = None
        if latents.is_cuda:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(latents.device))
        while True:  # a bounded put that notices a worker that died meanwhile
            try:
                self._queue.put((latents, event), timeout=0.1)
                return
            except queue.Full:
                self._raise_error()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._thread is None:
            return
        if exc_type is not None:  # interrupted: drop what waits, do not decode it
            self._cancel.set()
            self._drain()
        self._queue.put(_STOP)
        self._thread.join()
        self._thread = None
        if exc_type is None:
            self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    # ------------------------------------------------------------ worker thread

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._cancel.is_set():
                continue
            try:
                self._decode_one(*item)
            except BaseException as err:  # noqa: BLE001 -- handed to the main thread
                self._error = err
                self._cancel.set()  # later chunks are skipped; the loop still ends at _STOP

    def _decode_one(self, latents: torch.Tensor, event) -> None:
        with torch.no_grad():
            if event is None:
                frames = self.decode(latents)
            else:
                if self._side_stream is None:
                    self._side_stream = torch.cuda.Stream(latents.device)
                with torch.cuda.stream(self._side_stream):
                    self._side_stream.wait_event(event)
                    latents.record_stream(self._side_stream)
                    frames = self.decode(latents)
        self.sink(frames[0])
        self.chunks_done += 1


__all__ = ["DecodeWorker"]
