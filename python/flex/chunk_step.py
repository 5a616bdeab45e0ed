"""A chunk pass whose per-chunk state lives in fixed device tensors: compilable and capturable.

The eager pipeline path hands every pass host values (the chunk's first frame, slots built
from it, RoPE tables computed for it). ChunkStep instead keeps everything a pass reads in
device buffers that are refilled in place between chunks,

    first_frame, position_shift    0-d int64
    thetas_t / thetas_h / thetas_w float64 (refilled only when the RoPE scale S changes)
    text K/V                       copied in once per stream
    the ring KV cache              one per ChunkStep, reused by every stream of that shape

and derives the frame indices, ring slots and RoPE tables on the device inside the pass.
A pass is then the same sequence of kernels over the same addresses every chunk:

* ``compile`` (True, "frozen", or a torch.compile backend): torch.compile traces it with
  ``fullgraph=True`` (no graph break, no host read);
* ``cuda_graphs``: it is captured once in a CUDA graph (after a warm-up pass that does the
  real work) and replayed; inputs are copied into static buffers, outputs cloned.

One compiled variant / one graph serves every chunk of every stream of that shape. With
the attention backends that slice the resident ring prefix (sdpa, flash) the pass depends on
its size, which grows while the ring fills: there the first (sink + window) / chunk chunks
run the same pass eagerly and compilation / capture starts once the ring is full. The masked
kernels (cpp, triton) read the slot frames on the device and are compiled from the first
chunk. (On a CPU, auto takes SDPA for the unmasked attention: compiled, it measured a few
percent faster per chunk than the C++ kernel, which matters more than the 4 eager chunks.)

The softmax scale is part of the variant: with YaRN it follows the video length; YaRN with
``dynamic=True`` would change it every chunk and is refused.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import ops
from .cache import TextCache
from .config import FlexConfig
from .models.wan import CausalWanModel
from .positions import ChunkPositions, PositionPolicy, chunk_positions
from .rope import Rope3D, axis_planes
from .errors import SettingsError


COMPILE_MODES = {
    # inductor as is: weights stay inputs, so later weight changes are seen.
    True: dict(backend="inductor"),
    # inductor with the weights frozen into the compiled code (constant folding, prepacked
    # GEMM weights) and autotuned GEMMs: the fastest CPU inference. Weights changed after the
    # first pass are NOT seen: build a new Pipeline after loading other weights.
    "frozen": dict(backend="inductor", options={"freezing": True, "max_autotune": True}),
}


def compile_options(compile) -> dict | None:
    """torch.compile keyword arguments for the ``compile`` option, or None when it is off.

    False: eager. True: inductor. "frozen": inductor with frozen weights and autotuned GEMMs.
    Any other string or a callable: that torch.compile backend (e.g. "aot_eager").
    """
    if compile is False or compile is None:
        return None
    if compile is True or compile == "frozen":
        return dict(COMPILE_MODES[compile])
    if isinstance(compile, str) or callable(compile):
        return dict(backend=compile)
    raise SettingsError("compile", f"must be a bool, 'frozen', a torch.compile backend name or a backend callable, "
                                   f"got {compile!r}")


def check_step_options(device, config: FlexConfig, compile, cuda_graphs) -> dict | None:
    """Validate the compile / cuda_graphs options for a model on ``device`` with this config;
    returns the torch.compile kwargs (None when compile is off)."""
    if not isinstance(cuda_graphs, bool):
        raise SettingsError("cuda_graphs", f"must be a bool, got {cuda_graphs!r}")
    if cuda_graphs and torch.device(device).type != "cuda":
        raise SettingsError("cuda_graphs", f"needs a CUDA device, got device {str(device)!r}")
    compile_kwargs = compile_options(compile)
    if (compile_kwargs is not None or cuda_graphs) and config.dynamic and config.strategy == "yarn":
        raise SettingsError(("compile", "cuda_graphs"), "need a fixed softmax scale, but YaRN with dynamic=True "
                            "changes it every chunk: use dynamic=False or another strategy")
    return compile_kwargs


class ChunkStep:
    """Runs model passes of ``config.chunk_frames``-frame chunks on a [grid_h x grid_w] grid.

    Use: ``begin_stream(text_cache)`` once per stream, ``set_chunk(...)`` once per chunk, then
    ``step(x, t)`` for each pass of the chunk (x [B, n, C, H, W], t [B, n]).
    """

    def __init__(
        self,
        model: CausalWanModel,
        batch: int,
        grid_h: int,
        grid_w: int,
        config: FlexConfig,
        backend="auto",
        *,
        compile: bool | str | Callable = False,
        cuda_graphs: bool = False,
        parallel=None,
    ):
        compile_kwargs = check_step_options(model.device, config, compile, cuda_graphs)
        self.model, self.config = model, config
        self.batch, self.grid_h, self.grid_w = batch, grid_h, grid_w
        self.parallel = parallel  # sequence parallel (flex.sequence_parallel.ParallelPlan): this rank's heads
        dev = model.device
        self.cache = model.new_cache(batch, grid_h, grid_w, config.sink_frames, config.window_frames,
                                     parallel=parallel)
        self.n_frames = config.chunk_frames
        self.first_frame = torch.zeros((), dtype=torch.int64, device=dev)
        self.position_shift = torch.zeros((), dtype=torch.int64, device=dev)
        # The thetas as device buffers (refilled in place when S changes): a Rope3D of buffers,
        # the temporal one [H, C_t] when the method gives each head its own.
        t_shape = PositionPolicy(config, model.head_dim, model.num_heads).rope_for_length(1).thetas_t.shape
        self.thetas = Rope3D(*(torch.zeros(shape, dtype=torch.float64, device=dev)
                               for shape in (t_shape, *axis_planes(model.head_dim)[1:])))
        self.text: TextCache | None = None
        self.kernels = ops.plan(backend, dev, model.param_dtype, model.head_dim, config.rotate_on_load)
        self._rope: Rope3D | None = None
        self._resident, self._scale = 0, model.head_dim ** -0.5
        self._fn = self._pass
        if compile_kwargs is not None:
            # Compiled variants are cached per code object, so every ChunkStep of a process
            # (each shape, each pipeline) shares _pass's budget: make room for a few dozen.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            self._fn = torch.compile(self._pass, fullgraph=True, dynamic=False, **compile_kwargs)
        self.cuda_graphs = cuda_graphs
        self._graphs: dict = {}
        self._pool = None
        self._x = self._t = None

    def matches(self, batch: int, grid_h: int, grid_w: int) -> bool:
        return (self.batch, self.grid_h, self.grid_w) == (batch, grid_h, grid_w)

    @property
    def graph_count(self) -> int:
        """CUDA graphs captured so far (one per softmax scale)."""
        return len(self._graphs)

    @property
    def compiled_now(self) -> bool:
        """Whether the current chunk runs the compiled / captured pass (see the module doc)."""
        full = self._resident == self.cache.n_slots * self.cache.tokens_per_frame
        return full or not self.kernels.slices_resident_prefix

    def _variant(self) -> tuple:
        """What the compiled code / a CUDA graph depends on besides the buffers."""
        return (self._resident if self.kernels.slices_resident_prefix else None, self._scale)

    # ------------------------------------------------------------ host side, between passes

    def begin_stream(self, text: TextCache) -> None:
        """Empty the ring and copy the prompt's cross-attention K/V into the static buffers."""
        if text.batch != self.batch or len(text) != self.model.num_layers:
            raise ValueError(f"text was encoded for batch {text.batch}, but this step runs batch {self.batch}")
        same = self.text is not None and all(
            a.shape == b.shape and a.dtype == b.dtype for (a, _), (b, _) in zip(self.text.kv, text.kv))
        if not same:
            if self._graphs:  # captured graphs read the old buffers
                self._graphs.clear()
            self.text = TextCache([(k.clone(), v.clone()) for k, v in text.kv], text.batch)
        else:
            for (sk, sv), (k, v) in zip(self.text.kv, text.kv):
                sk.copy_(k)
                sv.copy_(v)
        self.cache.reset()

    def set_text(self, text: TextCache) -> None:
        """Copy another prompt's cross-attention K/V into the static buffers (a prompt switch)."""
        if self.text is None:
            raise RuntimeError("call begin_stream(text) before switching the prompt")
        if text.batch != self.batch or len(text) != len(self.text) or any(
                a.shape != b.shape or a.dtype != b.dtype for (a, _), (b, _) in zip(self.text.kv, text.kv)):
            raise ValueError("the new prompt's K/V must have the shapes of the stream's (same batch and text_len)")
        for (sk, sv), (k, v) in zip(self.text.kv, text.kv):
            sk.copy_(k)
            sv.copy_(v)

    def set_chunk(self, first_frame: int, rope: Rope3D, position_shift: int = 0, scale: float | None = None) -> None:
        """Point the buffers at chunk [first_frame, +chunk_frames) with positions from ``rope``."""
        if not isinstance(position_shift, int) or position_shift > first_frame:
            raise ValueError(f"position_shift must be an int <= first_frame={first_frame}, got {position_shift!r}")
        if (position_shift > 0) != (position_shift != 0 and self.config.rotate_on_load):
            raise ValueError("position_shift > 0 needs rotate-on-load (a dynamic or window-position FlexConfig); "
                             "< 0 (a RoPE cut) needs pre-rotated keys")
        table = self.cache.table
        written = table.frames_written
        table.reserve(first_frame, self.n_frames)
        resident = table.resident_prefix_tokens()
        if resident is None and self.kernels.slices_resident_prefix:
            raise ValueError(f"chunks must be set in order from frame 0 (got first_frame {first_frame} after "
                             f"{written} frames) and without a KV flush: the planned attention reads the "
                             f"resident ring prefix (a masked backend, cpp or triton, reads any slots)")
        self.first_frame.fill_(first_frame)  # a fill kernel: no host-to-device copy
        self.position_shift.fill_(position_shift)
        if rope is not self._rope:  # new S: a small copy, once per stream unless S is dynamic
            for buffer, thetas in zip((self.thetas.thetas_t, self.thetas.thetas_h, self.thetas.thetas_w),
                                      (rope.thetas_t, rope.thetas_h, rope.thetas_w)):
                buffer.copy_(thetas)
            self._rope = rope
        self._resident = resident
        self._scale = self.model.head_dim ** -0.5 if scale is None else float(scale)

    # ------------------------------------------------------------ the pass

    def positions(self, scale: float) -> ChunkPositions:
        """The chunk's frames, slots and RoPE tables, computed on the device from the buffers."""
        return chunk_positions(self.thetas, self.cache.table, self.first_frame, self.n_frames, self.grid_h,
                               self.grid_w, position_shift=self.position_shift,
                               rotate_on_load=self.config.rotate_on_load, scale=scale, dtype=self.model.table_dtype)

    def _pass(self, x: torch.Tensor, t: torch.Tensor, resident_tokens: int, scale: float) -> torch.Tensor:
        return self.model.chunk_pass(x, t, self.text, self.cache, self.positions(scale), resident_tokens,
                                     self.kernels, self.parallel)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.text is None:
            raise RuntimeError("call begin_stream(text) before running passes")
        if not self.compiled_now:
            return self._pass(x, t, self._resident, self._scale)
        if not self.cuda_graphs:
            return self._fn(x, t, self._resident, self._scale)
        return self._graph_pass(x, t)

    def _graph_pass(self, x, t):
        key = self._variant()
        if self._x is None or self._x.shape != x.shape or self._t.shape != t.shape:
            self._x, self._t = torch.empty_like(x), torch.empty_like(t)
            self._graphs.clear()
        self._x.copy_(x)
        self._t.copy_(t)
        entry = self._graphs.get(key)
        if entry is None:
            # Warm-up on a side stream (allocator, autotuning, compilation): a real pass.
            main = torch.cuda.current_stream(x.device)
            side = torch.cuda.Stream(x.device)
            side.wait_stream(main)
            with torch.cuda.stream(side):
                out = self._fn(self._x, self._t, self._resident, self._scale)
            main.wait_stream(side)
            out = out.clone()
            # Capture only records kernels; the cache already holds what this pass writes.
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                static_out = self._fn(self._x, self._t, self._resident, self._scale)
            # One pool for all graphs: they never run concurrently and outputs are cloned.
            self._pool = graph.pool()
            self._graphs[key] = (graph, static_out)
            return out
        graph, static_out = entry
        graph.replay()
        return static_out.clone()


__all__ = ["COMPILE_MODES", "ChunkStep", "check_step_options", "compile_options"]
