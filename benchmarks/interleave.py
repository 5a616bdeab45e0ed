"""Paths measured in turns (A B C, A B C, ...) and ratios with their spread.

On a shared machine, load comes and goes: paths timed one after another each see a different
machine. Timed in turns, every round sees about the same load on every path, so the ratio of
two paths *within a round* is trustworthy even when absolute times are not. Each ratio is
reported as the median over rounds with its min and max; a wide spread is flagged.
"""
from __future__ import annotations

import statistics
from typing import Callable, Mapping

SPREAD_WARNING = 0.10  # (max - min) / median of a ratio above this: say the machine was noisy


def interleaved(runs: Mapping[str, Callable[[], float]], rounds: int, on_round=None) -> dict[str, list]:
    """Seconds of every run, round after round: {name: [seconds per round]}.

    ``runs`` maps a name to a callable that returns the seconds it measured; a run that
    raises is recorded as its exception (the others go on) and not run again.
    ``on_round(round_index, times)`` is called after every round.
    """
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    times: dict[str, list] = {name: [] for name in runs}
    failed: dict[str, Exception] = {}
    for r in range(rounds):
        for name, run in runs.items():
            if name in failed:
                continue
            try:
                times[name].append(run())
            except Exception as err:  # noqa: BLE001 -- one path failing must not lose the others
                failed[name] = err
                times[name] = err
        if on_round is not None:
            on_round(r, times)
    return times


def ratio(base: list[float], other: list[float]) -> dict:
    """base / other per round (> 1: ``other`` is faster): median, min, max, spread, wide."""
    values = [b / o for b, o in zip(base, other)]
    med = statistics.median(values)
    spread = (max(values) - min(values)) / med
    return dict(median=med, min=min(values), max=max(values), spread=spread, rounds=len(values),
                wide=len(values) > 1 and spread > SPREAD_WARNING)


def describe(stats: dict | None) -> str:
    """'1.23x (1.18-1.30)' and a '!' when the spread is wide."""
    if not stats:
        return "-"
    text = f"{stats['median']:.2f}x"
    if stats["rounds"] > 1:
        text += f" ({stats['min']:.2f}-{stats['max']:.2f})"
    return text + (" !" if stats["wide"] else "")


def spread_warning(label: str, stats: dict) -> str:
    return (f"warning: {label} varied {100 * stats['spread']:.0f}% between rounds ({stats['min']:.2f}x to "
            f"{stats['max']:.2f}x): the machine was busy; rerun with more --repeats or on a quiet machine")
