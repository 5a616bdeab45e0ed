"""Long-horizon methods: one registry (:data:`METHODS`) for every entry point.

See :mod:`flex.methods.registry` for the shape of a method, :mod:`flex.methods.positions`
for the positions policies the core asks per chunk and :mod:`flex.methods.cache_policy` for
the cache policies the stream calls between passes.
"""
from . import position_methods  # noqa: F401  (registers the position methods)
from . import cache_methods  # noqa: F401,I001  (registers the cache methods, after the position methods)
from .positions import RopePositions, Wrapped, build_positions
from .registry import (KINDS, METHODS, MethodError, MethodSpec, Param, check_method, method_parts,
                       method_settings, register, resolved)

__all__ = ["KINDS", "METHODS", "MethodError", "MethodSpec", "Param", "RopePositions", "Wrapped",
           "build_positions", "check_method", "method_parts", "method_settings", "register", "resolved"]
