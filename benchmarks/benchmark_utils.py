"""Pieces the benchmark scripts share."""

from __future__ import annotations

import time


def seconds_of(function) -> float:
    """Wall-clock seconds of one call of ``function``."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def paired_ratio(candidate, reference, rounds: int) -> tuple[float, float, float]:
    """Fastest seconds of ``candidate`` and of ``reference``, and reference / candidate (the candidate's relative speed).

    The two are called alternately, ``rounds`` times each (which goes first
    alternates too), so both meet the same spells of a shared machine. The
    fastest call of each is compared: on these 2-core machines a call's
    time jumps between two levels about 1.5x apart (the same call, the same
    inputs), and each side's fastest of many calls is its undisturbed speed
    where a median would depend on how often each side drew the slow level.
    """
    candidate_seconds, reference_seconds = [], []
    for round_index in range(rounds):
        if round_index % 2:
            reference_seconds.append(seconds_of(reference))
            candidate_seconds.append(seconds_of(candidate))
        else:
            candidate_seconds.append(seconds_of(candidate))
            reference_seconds.append(seconds_of(reference))
    fastest_candidate, fastest_reference = min(candidate_seconds), min(reference_seconds)
    return fastest_candidate, fastest_reference, fastest_reference / fastest_candidate
