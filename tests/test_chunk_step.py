"""Fixed-buffer chunk passes (flex.chunk_step): device tables, torch.compile, CUDA graphs.

The eager pipeline path is the reference: the fixed-buffer pass must generate the same
latents (bit for bit when traced without inductor), trace with no graph break, and compile
once however long the stream is.
"""
import pytest
import torch

from flex import ops
from flex.chunk_step import ChunkStep, compile_options
from flex.config import FlexConfig
from flex.models import CausalWanModel
from flex.pipeline import Pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

# The masked C++ attention where it is built (the pass is then compiled from the first chunk).
BACKEND = "cpp" if "cpp" in ops.available_backends("ring_attention", "cpu") else "reference"

HW = (4, 6)  # 2 x 3 tokens per frame
CONFIGS = {
    "flex, sink 3 + window 9": FlexConfig(sink_frames=3, window_frames=9),
    "dynamic S (rotate-on-load)": FlexConfig(sink_frames=3, window_frames=6, dynamic=True),
    "window positions": FlexConfig(sink_frames=3, window_frames=6, position_policy="window"),
    "ntk, no sink": FlexConfig(strategy="ntk", sink_frames=0, window_frames=6, rho=0.0),
    "lol jitter (per-head tables)": FlexConfig(method="lol-jitter", sink_frames=3, window_frames=9),
    "lol jitter, window positions (per-head key tables)": FlexConfig(method="lol-jitter", sink_frames=3,
                                                                    window_frames=6, position_policy="window"),
}


def tiny(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return CausalWanModel("tiny").to(dtype).eval()


def text_emb(seed=1, dtype=torch.float32):
    return torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(seed)).to(dtype)


def generate(pipe, frames, seed=3, text_seed=1):
    text = text_emb(text_seed, pipe.model.param_dtype)
    return pipe.generate(text, frames, HW, generator=torch.Generator(pipe.model.device).manual_seed(seed))


class CountingBackend:
    """A torch.compile backend that runs the traced graph as is; counts compilations and runs."""

    def __init__(self):
        self.graphs = 0
        self.runs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1

        def run(*args):
            self.runs += 1
            return gm.forward(*args)
        return run


@pytest.mark.parametrize("name", list(CONFIGS))
def test_device_tables_equal_host_tables(name):
    cfg = CONFIGS[name]
    model = tiny()
    pipe = Pipeline(model, cfg)
    step = ChunkStep(model, 1, 2, 3, cfg)
    step.begin_stream(model.encode_text(text_emb()))
    n, total = cfg.chunk_frames, 60
    for f0 in range(0, total, n):
        rope, shift, scale = pipe.chunk_positions(f0, n, total)
        step.set_chunk(f0, rope, shift, scale)
        host = pipe.chunk_tables(step.cache, f0, n, total)  # host ints and host thetas
        device = step.positions(scale)  # 0-d device buffers and device theta buffers
        assert host.scale == device.scale == scale
        for field in ("frames", "slots", "freqs_t", "freqs_h", "freqs_w", "key_freqs_t"):
            a, b = getattr(device, field), getattr(host, field)
            assert (a is None) == (b is None), field
            if a is not None:
                assert torch.equal(a, b), f"{field} differs at frame {f0}"
        step.cache.layers[0].mark_written(f0, n, step.cache.slots(f0, n))  # what the chunk's passes record


@pytest.mark.parametrize("name", list(CONFIGS))
def test_traced_stream_is_bit_identical_and_compiles_once(name):
    cfg = CONFIGS[name]
    model = tiny()
    frames = 20 * cfg.chunk_frames  # far past the ring: eviction and wrap-around
    with torch.no_grad():
        ref = generate(Pipeline(model, cfg, backend=BACKEND), frames)
    counter = CountingBackend()
    pipe = Pipeline(model, cfg, backend=BACKEND, compile=counter)  # dynamo traces the pass whole (fullgraph=True)
    with torch.no_grad():
        out = generate(pipe, frames)
    assert torch.equal(out, ref)
    assert counter.graphs == 1  # one variant serves every chunk once the ring is full
    compiled = counter.graphs
    with torch.no_grad():  # a second stream, another prompt: same step, same compiled code
        out2 = generate(pipe, frames, seed=4, text_seed=5)
        ref2 = generate(Pipeline(model, cfg, backend=BACKEND), frames, seed=4, text_seed=5)
    assert torch.equal(out2, ref2)
    assert counter.graphs == compiled


@pytest.mark.parametrize("backend", ["reference", "cpp", "sdpa", "triton"])
@pytest.mark.parametrize("dynamic", [False, True])
def test_every_backend_traces_whole(backend, dynamic):
    """fullgraph tracing with each backend's kernels (Triton: interpreted on a CPU)."""
    from flex import ops

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if backend not in ops.available_backends("ring_attention", device) and backend != "sdpa":
        pytest.skip(f"{backend} is not available on {device}")
    if backend == "sdpa" and dynamic:
        pytest.skip("sdpa has no rotate-on-load (dynamic S needs it)")
    cfg = FlexConfig(sink_frames=3, window_frames=3, dynamic=dynamic)
    model = tiny().to(device)
    counter = CountingBackend()
    with torch.no_grad():
        ref = Pipeline(model, cfg, backend=backend).generate(
            text_emb().to(device), 12, (2, 4), generator=torch.Generator(device).manual_seed(1))
        out = Pipeline(model, cfg, backend=backend, compile=counter).generate(
            text_emb().to(device), 12, (2, 4), generator=torch.Generator(device).manual_seed(1))
    assert counter.graphs == 1 and torch.equal(out, ref)


@pytest.mark.parametrize("backend, eager_chunks", [("cpp", 0), ("sdpa", 3)])
def test_compiled_from_the_first_chunk_unless_the_backend_slices_the_ring(backend, eager_chunks):
    """Masked kernels do not depend on the resident prefix: compiled from chunk 0. SDPA slices
    it, so the chunks that fill the ring (sink 3 + window 9 = 4 chunks of 3) run eagerly."""
    cfg = CONFIGS["flex, sink 3 + window 9"]
    model = tiny()
    counter = CountingBackend()
    chunks = 10
    with torch.no_grad():
        ref = generate(Pipeline(model, cfg, backend=backend), chunks * 3)
        out = generate(Pipeline(model, cfg, backend=backend, compile=counter), chunks * 3)
    assert torch.equal(out, ref)
    assert counter.graphs == 1 and counter.runs == 5 * (chunks - eager_chunks)  # 4 steps + clean pass


@pytest.mark.parametrize("mode", [True, "frozen"])
def test_inductor_stream_matches_eager(mode):
    cfg = CONFIGS["flex, sink 3 + window 9"]
    model = tiny()
    frames = 8 * cfg.chunk_frames
    with torch.no_grad():
        ref = generate(Pipeline(model, cfg), frames)
        out = generate(Pipeline(model, cfg, compile=mode), frames)
    assert torch.isfinite(out).all()
    rel = ((out - ref).abs().max() / ref.abs().max()).item()
    assert rel < 1e-4, rel


def test_step_reused_for_the_same_shape_and_rebuilt_for_another():
    model = tiny()
    pipe = Pipeline(model, CONFIGS["flex, sink 3 + window 9"], compile="eager")
    with torch.no_grad():
        generate(pipe, 6)
        first = pipe.step
        generate(pipe, 9)
        assert pipe.step is first and pipe.cache is first.cache
        pipe.generate(text_emb(), 6, (2, 4))
    assert pipe.step is not first and pipe.step.matches(1, 1, 2)


def test_bad_options_are_named():
    model = tiny()
    cfg = CONFIGS["flex, sink 3 + window 9"]
    with pytest.raises(ValueError, match="compile"):
        Pipeline(model, cfg, compile=3)
    with pytest.raises(ValueError, match="cuda_graphs"):
        Pipeline(model, cfg, cuda_graphs="yes")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device"):
            Pipeline(model, cfg, cuda_graphs=True)
    yarn = FlexConfig(strategy="yarn", dynamic=True, sink_frames=3, window_frames=6)
    with pytest.raises(ValueError, match="YaRN with dynamic=True"):
        ChunkStep(model, 1, 2, 3, yarn, compile=True)
    with pytest.raises(ValueError, match="YaRN with dynamic=True"):
        Pipeline(model, yarn, compile=True)  # refused at construction, before any stream
    step = ChunkStep(model, 1, 2, 3, cfg)
    with pytest.raises(RuntimeError, match="begin_stream"):
        step(torch.zeros(1, 3, 16, *HW), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="position_shift"):
        step.set_chunk(3, model.default_rope(), position_shift=1)
    with pytest.raises(ValueError, match="first_frame"):
        step.set_chunk(-3, model.default_rope())
    assert compile_options(False) is None and compile_options("aot_eager") == {"backend": "aot_eager"}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("name", ["flex, sink 3 + window 9", "dynamic S (rotate-on-load)",
                                  "lol jitter, window positions (per-head key tables)"])
def test_cuda_graph_stream_matches_eager(compile, name):
    """A captured graph replays no host work: the steady state of each configuration has no host
    sync (capture would fail on one) and gives the eager stream."""
    cfg = CONFIGS[name]
    model = tiny().cuda()
    frames = 12 * cfg.chunk_frames
    with torch.no_grad():
        ref = generate(Pipeline(model, cfg), frames)
        pipe = Pipeline(model, cfg, compile=compile, cuda_graphs=True)
        out = generate(pipe, frames)
        out2 = generate(pipe, frames)  # replays only
    assert pipe.step.graph_count == 1
    for o in (out, out2):
        rel = ((o - ref).abs().max() / ref.abs().max()).item()
        assert rel < (1e-4 if compile else 1e-6), rel
