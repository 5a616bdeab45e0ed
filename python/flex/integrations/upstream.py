"""What an integration recognises in other code: Self Forcing's and LongLive v1.0's objects.

Both repositories define ``wan.modules.causal_model.CausalWanModel`` (blocks of
``CausalWanAttentionBlock`` whose ``self_attn`` is a ``CausalWanSelfAttention``) and
``pipeline.causal_inference.CausalInferencePipeline`` (``generator.model`` is the model). Their
code is never imported here: the objects are recognised by the attributes this package uses,
so forks that keep them work too. LongLive's self-attention takes ``sink_recache_after_switch``
and returns ``(x, cache_update_info)`` with a KV cache; Self Forcing's returns ``x``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

from torch import nn

FAMILIES = ("self-forcing", "longlive")
_ATTENTION_PARTS = ("q", "k", "v", "o", "norm_q", "norm_k", "num_heads", "head_dim", "eps")


@dataclass(frozen=True)
class UpstreamModel:
    """A recognised causal Wan model: the module, its self-attention modules, its family."""

    model: nn.Module
    attentions: tuple
    family: str

    @property
    def returns_cache_update(self) -> bool:
        """LongLive's self-attention returns (x, cache update info) when given a KV cache."""
        return self.family == "longlive"


def is_pipeline(obj) -> bool:
    """An upstream ``CausalInferencePipeline`` (or a fork keeping its attributes)."""
    return (isinstance(obj, nn.Module) and callable(getattr(obj, "inference", None))
            and callable(getattr(obj, "_initialize_kv_cache", None))
            and isinstance(getattr(getattr(obj, "generator", None), "model", None), nn.Module))


def _family(attn: nn.Module) -> str:
    params = inspect.signature(type(attn).forward).parameters
    return "longlive" if "sink_recache_after_switch" in params else "self-forcing"


def recognise_model(model) -> UpstreamModel:
    """The self-attention modules of an upstream causal Wan model; ValueError naming ``obj``
    when ``model`` is not one."""
    blocks = getattr(model, "blocks", None)
    ok = (isinstance(model, nn.Module) and callable(getattr(model, "_forward_inference", None))
          and isinstance(getattr(model, "patch_embedding", None), nn.Conv3d) and isinstance(blocks, nn.ModuleList)
          and len(blocks) > 0)
    attentions = tuple(getattr(b, "self_attn", None) for b in blocks) if ok else ()
    if not ok or not all(a is not None and all(hasattr(a, p) for p in _ATTENTION_PARTS) for a in attentions):
        raise ValueError(
            "obj must be Self Forcing's or LongLive's CausalInferencePipeline or CausalWanModel "
            f"(blocks of causal self-attention with q, k, v, o, norm_q, norm_k), got {type(model).__name__}")
    families = {_family(a) for a in attentions}
    if len(families) != 1:
        raise ValueError(f"obj mixes self-attention kinds of several code bases: {sorted(families)}")
    return UpstreamModel(model, attentions, families.pop())


def pipeline_model(pipeline) -> nn.Module:
    """The causal Wan model a pipeline runs."""
    return pipeline.generator.model


_MISSING = object()


def swap_attribute(obj, name: str, value):
    """Set ``obj.<name>`` on the instance; returns the function that puts back what was there
    (the previous instance attribute, or none, so the class's method shows through again)."""
    previous = obj.__dict__.get(name, _MISSING)
    setattr(obj, name, value)

    def undo():
        if previous is _MISSING:
            delattr(obj, name)
        else:
            setattr(obj, name, previous)

    return undo


__all__ = ["FAMILIES", "UpstreamModel", "is_pipeline", "pipeline_model", "recognise_model", "swap_attribute"]
