"""flex.decoders.worker: decoding in a worker thread gives the frames of decoding in the loop, in
order; the worker's errors reach the caller; an interrupted caller decodes nothing more."""
import threading

import pytest
import torch

from flex.decoders.worker import DecodeWorker


class FakeDecoder:
    """A stateful 'decoder' (like the VAE's stream): each output depends on every chunk before."""

    def __init__(self, fail_at=None, gate=None):
        self.total, self.calls, self.fail_at, self.gate = torch.zeros(()), 0, fail_at, gate
        self.threads = set()

    def __call__(self, latents):
        self.threads.add(threading.get_ident())
        if self.gate is not None:
            self.gate.wait(5)
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("decoder broke")
        self.total = self.total + latents.sum()
        return (latents.cumsum(1) + self.total)[:, :, :1].repeat(1, 1, 2, 1, 1)  # [B, f, 2, h, w]


def _chunks(n=6):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, 3, 4, 2, 3, generator=g) for _ in range(n)]


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_threaded_frames_equal_the_loop(depth):
    chunks = _chunks()
    loop, got = FakeDecoder(), []
    want = [loop(c)[0] for c in chunks]
    decoder = FakeDecoder()
    with DecodeWorker(decoder, got.append, depth=depth) as worker:
        for c in chunks:
            worker.submit(c)
    assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))
    assert worker.chunks_done == len(chunks) and threading.get_ident() not in decoder.threads


def test_unthreaded_decodes_in_submit():
    got, decoder = [], FakeDecoder()
    with DecodeWorker(decoder, got.append, threaded=False) as worker:
        worker.submit(_chunks(1)[0])
        assert len(got) == 1  # already there
    assert decoder.threads == {threading.get_ident()}


def test_submitted_chunk_is_copied():
    """A compiled / graph-captured pass reuses its output buffer: the worker must not see the reuse."""
    gate = threading.Event()
    got = []
    buffer = torch.ones(1, 3, 4, 2, 3)
    with DecodeWorker(FakeDecoder(gate=gate), got.append, depth=2) as worker:
        worker.submit(buffer)
        buffer.fill_(100.0)  # the next chunk overwrites the buffer while the first waits
        gate.set()
    want = FakeDecoder()(torch.ones(1, 3, 4, 2, 3))[0]
    assert torch.equal(got[0], want)


def test_decoder_error_reaches_the_caller():
    got = []
    with pytest.raises(RuntimeError, match="decoder broke"):
        with DecodeWorker(FakeDecoder(fail_at=2), got.append) as worker:
            for c in _chunks():
                worker.submit(c)
    assert len(got) == 1  # nothing after the failed chunk


def test_interrupted_caller_stops_the_worker():
    gate = threading.Event()
    got, decoder = [], FakeDecoder(gate=gate)
    with pytest.raises(KeyboardInterrupt):
        with DecodeWorker(decoder, got.append, depth=3) as worker:
            for c in _chunks(3):
                worker.submit(c)
            gate.set()
            raise KeyboardInterrupt
    assert worker._thread is None and decoder.calls <= 3  # joined; waiting chunks were dropped


@pytest.mark.parametrize("kwargs, match", [(dict(depth=0), "depth"), (dict(depth=True), "depth"),
                                           (dict(threaded=1), "threaded")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DecodeWorker(FakeDecoder(), print, **kwargs)


def test_error_on_the_last_chunk_does_not_hang():
    """The caller may already be waiting at the end when the last chunk fails."""
    gate = threading.Event()
    decoder = FakeDecoder(fail_at=2, gate=gate)
    with pytest.raises(RuntimeError, match="decoder broke"):
        with DecodeWorker(decoder, [].append) as worker:
            for c in _chunks(2):
                worker.submit(c)
            threading.Timer(0.2, gate.set).start()  # fail only once the end is being waited for
    assert worker._thread is None
