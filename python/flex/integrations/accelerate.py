"""``accelerate(obj)`` / ``restore(obj)``: FLEX's ops inside Self Forcing's or LongLive's own objects.

In place, on a live ``CausalInferencePipeline`` or ``CausalWanModel`` of either code base:

* each causal self-attention's ``forward`` (with a KV cache) becomes
  :func:`flex.integrations.attention.self_attention`: qk-RMSNorm + 3D RoPE + cache write and
  ring attention through :mod:`flex.ops`, on a :class:`flex.cache.ModelKVCache` of
  ``config.sink_frames + config.window_frames`` frames, positions from the config's RoPE
  strategy (:mod:`flex.positions`);
* a forward pre-hook on the model places each pass (:meth:`Runtime.begin_pass`);
* a pipeline's KV cache lists and initial noise (antiphase, ``config.rho``) are swapped too
  (:mod:`flex.integrations.pipelines`).

Everything else (embeddings, cross-attention, FFN, loop, scheduler, text encoder, VAE) is
upstream's. ``restore`` puts upstream's methods back and drops the ring cache.
"""
from __future__ import annotations

import functools
import weakref

import torch

from .. import ops
from ..checks import check_int
from ..config import FlexConfig
from .attention import self_attention
from .pipelines import patch_pipeline
from .runtime import Runtime
from .upstream import is_pipeline, pipeline_model, recognise_model, swap_attribute


class IntegrationError(ValueError):
    """A FlexConfig setting that an upstream object cannot follow; ``setting`` names it."""

    def __init__(self, setting: str, message: str):
        super().__init__(message)
        self.setting = setting


_ACCELERATED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # obj -> (Runtime, undo)


def default_config(obj) -> FlexConfig:
    """The paper's settings for obj's code base: LongLive's for LongLive, Self Forcing's otherwise."""
    model = pipeline_model(obj) if is_pipeline(obj) else obj
    return FlexConfig.longlive() if recognise_model(model).family == "longlive" else FlexConfig()


def _patch_model(model, runtime: Runtime):
    """Swap every self-attention's forward and hook the model's passes; returns the undo."""
    undos = [swap_attribute(attn, "forward", functools.partial(self_attention, runtime, i, attn))
             for i, attn in enumerate(runtime.upstream.attentions)]

    @torch.compiler.disable
    def place_pass(module, args, kwargs):
        kv_cache = kwargs.get("kv_cache")
        if kv_cache is None:
            runtime.end_pass()
        else:
            runtime.begin_pass(args[0] if args else kwargs["x"], kwargs.get("current_start", 0))

    handle = model.register_forward_pre_hook(place_pass, with_kwargs=True)

    def undo():
        handle.remove()
        for u in undos:
            u()
        runtime.cache = None
        runtime.end_pass()

    return undo


def accelerate(obj, config: FlexConfig | None = None, backend="auto", *, num_frames: int | None = None):
    """Run ``obj`` (an upstream pipeline or causal Wan model) on FLEX's ops, in place; returns obj.

    config: the FLEX switches (default: :func:`default_config`); ``FlexConfig.off(window_frames=W)``
    keeps upstream's numerics with a W-frame cache. backend: the ops' backend (see flex.ops).
    num_frames: the video length in latent frames, for a bare model with a RoPE strategy whose
    scale depends on it (a pipeline takes it from each ``inference`` call).
    Upstream's loop cuts the chunks (``config.chunk_frames`` is not used); a chunk must fit
    ``config.window_frames`` (else the first pass raises the cache's ValueError).
    """
    if obj in _ACCELERATED:
        raise ValueError("obj is already accelerated: restore(obj) first")
    pipeline = obj if is_pipeline(obj) else None
    model = pipeline_model(obj) if pipeline is not None else obj
    upstream = recognise_model(model)
    if model in _ACCELERATED:
        raise ValueError("obj's model is already accelerated: restore it first")
    config = default_config(obj) if config is None else config
    if not isinstance(config, FlexConfig):
        raise ValueError(f"config must be a FlexConfig, got {type(config).__name__}")
    ops.backend_per_op(backend)  # validates the name(s) now
    if config.ans_renoise:
        raise IntegrationError("ans_renoise", "ans_renoise must be False: upstream's loop draws its own re-noising")
    if num_frames is not None:
        check_int("num_frames", num_frames, 1)
    needs_length = config.strategy != "none" and not config.dynamic
    if pipeline is None and needs_length and num_frames is None:
        raise IntegrationError("strategy", f"num_frames must be given to accelerate a bare model with strategy "
                               f"{config.strategy!r} (its RoPE scale depends on the video length)")
    runtime = Runtime(upstream, config, backend, num_frames)
    undo_model = _patch_model(model, runtime)
    undo_pipeline = patch_pipeline(pipeline, runtime) if pipeline is not None else (lambda: None)

    def undo():
        undo_pipeline()
        undo_model()

    _ACCELERATED[obj] = (runtime, undo)
    if pipeline is not None:
        _ACCELERATED[model] = (runtime, None)  # restored with its pipeline
    return obj


def runtime_of(obj) -> Runtime | None:
    """The FLEX runtime of an accelerated object (its ring cache, positions), or None."""
    entry = _ACCELERATED.get(obj)
    return None if entry is None else entry[0]


def restore(obj):
    """Undo :func:`accelerate` on ``obj``; returns obj."""
    entry = _ACCELERATED.get(obj)
    if entry is None:
        raise ValueError("obj is not accelerated")
    if entry[1] is None:
        raise ValueError("obj is the model of an accelerated pipeline: restore the pipeline")
    entry[1]()
    del _ACCELERATED[obj]
    if is_pipeline(obj):
        _ACCELERATED.pop(pipeline_model(obj), None)
    return obj


__all__ = ["IntegrationError", "accelerate", "default_config", "restore", "runtime_of"]
