"""The cache methods in the registry: Deep Sink, Deep Forcing (Deep Sink + Participative
Compression), Rolling Sink and MemRoPE.

Each one's slot-table shape and positions are FlexConfig settings (sink_frames, window_frames,
position_policy) with the paper's values; its cache policy (flex.methods.<method>) is built
lazily, so that this module imports nothing of the core (flex.config imports the registry).
"""
from __future__ import annotations

from .registry import MethodError, MethodSpec, float_param, int_param, register, resolved


def _policy(module: str, cls: str):
    def build(config, params):
        import importlib

        return getattr(importlib.import_module(f"flex.methods.{module}"), cls)(config, params)
    return build


def _no_dynamic(name):
    def check(config, params):
        if config.dynamic:
            raise MethodError("dynamic", f"{name} places keys by its own cache layout: it needs dynamic=False")
        if config.position_policy != "window":
            raise MethodError("position_policy", f"{name} needs position_policy='window' (its sink re-aligned "
                                                 f"to the window)")
    return check


def _check_deep_forcing(config, params):
    _no_dynamic("deep-forcing")(config, params)
    if params["compressed"] >= config.sink_frames:
        raise MethodError("compressed", f"compressed ({params['compressed']}) must be < sink_frames "
                                        f"({config.sink_frames}): the compressed history is the sink's last slots")
    if params["query_frames"] > config.chunk_frames:
        raise MethodError("query_frames", f"query_frames must be <= chunk_frames ({config.chunk_frames}), "
                                          f"got {params['query_frames']}")


def _check_rolling_sink(config, params):
    if config.position_policy != "absolute":
        raise MethodError("position_policy", "rolling-sink slides absolute time indices: it needs "
                                             "position_policy='absolute'")
    if config.sink_frames:
        raise MethodError("sink_frames", f"rolling-sink's sink is its rolled blocks, over a plain FIFO: it needs "
                                         f"sink_frames=0, got {config.sink_frames}")
    blocks, rest = divmod(config.window_frames, config.chunk_frames)
    if rest:
        raise MethodError("window_frames", f"rolling-sink caches whole blocks: window_frames "
                                           f"({config.window_frames}) must be a multiple of chunk_frames")
    if params["sink_blocks"] >= blocks:
        raise MethodError("sink_blocks", f"sink_blocks must be < the cache's {blocks} blocks (the newest block "
                                         f"is real), got {params['sink_blocks']}")


def _check_memrope(config, params):
    _no_dynamic("memrope")(config, params)
    if config.sink_frames < 2:
        raise MethodError("sink_frames", "memrope keeps its two memory frames in the last two sink slots: "
                                         f"sink_frames must be >= 2, got {config.sink_frames}")


_WINDOW = ("position_policy", "window")

register(MethodSpec(
    name="deep-sink", changes=frozenset({"cache", "positions"}),
    summary="Deep Sink: a sink of ~half the cache (10 of 21 frames), re-aligned in time right before the window",
    source='Deep Forcing, arXiv 2512.05081, "Deep Sink" (no official code)',
    settings=(("sink_frames", 10), ("window_frames", 11), _WINDOW),
    composes_with=frozenset({"flex"}), check=_no_dynamic("deep-sink")))

register(MethodSpec(
    name="deep-forcing", changes=frozenset({"cache", "positions"}),
    summary="Deep Sink + Participative Compression: the top-C older tokens by the attention recent queries give them",
    source='Deep Forcing, arXiv 2512.05081, "Deep Sink", "Participative Compression" (no official code)',
    params=(int_param("compressed", 5, "frames of compressed history (C = compressed x tokens per frame), "
                                       "the last sink slots", 1),
            int_param("query_frames", 1, "most recent frames whose queries score the candidates", 1)),
    settings=(("sink_frames", 15), ("window_frames", 6), _WINDOW),
    composes_with=frozenset({"flex"}), check=_check_deep_forcing, cache=_policy("deep_forcing", "ParticipativeCompression")))

register(MethodSpec(
    name="rolling-sink", changes=frozenset({"cache"}),
    summary="Rolling Sink: a 7-block FIFO, the older blocks refilled with the first blocks' K/V rolled at sliding indices",
    source='Rolling Sink, arXiv 2602.07775, "Rolling Sink"; github.com/Rolling-Sink/Rolling-Sink d7fc0d9',
    params=(int_param("sink_blocks", 6, "blocks of rolled sink content (the rest of the cache is real)", 1),),
    settings=(("sink_frames", 0), ("window_frames", 21), ("position_policy", "absolute")),
    composes_with=frozenset({"flex"}), check=_check_rolling_sink, cache=_policy("rolling_sink", "RollingSink")))

register(MethodSpec(
    name="memrope", changes=frozenset({"cache", "positions"}),
    summary="MemRoPE: long- and short-term EMA memory frames of every evicted key, RoPE by cache layout",
    source='MemRoPE, arXiv 2603.12513, "Memory Tokens", "Online RoPE Indexing"; github.com/YoungRaeKimm/MemRoPE b89bf5b',
    params=(float_param("alpha_long", 0.01, "EMA rate of the long-term memory", 0.0, 1.0),
            float_param("alpha_short", 0.1, "EMA rate of the short-term memory", 0.0, 1.0)),
    settings=(("sink_frames", 5), ("window_frames", 7), _WINDOW),
    composes_with=frozenset({"flex"}), check=_check_memrope, cache=_policy("memrope", "MemRoPE")))


def cache_policy(config, fixed_buffers: bool = False):
    """The cache policy of ``config.method`` (the plain ring when no part changes the cache).

    ``fixed_buffers``: the stream runs the compiled / CUDA-graph pass, which cannot hand its
    queries to a policy (Participative Compression scores keys by them): refused."""
    from .cache_policy import CachePolicy
    from .registry import method_parts

    for spec in method_parts(config.method):
        if spec.cache is not None:
            policy = spec.cache(config, resolved(spec, config.method_params))
            if fixed_buffers and policy.observes_queries:
                raise MethodError("compile", f"{spec.name} scores keys by the clean pass's queries, which the "
                                             f"compiled / CUDA-graph pass does not hand out: use compile=False")
            return policy
    return CachePolicy(config)


__all__ = ["cache_policy"]
