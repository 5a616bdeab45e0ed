"""FLEX inside other code: swap the project's ops into Self Forcing's and LongLive's own objects.

    from flex.integrations import accelerate
    pipeline = CausalInferencePipeline(config, device=device)   # upstream's, unchanged
    accelerate(pipeline, FlexConfig())                          # in place; restore(pipeline) undoes it

An integration owns only the translation between the other code's objects and the core
library (flex.ops, flex.positions, flex.cache, flex.noise); see :mod:`.accelerate`.
"""
from .accelerate import IntegrationError, accelerate, default_config, restore, runtime_of

__all__ = ["IntegrationError", "accelerate", "default_config", "restore", "runtime_of"]
