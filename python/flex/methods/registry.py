"""The one registry of long-horizon methods: name -> :class:`MethodSpec`.

A method is a policy over what the core already owns, in up to three parts (see
ARCHITECTURE.md): where each frame sits in time (``"positions"``: per-frame temporal positions,
per-head frequency tweaks, the softmax scale), which frames the cache keeps (``"cache"``) and
how attention reads them (``"attention"``). A spec says which parts it changes, its parameters
with the paper's defaults and their checks, the FlexConfig settings the paper runs it with,
which other methods it composes with, and the factories that build its policy objects.

Every entry point reaches a method through :class:`flex.config.FlexConfig` (``method`` and
``method_params``), validated there by :func:`check_method` before any model loads.
Methods compose with ``+`` (``"infinity-rope+lol-jitter"``) where each part lists the others
in ``composes_with``; positions factories then wrap each other left to right.

This module is data and checks only: it imports nothing of the core, so ``flex.config`` can
use it without an import cycle. The built-in methods register themselves from their own
modules (``flex.methods.position_methods``), imported by ``flex.methods``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..checks import check_choice, check_float, check_int
from ..errors import SettingsError

KINDS = ("positions", "cache", "attention")


class MethodError(SettingsError):
    """A method or method setting that cannot work; ``param`` (its only field) names it: a
    ``method_params`` key, ``"method"`` or the FlexConfig field in conflict."""

    def __init__(self, param: str, problem: str, *, leads: bool = True):
        self.param = param
        super().__init__(param, problem, leads=leads)


@dataclass(frozen=True)
class Param:
    """One parameter of a method: its default (the paper's) and its check.

    ``check(name, value)`` returns the value in its canonical type or raises ValueError; a
    string (from the command line) is converted by ``parse`` first.
    """

    name: str
    default: Any
    check: Callable[[str, Any], Any]
    doc: str
    parse: Callable[[str], Any] = str

    def value(self, raw) -> Any:
        """The checked value of ``raw`` (a string is parsed first); raises MethodError."""
        try:
            return self.check(self.name, self.parse(raw) if isinstance(raw, str) else raw)
        except SettingsError as err:  # the check's own words, about this parameter
            raise MethodError(self.name, err.problem, leads=err.leads) from None
        except ValueError as err:  # a string that does not parse
            raise MethodError(self.name, str(err), leads=False) from None


def float_param(name: str, default: float, doc: str, low=None, high=None, **interval) -> Param:
    return Param(name, default, lambda n, v: check_float(n, v, low, high, **interval), doc, _number(float))


def int_param(name: str, default: int, doc: str, low=None, high=None) -> Param:
    return Param(name, default, lambda n, v: check_int(n, v, low, high), doc, _number(int))


def choice_param(name: str, default: str, doc: str, choices: tuple[str, ...]) -> Param:
    return Param(name, default, lambda n, v: check_choice(n, v, choices), doc)


def _number(kind):
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
    return parse


@dataclass(frozen=True)
class MethodSpec:
    """What one method is, for every entry point.

    name            the registry key (``--method NAME``)
    changes         the parts it changes: a subset of KINDS
    summary         one line for ``--help`` and the README
    source          the paper (and section) and the official code it follows
    params          its parameters with the paper's defaults
    settings        the FlexConfig fields the paper runs it with ((field, value) pairs): applied
                    by :meth:`flex.config.FlexConfig.for_method` and by ``--method`` for the
                    flags not typed
    composes_with   the methods (names) or kinds of method (``"cache"``: any that changes the
                    cache) it may be combined with (``"a+b"``); both parts must allow it
    check           ``check(config, params)``: rules between its parameters and the FlexConfig
                    fields; raises :class:`MethodError` naming the setting
    positions       ``positions(config, params, head_dim, num_heads, inner)`` -> the positions
                    policy the core uses (see :class:`flex.methods.positions.RopePositions`);
                    ``inner`` is the policy of the parts to its left (the FlexConfig's own
                    positions for the first part). None: positions as the FlexConfig says.
    cache           ``cache(config, params)`` -> a cache policy (or None: the sink + window ring)
    """

    name: str
    changes: frozenset
    summary: str
    source: str
    params: tuple = ()
    settings: tuple = ()
    composes_with: frozenset = frozenset()
    check: Callable | None = None
    positions: Callable | None = None
    cache: Callable | None = None

    def __post_init__(self):
        if not self.changes <= set(KINDS):
            raise ValueError(f"changes must be a subset of {KINDS}, got {sorted(self.changes)}")

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is registered twice")
    if "+" in spec.name:
        raise ValueError(f"a method name cannot contain '+': {spec.name!r}")
    METHODS[spec.name] = spec
    return spec


def method_parts(method) -> tuple[MethodSpec, ...]:
    """The specs of ``method`` (a name or names joined by ``+``), checked to compose."""
    if not isinstance(method, str) or not method:
        raise MethodError("method", f"must be a method name, got {method!r}")
    names = method.split("+")
    for name in names:
        if name not in METHODS:
            raise MethodError("method", f"must be one of {tuple(METHODS)} (or several joined by '+'), "
                                        f"got {name!r}")
    if len(set(names)) != len(names):
        raise MethodError("method", f"names a part twice: {method!r}")
    parts = tuple(METHODS[n] for n in names)
    for a in parts:
        for b in parts:
            if a is not b and b.name not in a.composes_with and not (b.changes & a.composes_with):
                raise MethodError("method", f"{a.name!r} does not compose with {b.name!r} "
                                            f"(it composes with {sorted(a.composes_with) or 'nothing'})")
    return parts


def _pairs(method_params) -> list[tuple[str, Any]]:
    if isinstance(method_params, dict):
        return list(method_params.items())
    if isinstance(method_params, (str, bytes)):
        raise MethodError("method_params", "must be (name, value) pairs, got a string")
    pairs = []
    try:
        for entry in method_params:
            name, value = entry
            pairs.append((name, value))
    except (TypeError, ValueError):
        raise MethodError("method_params", f"must be (name, value) pairs, got {method_params!r:.80}")
    return pairs


def check_method(config) -> tuple[tuple[str, Any], ...]:
    """Validate ``config.method`` and ``config.method_params`` against the registry and the
    config's other fields; returns the parameters canonical: sorted (name, value) pairs, values
    checked and typed (defaults are not filled in). Raises :class:`MethodError`."""
    parts = method_parts(config.method)
    given: dict[str, Any] = {}
    for name, raw in _pairs(config.method_params):
        owners = [s for s in parts if s.param(name) is not None]
        if not owners:
            known = sorted(p.name for s in parts for p in s.params)
            raise MethodError(name, f"is not a parameter of method {config.method!r} "
                                    f"(its parameters: {known or 'none'})")
        if name in given:
            raise MethodError(name, "is given twice")
        given[name] = owners[0].param(name).value(raw)
    for spec in parts:
        if spec.check is not None:
            spec.check(config, resolved(spec, given))
    return tuple(sorted(given.items()))


def resolved(spec: MethodSpec, given) -> dict[str, Any]:
    """Every parameter of ``spec``: the given value, else the paper's default."""
    given = dict(given)
    return {p.name: given.get(p.name, p.default) for p in spec.params}


def method_settings(method: str) -> dict[str, Any]:
    """The FlexConfig fields the paper runs ``method`` with (every part's, left to right)."""
    out: dict[str, Any] = {}
    for spec in method_parts(method):
        out.update(spec.settings)
    return out


__all__ = ["KINDS", "METHODS", "MethodError", "MethodSpec", "Param", "check_method", "choice_param",
           "float_param", "int_param", "method_parts", "method_settings", "register", "resolved"]
