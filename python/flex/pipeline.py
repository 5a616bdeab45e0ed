"""Streaming chunk-wise generation exactly as Self Forcing does it, with the FLEX switches.

Per chunk of ``chunk_frames`` latent frames (frames [f0, f0 + n)):

1. initial noise: antiphase noise with ``rho`` (ANS; rho = 0 is i.i.d.), or the caller's;
2. for each denoising timestep t_i (Self Forcing: 1000, 937.5, 833.33, 625): the model
   predicts the flow v of the chunk (writing the chunk's k/v into its ring slots, attending
   to every resident slot); x0 = x_t - sigma_i v; unless it is the last step the next input
   is (1 - sigma_{i+1}) x0 + sigma_{i+1} eps with fresh noise eps (antiphase if
   ``ans_renoise``);
3. one more pass on the clean x0 at t = ``context_noise`` (0) stores the chunk's clean k/v;
4. the chunk's x0 is yielded.

FLEX switches (:class:`flex.config.FlexConfig`): the temporal RoPE strategy with S from the
requested length (static) or from the current length (``dynamic``; keys rotated on load with
the current thetas), ANS, and the sink + window ring cache. ``position_policy="window"``
re-indexes positions so sink frames come first, then the window frames in order, the query
chunk last (keys rotated on load from their slot's window position).

Positions and S: with "absolute" positions the RoPE length is the frame count (requested
total when static, current end frame when dynamic); with "window" positions it is the span
of positions actually used, min(frames, sink + window).

Memory is constant in the horizon: one ring cache of sink + window frames per layer,
allocated once per stream, plus one chunk of latents and noise.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from . import ops
from .checks import check_bool, check_float
from .cache import ModelKVCache, TextCache
from .chunk_step import ChunkStep, check_step_options
from .config import FlexConfig
from .methods.cache_methods import cache_policy
from .models.wan import CausalWanModel
from .noise import ChunkNoise, GivenNoise, NoiseSource
from .positions import ChunkPositions, PositionPolicy, chunk_positions
from .rope import Rope3D
from .schedule import SELF_FORCING_STEPS, FlowMatchSchedule
from .switching import (RECACHE_MODES, ContextLatents, Stream, apply_switch, check_mode, check_prompt_schedule,
                        check_switch_settings, switch_starts)

DEFAULT_LATENT_SIZE = (60, 104)  # 480 x 832 video


@dataclass
class ChunkInfo:
    """Progress of a stream after one chunk (passed to the callback)."""

    index: int
    first_frame: int
    n_frames: int
    frames_done: int
    total_frames: int
    chunks_done: int
    total_chunks: int
    elapsed_s: float

    @property
    def latent_fps(self) -> float:
        """Latent frames generated per second so far (VAE decode not included)."""
        return self.frames_done / self.elapsed_s if self.elapsed_s > 0 else float("inf")


class Pipeline:
    """Self Forcing inference with FLEX on a :class:`CausalWanModel`.

    Args:
        model: the causal Wan model (its parameter dtype sets the cache dtype; outputs and
            latents are float32, float64 for a float64 model).
        config: FLEX switches; ``FlexConfig.off(window_frames=F)`` with F covering the video
            reproduces upstream Self Forcing.
        denoising_steps: Self Forcing's step list (warped through the shift-5 schedule when
            ``warp_denoising_step``, else taken as raw timesteps).
        context_noise: timestep of the clean pass that stores each chunk's k/v (0 upstream).
        backend: backend of the attention ops, a name or ``{op: name}`` (see flex.ops).
        compile: run each pass through ``torch.compile``, traced whole from fixed device buffers
            (see flex.chunk_step): True = inductor; "frozen" = inductor with the weights frozen
            in (fastest on CPU; weights changed later are not seen); or a backend name/callable.
        cuda_graphs: capture each pass in a CUDA graph and replay it (CUDA models only);
            combines with ``compile``.
        parallel: a :class:`flex.sequence_parallel.ParallelPlan` to run every stream sequence parallel
            over its process group (each rank calls the same stream with the same prompt and
            noise; each gets the whole latents); None (default) runs in this process alone.
        recache: the default mode of a stream's prompt switches (:data:`flex.switching.SWITCH_MODES`;
            the LongLive preset's is "longlive").
        global_sink: whether the sink frames stay the sink across re-encoding switches (LongLive's
            ``global_sink``, default True); False moves it (see flex.switching).
    """

    def __init__(
        self,
        model: CausalWanModel,
        config: FlexConfig | None = None,
        *,
        denoising_steps: Sequence[float] = SELF_FORCING_STEPS,
        warp_denoising_step: bool = True,
        shift: float = 5.0,
        context_noise: float = 0.0,
        backend: str | Mapping[str, str] = "auto",
        compile: bool | str | Callable = False,
        cuda_graphs: bool = False,
        parallel=None,
        recache: str = "window",
        global_sink: bool = True,
    ):
        if not isinstance(model, CausalWanModel):
            raise ValueError(f"model must be a CausalWanModel, got {type(model).__name__}")
        config = FlexConfig() if config is None else config
        if not isinstance(config, FlexConfig):
            raise ValueError(f"config must be a FlexConfig, got {type(config).__name__}")
        check_float("context_noise", context_noise, 0.0, 1000.0)
        check_bool("warp_denoising_step", warp_denoising_step)
        self.recache = check_mode("recache", recache)
        self.global_sink = check_bool("global_sink", global_sink)
        ops.backend_per_op(backend)  # validates the name(s) now
        check_step_options(model.device, config, compile, cuda_graphs)
        if parallel is not None:  # sequence parallel: rules checked once here
            from .sequence_parallel import check_parallel
            check_parallel(parallel, model, compile, cuda_graphs)
        self.parallel = parallel
        # Passed on to the model only when set: models with the single-process signature still work.
        self._parallel_kw = {} if parallel is None else {"parallel": parallel}
        self.compile, self.cuda_graphs = compile, cuda_graphs
        self.step: ChunkStep | None = None  # the fixed-buffer pass, when compile or cuda_graphs
        self.model = model
        self.config = config
        self.backend = backend
        self.schedule = FlowMatchSchedule(shift)
        self.timesteps, self.sigmas = self.schedule.timesteps_and_sigmas(denoising_steps, warp_denoising_step)
        self.context_noise = float(context_noise)
        self.cache: ModelKVCache | None = None  # the ring cache of the latest stream
        self.positions = PositionPolicy(config, model.head_dim, model.num_heads)
        self._live_stream: object | None = None  # the running stream of the fixed-buffer pass

    # ------------------------------------------------------------ positions

    def chunk_positions(self, first_frame: int, n_frames: int, total_frames: int,
                        offset: int = 0) -> tuple[Rope3D, int, float]:
        """(RoPE thetas, position shift, softmax scale) of chunk [first_frame, +n_frames);
        ``offset``: how far RoPE cuts moved the chunk ahead (a negative shift)."""
        rope, shift, scale = self.positions.for_chunk(first_frame, n_frames, total_frames)
        return rope, shift - offset, scale

    def chunk_tables(self, cache: ModelKVCache, first_frame: int, n_frames: int, total_frames: int,
                     offset: int = 0, place: tuple | None = None) -> ChunkPositions:
        """The frames, slots and RoPE tables of one chunk (shared by its 5 passes and every layer);
        ``place``: its :meth:`chunk_positions` when already known."""
        rope, shift, scale = place or self.chunk_positions(first_frame, n_frames, total_frames, offset)
        return chunk_positions(rope, cache.table, first_frame, n_frames, cache.grid_h, cache.grid_w,
                               position_shift=shift, rotate_on_load=self.config.rotate_on_load, scale=scale,
                               dtype=self.model.table_dtype)

    def chunk_step(self, batch: int, grid_h: int, grid_w: int) -> ChunkStep:
        """The fixed-buffer pass for this shape (kept across streams: compiled code and graphs too)."""
        if self.step is None or not self.step.matches(batch, grid_h, grid_w):
            self.step = ChunkStep(self.model, batch, grid_h, grid_w, self.config, self.backend,
                                  compile=self.compile, cuda_graphs=self.cuda_graphs, parallel=self.parallel)
        return self.step

    # ------------------------------------------------------------ validation

    def text_batch(self, text, name: str = "text") -> int:
        """The batch size of a prompt (embeddings [B, L, text_dim] or a TextCache); checks it."""
        mcfg = self.model.config
        if isinstance(text, TextCache):
            if len(text) != self.model.num_layers:
                raise ValueError(f"{name} (a TextCache) was encoded by a model with another layer count")
            return text.batch
        if isinstance(text, torch.Tensor) and text.dim() == 3 and text.shape[-1] == mcfg.text_dim \
                and 1 <= text.shape[1] <= mcfg.text_len and text.is_floating_point():
            return text.shape[0]
        shape = tuple(text.shape) if isinstance(text, torch.Tensor) else type(text).__name__
        raise ValueError(f"{name} must be [B, L <= {mcfg.text_len}, {mcfg.text_dim}] embeddings or a TextCache, "
                         f"got {shape}")

    def encode_prompt(self, text) -> TextCache:
        """The cross-attention K/V of a prompt, computed once (a TextCache is used as is)."""
        if isinstance(text, TextCache):
            return text
        with torch.no_grad():
            return self.model.encode_text(text)

    def _validate(self, text, num_frames, latent_size, noise, renoise, generator):
        mcfg, cfg = self.model.config, self.config
        batch = self.text_batch(text)
        if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1:
            raise ValueError(f"num_frames must be an int >= 1, got {num_frames!r}")
        if num_frames % cfg.chunk_frames:
            raise ValueError(
                f"num_frames ({num_frames}) must be a multiple of chunk_frames ({cfg.chunk_frames})")
        if latent_size is None:
            latent_size = tuple(noise.shape[-2:]) if isinstance(noise, torch.Tensor) and noise.dim() == 5 \
                else DEFAULT_LATENT_SIZE
        latent_size = tuple(latent_size)
        _, ph, pw = mcfg.patch_size
        if len(latent_size) != 2 or any(not isinstance(s, int) or s < 1 for s in latent_size) \
                or latent_size[0] % ph or latent_size[1] % pw:
            raise ValueError(f"latent_size must be (H, W), positive multiples of the patch {(ph, pw)}, got {latent_size}")
        shape = (batch, num_frames, mcfg.in_dim, *latent_size)
        if noise is not None and (not isinstance(noise, torch.Tensor) or tuple(noise.shape) != shape):
            got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(f"noise must be the initial noise of the whole video, shape {shape}, got {got}")
        if renoise is not None:
            need = len(self.timesteps) - 1
            if isinstance(renoise, torch.Tensor) or len(renoise) != need:
                raise ValueError(f"renoise must be a list of {need} tensors (one per step after the first), "
                                 f"got {type(renoise).__name__} of length {len(renoise)}")
            for i, r in enumerate(renoise):
                if not isinstance(r, torch.Tensor) or tuple(r.shape) != shape:
                    got = tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__
                    raise ValueError(f"renoise[{i}] must have shape {shape}, got {got}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        return batch, latent_size

    # ------------------------------------------------------------ generation

    def stream(
        self,
        text: torch.Tensor | TextCache | None,
        num_frames: int,
        latent_size: tuple[int, int] | None = None,
        *,
        noise: torch.Tensor | NoiseSource | None = None,
        renoise: Sequence[torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
        callback: Callable[[ChunkInfo, torch.Tensor], None] | None = None,
        progress: bool = False,
        prompts: Sequence[tuple[int, torch.Tensor | TextCache]] | None = None,
        recache: str | None = None,
        global_sink: bool | None = None,
    ) -> "Stream":
        """A :class:`Stream` of each finished chunk's clean latents [B, chunk_frames, 16, H, W].

        text: prompt embeddings [B, L, text_dim] (zero-padded to text_len like Wan) or a
        TextCache. noise: a :class:`flex.noise.NoiseSource` (e.g. ``UpstreamNoise(seed)``:
        Self Forcing's own draws), or the whole video's initial noise [B, num_frames, 16, H, W]
        (used as given: ANS then does not apply); renoise: one whole-video tensor per step
        after the first. Noise not given is drawn from ``generator`` (global RNG when None), per
        chunk, initial noise first, then the re-noising of each step (:class:`ChunkNoise`).

        prompts: a schedule [(first_frame, text), ...] or (first_frame, text, mode) (strictly
        increasing frames in [0, num_frames); with ``text=None`` the first entry must be at frame
        0): the chunk where each switch takes effect follows :func:`flex.switching.switch_starts`
        (the first chunk that starts at or after its frame, as LongLive does; two in one chunk:
        deferred under "longlive", refused otherwise). ``Stream.switch(text, mode)`` switches
        live, before the next chunk. ``recache`` (default: the Pipeline's) is the default mode of
        the switches, ``global_sink`` (default: the Pipeline's) whether the sink survives them
        (see :data:`flex.switching.SWITCH_MODES`). Everything is validated before anything is
        computed.
        """
        tensor_noise = noise if isinstance(noise, torch.Tensor) or noise is None else None
        if noise is not None and tensor_noise is None and not isinstance(noise, NoiseSource):
            raise ValueError(f"noise must be a NoiseSource, a tensor or None, got {type(noise).__name__}")
        if isinstance(noise, NoiseSource) and (renoise is not None or generator is not None):
            raise ValueError("noise is a NoiseSource: it draws every noise itself, so renoise and generator must be None")
        recache = self.recache if recache is None else check_mode("recache", recache)
        global_sink = self.global_sink if global_sink is None else check_bool("global_sink", global_sink)
        first_name = "text" if text is not None else "prompts[0]"
        text, schedule = check_prompt_schedule(text, prompts, num_frames, self.config)
        starts = switch_starts([f for f, _, _ in schedule], self.config.chunk_frames, recache, num_frames)
        check_switch_settings(self.config, recache, global_sink)
        self.text_batch(text, first_name)
        batch, (h, w) = self._validate(text, num_frames, latent_size, tensor_noise, renoise, generator)
        if self.parallel is not None:
            _, ph, pw = self.model.config.patch_size
            self.parallel.check(self.model.num_heads, (h // ph) * (w // pw))
        for i, (_, entry, _) in enumerate(schedule):
            if self.text_batch(entry, f"prompts[{i}]") != batch:
                raise ValueError(f"prompts[{i}] has batch {self.text_batch(entry)}, the stream has batch {batch}")
        source = noise if isinstance(noise, NoiseSource) else self.default_noise(generator)
        if tensor_noise is not None or renoise is not None:
            source = GivenNoise(tensor_noise, renoise, source)
        stream = Stream(self, batch, recache, global_sink)
        timed = [(start, entry, recache if mode is None else mode) for start, (_, entry, mode) in zip(starts, schedule)]
        stream._chunks = self._stream(stream, text, timed, num_frames, batch, h, w, source, callback, progress)
        return stream

    def generate(self, text, num_frames: int, latent_size=None, **kwargs) -> torch.Tensor:
        """All latents [B, num_frames, 16, H, W] (see :meth:`stream` for the arguments)."""
        out = None
        f = 0
        for chunk in self.stream(text, num_frames, latent_size, **kwargs):
            if out is None:
                out = chunk.new_empty(chunk.shape[0], num_frames, *chunk.shape[2:])
            out[:, f:f + chunk.shape[1]] = chunk
            f += chunk.shape[1]
        return out

    def default_noise(self, generator: torch.Generator | None = None) -> NoiseSource:
        """ANS initial noise, re-noising antiphase only with ``ans_renoise`` (FlexConfig)."""
        cfg = self.config
        return ChunkNoise(cfg.rho, cfg.rho if cfg.ans_renoise else 0.0, generator)

    def _stream(self, handle, text, schedule, num_frames, batch, h, w, source, callback, progress):
        model, cfg = self.model, self.config
        device, ldt = model.device, model.stream_dtype
        n = cfg.chunk_frames
        _, ph, pw = model.config.patch_size
        n_chunks = num_frames // n
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=n_chunks, unit="chunk", desc="FLEX")
        report = bar is not None or callback is not None
        # The fixed-buffer pass owns one ring cache: a second live stream would overwrite it.
        fixed = bool(self.compile) or self.cuda_graphs
        token = object()
        if fixed:
            if self._live_stream is not None:
                if bar is not None:
                    bar.close()
                raise RuntimeError("another stream of this compiled / CUDA-graph Pipeline is still running and "
                                   "owns its ring cache: finish or close() it first, or use a second Pipeline")
            self._live_stream = token
        try:
            # Grad mode is switched off per chunk, never across a yield (the caller's code runs there).
            with torch.no_grad():
                text_cache = self.encode_prompt(text)
                if fixed:
                    step = self.chunk_step(batch, h // ph, w // pw)
                    step.begin_stream(text_cache)
                    cache = step.cache
                else:
                    cache = model.new_cache(batch, h // ph, w // pw, cfg.sink_frames, cfg.window_frames,
                                            **self._parallel_kw)
            self.cache = cache
            policy = cache_policy(cfg, fixed)  # what the method keeps in the cache (flex.methods)
            policy.start(cache, self.positions.rotate_on_load)
            context = ContextLatents(cfg.sink_frames, cfg.sink_frames + cfg.window_frames)
            source.start((batch, num_frames, model.config.in_dim, h, w), device, model.param_dtype)
            pending = list(schedule)  # (chunk start, prompt, mode), see switch_starts
            start = time.perf_counter()
            for c in range(n_chunks):
                f0 = c * n
                while pending and pending[0][0] <= f0:  # scheduled switches reached by this chunk
                    _, entry, mode = pending.pop(0)
                    handle.switch(entry, mode)
                with torch.no_grad():
                    taken = handle._take_switch()
                    if taken is not None:
                        text_cache, mode = taken
                        if fixed:
                            step.set_text(text_cache)
                        apply_switch(self, handle, mode, cache, step.text if fixed else text_cache, context, f0,
                                     num_frames)
                        handle.switches.append(f0)
                    place = self.chunk_positions(f0, n, num_frames, handle.position_offset(f0))
                    if fixed:
                        step.set_chunk(f0, *place)
                        run = step
                    else:
                        pos = self.chunk_tables(cache, f0, n, num_frames, place=place)
                        run = (lambda x, t, f0=f0, pos=pos, text_cache=text_cache:
                               model(x, t, text_cache, cache, f0, pos, self.backend, **self._parallel_kw))
                    x = source.initial(f0, n).to(device, ldt)
                    policy.before_chunk(cache, f0, n, place)
                    x0 = self._denoise_chunk(run, x, f0, source)
                    policy.after_chunk(cache, f0, n, place)
                    context.add(f0, x0)
                if report:
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    info = ChunkInfo(c, f0, n, f0 + n, num_frames, c + 1, n_chunks, time.perf_counter() - start)
                    if bar is not None:
                        bar.set_postfix(frames=info.frames_done, latent_fps=f"{info.latent_fps:.2f}")
                        bar.update(1)
                    if callback is not None:
                        callback(info, x0)
                yield x0
        finally:
            if self._live_stream is token:
                self._live_stream = None
            if bar is not None:
                bar.close()

    def _denoise_chunk(self, run, x, f0, source: NoiseSource):
        """The 4 denoising passes and the clean pass of one chunk (``run(x, t)`` is one model
        pass over the chunk); returns its x0."""
        n = x.shape[1]
        steps = len(self.timesteps)
        t_shape = (x.shape[0], n)
        x0 = None
        for i, (t, sigma) in enumerate(zip(self.timesteps, self.sigmas)):
            v = run(x, torch.full(t_shape, t, device=x.device))
            x0 = (x.double() - sigma * v.double()).to(x.dtype)
            if i + 1 < steps:
                eps = source.renoise(i, f0, n).to(x.device, x.dtype)
                s = self.sigmas[i + 1]
                x = ((1 - s) * x0.double() + s * eps.double()).to(x.dtype)
        run(x0, torch.full(t_shape, self.context_noise, device=x.device))
        return x0


__all__ = ["ChunkInfo", "ContextLatents", "DEFAULT_LATENT_SIZE", "Pipeline", "RECACHE_MODES", "Stream"]  # the last three: flex.switching
